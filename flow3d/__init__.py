"""flow3d: dynamic scenes from one monocular video as 4D Gaussian splats.

Glossary (every module follows it; read this before any other file)
-------------------------------------------------------------------
Tensor dimension letters used in shape comments such as ``# (B, H, W, 3)``:

    B  batch (frames rendered in one step)       T  frames of the video
    C  cameras in one render call                 N  Gaussians
    P  points or pixel pairs                      K  motion bases (shared SE(3) trajectories)
    H, W  image height and width in pixels        D  rendered channels

Cameras
    ``w2cs`` (..., 4, 4) world -> camera, OpenCV axes: x right, y down, z forward (into the scene).
    ``c2ws`` is its inverse. ``Ks`` (..., 3, 3) intrinsics in pixels.
    ``img_wh`` is (W, H) -- width first, as OpenCV and gsplat take it.

Pixel coordinates
    Data (Ks from calibration, flow, tracks, pixel pairs) use the OpenCV convention: the centre of
    the pixel in row i, column j is at (x, y) = (j, i). gsplat (and our CPU rasterizer, which
    follows gsplat exactly) samples pixel (i, j) at (j + 0.5, i + 0.5); the one place that converts
    is :func:`flow3d.geometry.opencv_to_gsplat_Ks`, called just before rendering.

Rotations
    Quaternions are (w, x, y, z) (scalar first) in the scene and in the renderer, like gsplat.
    roma uses (x, y, z, w): convert only through :mod:`flow3d.geometry` helpers.

Depth and disparity
    Every name says which it holds: ``depth`` is z along the camera's optical axis in scene units;
    ``disp`` (disparity) is 1 / z up to an unknown scale and shift when it comes from a monocular
    prior. The order of depths is the reverse of the order of disparities: code that compares orders
    takes an explicit ``kind`` argument.

Masks
    ``masks`` are foreground in [0, 1] (float) or bool; ``valid`` masks are bool and say where a value
    may be used at all (finite, positive, inside the image, flow-consistent...).
"""

__version__ = "0.1.0"
