"""Evaluation building blocks for ``run_val.py``: metrics, depth videos and reports.

- :mod:`flow3d.eval.metrics`: PSNR/SSIM (whole, masked, SoM mPSNR/mSSIM), LPIPS from local weights,
  depth (AbsRel/RMSE/delta after least-squares scale), depth-order accuracy, temporal consistency, tracking.
- :mod:`flow3d.eval.video`: depth colouring, colour bar, panels, mp4, contact sheet, per-frame plot.
- :mod:`flow3d.eval.report`: ``metrics.json`` / ``per_frame.csv`` and the printed table.
"""

from flow3d.eval.metrics import (
    LpipsScorer,
    MetricResult,
    Unavailable,
    depth_metrics,
    depth_order_accuracy,
    depth_valid_mask,
    image_metrics,
    keypoint_pck,
    masked_psnr,
    masked_ssim,
    mssim_som,
    prior_depth_metrics,
    temporal_consistency,
    tracking_metrics,
)
from flow3d.eval.report import aggregate_per_frame, format_table, read_metrics, write_metrics
from flow3d.eval.video import (
    colorbar_image,
    colorize_depth,
    colorize_scalar,
    compose_panels,
    depth_range_for_video,
    depth_video_frame,
    label_frame,
    plot_per_frame_metrics,
    to_uint8_rgb,
    write_contact_sheet,
    write_video,
)

__all__ = [
    "LpipsScorer",
    "MetricResult",
    "Unavailable",
    "depth_metrics",
    "depth_order_accuracy",
    "depth_valid_mask",
    "image_metrics",
    "keypoint_pck",
    "masked_psnr",
    "masked_ssim",
    "mssim_som",
    "prior_depth_metrics",
    "temporal_consistency",
    "tracking_metrics",
    "aggregate_per_frame",
    "format_table",
    "read_metrics",
    "write_metrics",
    "colorbar_image",
    "colorize_depth",
    "colorize_scalar",
    "compose_panels",
    "depth_range_for_video",
    "depth_video_frame",
    "label_frame",
    "plot_per_frame_metrics",
    "to_uint8_rgb",
    "write_contact_sheet",
    "write_video",
]
