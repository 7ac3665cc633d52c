"""The names and argument orders the trainer calls (issue 2) stay as agreed."""

from __future__ import annotations

import inspect

import pytest

import flow3d.losses as L

EXPECTED = {
    "pearson_depth_loss": ["pred", "prior", "mask", "patch_size", "num_patches", "patch_mode", "generator"],
    "depth_order_sign": ["values_a", "values_b", "kind", "min_rel_diff"],
    "modgs_ordinal_loss": [
        "pred_a",
        "pred_b",
        "prior_a",
        "prior_b",
        "prior_kind",
        "pred_kind",
        "alpha",
        "min_gap_frac",
        "mask",
        "prior_range",
    ],
    "hinge_ordinal_loss": ["pred_a", "pred_b", "order_sign", "margin", "normalize"],
    "ordinal_accuracy": ["pred_a", "pred_b", "order_sign", "pred_kind"],
    "depth_consistency_loss": [
        "d_pred",
        "d_tgt",
        "mask",
        "conf_pred",
        "w_inside",
        "w_outside",
        "w_edge",
        "outside_dilate_r",
        "edge_r",
        "beta",
        "align",
    ],
    "g2_monodepth_loss": ["pred", "gt", "mask"],
    "scale_adaptive_loss": ["pred", "gt", "mask", "lambda_sg", "num_scales", "use_absolute", "use_inv_depth"],
    "focal_mm_to_px": ["focal_mm", "image_width_px", "sensor_width_mm"],
    "depth_aware_scale_loss": [
        "pred_mask01",
        "depth_map",
        "f_px",
        "k_obj",
        "depth_mode",
        "depth_stat",
        "scale_measure",
        "detach_depth",
    ],
    "estimate_k_obj_from_dataset": ["gt_mask01", "depth_map", "f_px", "depth_mode", "depth_stat"],
    "masked_l1_loss": ["pred", "gt", "mask", "quantile"],
    "masked_mse_loss": ["pred", "gt", "mask", "quantile"],
    "disparity_gradient_loss": ["pred_disp", "prior_disp", "mask"],
    "motion_acceleration_loss": ["x"],
    "z_acceleration_loss": ["points_cam"],
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_signature_prefix(name):
    params = list(inspect.signature(getattr(L, name)).parameters)
    assert params[: len(EXPECTED[name])] == EXPECTED[name]
    assert name in L.__all__


def test_all_names_importable():
    for name in L.__all__:
        assert hasattr(L, name), name
