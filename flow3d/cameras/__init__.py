"""Cameras (and a geometric depth cue) from the video itself, for casual videos without a camera file.

* :func:`estimate_cameras` -> :class:`CameraEstimate` -- static tracks from fb-consistent flow, focal
  length, two-view start, PnP registration and a sparse bundle adjustment (:mod:`flow3d.cameras.estimate`).
* :func:`geometric_depth` -- the triangulated static points as a sparse depth cue with a confidence,
  densified where interpolation is honest (:mod:`flow3d.cameras.geodepth`).
* :func:`write_camera_file` -- Shape of Motion's ``droid_recon/SEQ.npy`` format.
* :func:`trajectory_errors` -- ATE after a similarity alignment, relative pose errors, focal error.

``python -m flow3d.preprocess.cameras --root-dir R --seq-name S`` runs all of it on a casual layout.
"""

from flow3d.cameras.estimate import CameraEstimate, CameraEstimateConfig, estimate_cameras, reconstruct_from_tracks
from flow3d.cameras.geodepth import GeoDepthConfig, geometric_depth, sparse_depth
from flow3d.cameras.io import write_camera_file
from flow3d.cameras.metrics import align_similarity, trajectory_errors
from flow3d.cameras.tracks import StaticTracks, camera_motion_px, static_tracks

__all__ = [
    "CameraEstimate",
    "CameraEstimateConfig",
    "GeoDepthConfig",
    "StaticTracks",
    "align_similarity",
    "camera_motion_px",
    "estimate_cameras",
    "geometric_depth",
    "reconstruct_from_tracks",
    "sparse_depth",
    "static_tracks",
    "trajectory_errors",
    "write_camera_file",
]
