"""Depth and image losses (pure functions; the ``nn.Module`` forms only store options).

One family per file:

* :mod:`~flow3d.losses.pearson` -- ``1 - Corr`` depth loss (seed 004), global or patch-wise;
* :mod:`~flow3d.losses.ordinal` -- MoDGS tanh ordinal loss, hinge ordinal loss across frames, order
  signs and the ordinal-accuracy metric (seed 004);
* :mod:`~flow3d.losses.consistency` -- inside / outside / boundary depth consistency (seed 001);
* :mod:`~flow3d.losses.g2_monodepth` -- G2-MonoDepth's absolute + relative + gradient loss (seed 002);
* :mod:`~flow3d.losses.scale_adaptive` -- PackNet-style scale-adaptive loss (seed 003);
* :mod:`~flow3d.losses.depth_scale` -- depth-aware object scale loss (seed 000);
* :mod:`~flow3d.losses.som` -- Shape-of-Motion base terms (trimmed L1/MSE, disparity gradients,
  acceleration smoothness);
* :mod:`~flow3d.losses.photometric` -- SSIM / PSNR / RGB loss; :mod:`~flow3d.losses.reduce` -- helpers.

Depth vs disparity: every order-comparing function takes an explicit kind; see :mod:`flow3d`.
"""

from flow3d.losses.consistency import (
    DepthConsistencyLoss,
    DepthConsistencyTerms,
    align_to_target,
    boundary_band,
    depth_consistency_loss,
    depth_gradients,
    dilate,
    erode,
    fit_scale_shift,
)
from flow3d.losses.depth_scale import (
    DepthScaleLossInfo,
    depth_aware_scale_loss,
    estimate_k_obj_from_dataset,
    focal_mm_to_px,
    roi_depth_stat,
)
from flow3d.losses.g2_monodepth import G2MonoDepthLoss, g2_monodepth_loss, robust_standardize, sobel_xy
from flow3d.losses.ordinal import (
    HingeOrdinalLoss,
    ModgsOrdinalLoss,
    depth_order_sign,
    hinge_ordinal_loss,
    modgs_ordinal_loss,
    ordinal_accuracy,
)
from flow3d.losses.pearson import PearsonDepthLoss, pearson_depth_loss, weighted_pearson_corr
from flow3d.losses.photometric import psnr, rgb_loss, ssim, ssim_map
from flow3d.losses.reduce import masked_mean, safe_div
from flow3d.losses.scale_adaptive import ScaleAdaptiveLoss, inv2depth, mad_normalize, scale_adaptive_loss
from flow3d.losses.som import (
    disparity_gradient_loss,
    masked_l1_loss,
    masked_mse_loss,
    motion_acceleration_loss,
    ray_velocity_loss,
    se3_smoothness_loss,
    z_acceleration_loss,
)

__all__ = [
    "DepthConsistencyLoss",
    "DepthConsistencyTerms",
    "align_to_target",
    "boundary_band",
    "depth_consistency_loss",
    "depth_gradients",
    "dilate",
    "erode",
    "fit_scale_shift",
    "DepthScaleLossInfo",
    "depth_aware_scale_loss",
    "estimate_k_obj_from_dataset",
    "focal_mm_to_px",
    "roi_depth_stat",
    "G2MonoDepthLoss",
    "g2_monodepth_loss",
    "robust_standardize",
    "sobel_xy",
    "HingeOrdinalLoss",
    "ModgsOrdinalLoss",
    "depth_order_sign",
    "hinge_ordinal_loss",
    "modgs_ordinal_loss",
    "ordinal_accuracy",
    "PearsonDepthLoss",
    "pearson_depth_loss",
    "weighted_pearson_corr",
    "psnr",
    "rgb_loss",
    "ssim",
    "ssim_map",
    "masked_mean",
    "safe_div",
    "ScaleAdaptiveLoss",
    "inv2depth",
    "mad_normalize",
    "scale_adaptive_loss",
    "disparity_gradient_loss",
    "masked_l1_loss",
    "masked_mse_loss",
    "motion_acceleration_loss",
    "ray_velocity_loss",
    "se3_smoothness_loss",
    "z_acceleration_loss",
]
