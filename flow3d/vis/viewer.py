"""The interactive viewer behind ``python -m flow3d.view``: a viser server that renders a trained scene.

The viewer owns the UI state (time, play, what to show, the clients' cameras) and asks the trained run
for one thing only: "render this camera at this time" (:meth:`flow3d.vis.load.TrainedRun.render`).
Each connected browser gets a render thread. While its camera moves (or time plays) the thread renders
at the resolution that the measured render times allow at ``target_fps`` (:class:`RenderCost`); once the camera has been
still for ``settle_s`` it renders once more at the full ``max_res``. Renders are serialised by one lock
(the model is shared). A failed render is logged and the viewer keeps serving.

Why viser directly rather than nerfview (which Shape of Motion wraps): nerfview 0.1.3 ends the process
(``os._exit``) on any exception in a render, traces every Python line while rendering, and imports
packages it does not declare; the part we need is the small loop below.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from flow3d.eval.video import colorize_depth, colorize_scalar, depth_range_for_video, to_uint8_rgb
from flow3d.log import get_logger
from flow3d.vis.camera_paths import camera_centers, cameras_up, scale_intrinsics, scene_look_at
from flow3d.vis.server_start import SERVER_START_TIMEOUT_S, start_within

logger = get_logger(__name__)

SHOW_MODES = ("RGB", "depth", "foreground")


@dataclass
class ViewerStats:
    """Counters the viewer keeps (read by tests and shown in the panel)."""

    clients_connected: int = 0  # browsers connected since start
    frames_rendered: int = 0
    frames_sent: int = 0  # images handed to viser for a client's background
    render_errors: int = 0
    last_wh: tuple[int, int] = (0, 0)
    last_render_s: float = 0.0
    last_sent: np.ndarray | None = field(default=None, repr=False)  # (H, W, 3) uint8, the last image sent


def camera_from_viser(
    wxyz: np.ndarray, position: np.ndarray, fov: float, img_wh: tuple[int, int]
) -> tuple[Tensor, Tensor]:
    """(w2c (4, 4), K (3, 3)) of a viser camera: ``wxyz``/``position`` camera -> world (OpenCV axes, as viser
    uses them), ``fov`` vertical in radians, square pixels, principal point at the image centre."""
    import viser.transforms as vtf

    c2w = np.eye(4)
    c2w[:3, :3] = vtf.SO3(np.asarray(wxyz, dtype=np.float64)).as_matrix()
    c2w[:3, 3] = position
    W, H = img_wh
    f = H / 2.0 / math.tan(fov / 2.0)
    K = torch.tensor([[f, 0.0, (W - 1) / 2.0], [0.0, f, (H - 1) / 2.0], [0.0, 0.0, 1.0]], dtype=torch.float32)
    return torch.from_numpy(np.linalg.inv(c2w)).float(), K


class RenderCost:
    """Render time modelled as ``a + b * pixels`` (seconds), fitted by least squares to the last ``window``
    renders, to choose how many pixels fit in a frame time. The fixed part ``a`` (projection, sorting)
    matters on a CPU: halving the pixels does not halve the time."""

    def __init__(self, window: int = 24, seconds_per_pixel: float = 1e-5):
        self.samples: deque[tuple[float, float]] = deque(maxlen=window)  # (pixels, seconds)
        self._b0 = seconds_per_pixel  # the guess before any render

    def add(self, pixels: int, seconds: float) -> None:
        self.samples.append((float(pixels), float(seconds)))

    def fit(self) -> tuple[float, float]:
        """(a, b): seconds per render and per pixel; a proportional fit (a = 0) until two sizes were seen."""
        if not self.samples:
            return 0.0, self._b0
        px = np.array([p for p, _ in self.samples])
        dt = np.array([t for _, t in self.samples])
        if np.ptp(px) > 0.1 * px.max():
            b, a = np.polyfit(px, dt, 1)
            if b > 0 and a >= 0:
                return float(a), float(b)
        return 0.0, float(dt.sum() / px.sum())

    def pixels_for(self, seconds: float) -> float:
        """Pixels whose render should take ``seconds``; when the fixed part alone takes most of that, the
        size at which pixels cost a quarter of it (smaller images would barely render faster)."""
        a, b = self.fit()
        return (seconds - a) / b if seconds > 1.25 * a else 0.25 * a / b


def adaptive_wh(aspect: float, pixels: float, max_res: int, min_res: int = 48) -> tuple[int, int]:
    """(W, H) of about ``pixels`` pixels with aspect ``aspect`` (W / H); the longer side at most ``max_res``,
    the shorter at least ``min_res`` (when ``max_res`` allows)."""
    H = math.sqrt(max(pixels, 1.0) / aspect)
    H = max(H, min(min_res, max_res) / min(aspect, 1.0))  # the shorter side at least min_res
    H = min(H, max_res / max(aspect, 1.0))  # the longer side within max_res
    return max(1, int(round(H * aspect))), max(1, int(round(H)))


def _camera_known(client) -> bool:
    """True once the browser has sent its camera (viser asserts on reading it before that)."""
    try:
        return client.camera.update_timestamp > 0
    except AssertionError:
        return False


class _ClientLoop(threading.Thread):
    """Renders for one browser: at low resolution after each change, at full resolution once it settles."""

    def __init__(self, viewer: "SceneViewer", client):
        super().__init__(daemon=True, name=f"flow3d-view-client-{client.client_id}")
        self.viewer, self.client = viewer, client
        self.running = True
        self._wake = threading.Event()
        self._changed = time.monotonic()  # time of the last change
        self._rendered = -1.0  # the change the last low-resolution render showed
        self._full_done = False

    def request(self) -> None:
        """Something changed (camera, time, options): render it soon."""
        self._changed = time.monotonic()
        self._full_done = False
        self._wake.set()

    def run(self) -> None:
        while self.running and self.viewer.running:
            self._wake.wait(timeout=0.05)
            self._wake.clear()
            changed = self._changed
            if changed > self._rendered:
                full = False
            elif not self._full_done and time.monotonic() - changed >= self.viewer.settle_s:
                full = True
            else:
                continue
            if not _camera_known(self.client):
                self._wake.set()  # the browser has not reported its camera yet
                time.sleep(0.05)
                continue
            try:
                self.viewer.render_for(self.client, full=full)
            except Exception:  # keep serving: one bad render must not end the viewer
                self.viewer.stats.render_errors += 1
                logger.exception("render for client %d failed", self.client.client_id)
                time.sleep(0.5)
            self._rendered = changed
            if full and self._changed == changed:  # no change arrived during the full render
                self._full_done = True


class SceneViewer:
    """A viser server showing a trained run: time slider and play, training-camera frustums (click one to
    look through it), RGB / depth / foreground, dynamic / static Gaussians on or off.

    ``run`` is a :class:`flow3d.vis.load.TrainedRun`, ``seq`` its training video (cameras and images).
    ``max_res`` bounds the longer side of a render; ``target_fps`` is the frame rate aimed at while the
    camera moves. Call :meth:`stop` to shut the server down.
    """

    def __init__(
        self,
        run,
        seq,
        host: str = "127.0.0.1",
        port: int = 8080,
        max_res: int = 640,
        target_fps: float = 8.0,
        settle_s: float = 0.3,
        max_frustums: int = 60,
    ):
        import viser

        self.run, self.seq = run, seq
        self.max_res, self.target_fps, self.settle_s = int(max_res), float(target_fps), float(settle_s)
        self.stats = ViewerStats()
        self.running, self.playing = True, False
        self._render_lock = threading.Lock()
        self._loops: dict[int, _ClientLoop] = {}
        self._gone: set[int] = set()  # ids of clients that disconnected
        self.cost = RenderCost()
        T = seq.num_frames
        W, H = seq.img_wh
        self._train_fov = 2.0 * math.atan(H / 2.0 / float(seq.Ks[T // 2, 1, 1]))
        self.server = start_within(
            lambda: viser.ViserServer(host=host, port=port, label="flow3d", verbose=False),
            SERVER_START_TIMEOUT_S,
            f"the viewer's server on --host {host} --port {port}",
        )
        self.look_at, self.depth_range = self._scene_geometry()
        self._build_gui(T)
        self._add_frustums(max_frustums)
        up = cameras_up(seq.w2cs.double()).numpy()
        self.server.scene.set_up_direction(tuple(float(x) for x in up))
        ref = camera_centers(seq.w2cs[T // 2].double()).numpy()
        start = self.look_at + 1.4 * (ref - self.look_at)  # behind the middle camera: the frustums in view
        self.server.initial_camera.position = tuple(float(x) for x in start)
        self.server.initial_camera.look_at = tuple(float(x) for x in self.look_at)
        self.server.initial_camera.fov = self._train_fov
        self.server.on_client_connect(self._on_connect)
        self.server.on_client_disconnect(self._on_disconnect)
        self._player = threading.Thread(target=self._play_loop, daemon=True, name="flow3d-view-play")
        self._player.start()

    # ------------------------------------------------------------------------------------------ setup
    @property
    def port(self) -> int:
        return self.server.get_port()

    def _scene_geometry(self) -> tuple[np.ndarray, tuple[float, float]]:
        """The training cameras' look-at point and one depth colour range from a few training views."""
        seq, run, T = self.seq, self.run, self.seq.num_frames
        ref = T // 2
        look_at = scene_look_at(
            seq.w2cs.double(), seq.w2cs[ref].double(), seq.Ks[ref].double(), seq.img_wh, run.centres_at(ref)
        )
        W, H = seq.img_wh
        s = min(1.0, 96.0 / max(W, H))
        wh = (max(1, round(W * s)), max(1, round(H * s)))
        depths, valid = [], []
        for t in sorted({0, ref, T - 1}):
            r = run.render(t, seq.w2cs[t], scale_intrinsics(seq.Ks[t], wh[0] / W), wh)
            depths.append(r["depth"])
            valid.append(r["alpha"] >= 0.5)
        try:
            rng = depth_range_for_video(np.stack(depths), np.stack(valid))
        except ValueError:
            rng = (0.0, 1.0)
        return look_at.numpy(), rng

    def _build_gui(self, T: int) -> None:
        gui = self.server.gui
        with gui.add_folder("Time"):
            self.gui_time = gui.add_slider(
                "frame", min=0, max=max(T - 1, 1), step=1, initial_value=T // 2, disabled=T == 1
            )
            self.gui_play = gui.add_button("play", disabled=T == 1)
            self.gui_pause = gui.add_button("pause", visible=False)
            self.gui_fps = gui.add_slider("play fps", min=1, max=30, step=1, initial_value=10)
        with gui.add_folder("Show"):
            self.gui_mode = gui.add_dropdown("render", SHOW_MODES, initial_value="RGB")
            self.gui_fg = gui.add_checkbox("dynamic Gaussians", initial_value=True)
            self.gui_bg = gui.add_checkbox("static Gaussians", initial_value=True)
            self.gui_cams = gui.add_checkbox("training cameras", initial_value=True)
            self.gui_res = gui.add_slider(
                "max resolution",
                min=min(64, self.max_res),
                max=max(2048, self.max_res),
                step=16,
                initial_value=self.max_res,
            )
            self.gui_status = gui.add_markdown("waiting for a render")
        for h in (self.gui_time, self.gui_mode, self.gui_fg, self.gui_bg, self.gui_res):
            h.on_update(lambda _: self._request_all())

        self.gui_cams.on_update(lambda _: self._show_frustums())
        self.gui_play.on_click(lambda _: self.set_playing(True))
        self.gui_pause.on_click(lambda _: self.set_playing(False))

    def set_playing(self, playing: bool) -> None:
        """Start or stop playing the video's time (the play / pause buttons)."""
        self.playing = bool(playing) and self.seq.num_frames > 1
        self.gui_play.visible, self.gui_pause.visible = not self.playing, self.playing

    def _add_frustums(self, max_frustums: int) -> None:
        """Wireframe frustums of up to ``max_frustums`` training cameras (evenly spaced frames).

        The frustum the view was last jumped into is hidden (from inside, its lines frame the image).
        """
        import viser.transforms as vtf

        seq = self.seq
        T = seq.num_frames
        W, H = seq.img_wh
        ts = sorted(set(np.linspace(0, T - 1, min(T, max_frustums)).round().astype(int).tolist()))
        centres = camera_centers(seq.w2cs.double()).numpy()
        size = 0.05 * float(np.median(np.linalg.norm(centres - self.look_at[None], axis=-1)))
        self._frustums: dict[int, object] = {}
        self._inside: int | None = None  # the camera the view was jumped into
        for t in ts:
            c2w = np.linalg.inv(seq.w2cs[t].double().numpy())
            fov = 2.0 * math.atan(H / 2.0 / float(seq.Ks[t, 1, 1]))
            handle = self.server.scene.add_camera_frustum(
                f"/training_cameras/{t:05d}",
                fov=fov,
                aspect=W / H,
                scale=size,
                color=(60, 110, 230),
                thickness=1.5,
                thickness_units="screen",
                wxyz=vtf.SO3.from_matrix(c2w[:3, :3]).wxyz,
                position=c2w[:3, 3],
                visible=t != self._inside,
            )
            handle.on_click(lambda event, t=t: self.jump_to(event.client, t))
            self._frustums[t] = handle

    def _show_frustums(self) -> None:
        for t, f in self._frustums.items():
            f.visible = bool(self.gui_cams.value) and t != self._inside

    def jump_to(self, client, t: int) -> None:
        """Put ``client``'s camera on training frame ``t``'s camera (its pose and field of view) at time ``t``."""
        import viser.transforms as vtf

        c2w = np.linalg.inv(self.seq.w2cs[t].double().numpy())
        with client.atomic():
            client.camera.fov = 2.0 * math.atan(self.seq.img_wh[1] / 2.0 / float(self.seq.Ks[t, 1, 1]))
            client.camera.wxyz = vtf.SO3.from_matrix(c2w[:3, :3]).wxyz
            client.camera.position = c2w[:3, 3]
        self._inside = t
        self._show_frustums()
        self.gui_time.value = t
        self._request_all()

    # ------------------------------------------------------------------------------------------ clients
    def _on_connect(self, client) -> None:
        self.stats.clients_connected += 1
        loop = _ClientLoop(self, client)
        self._loops[client.client_id] = loop
        client.camera.on_update(lambda _: loop.request())
        loop.start()
        loop.request()
        logger.info("client %d connected", client.client_id)

    def _on_disconnect(self, client) -> None:
        self._gone.add(client.client_id)
        loop = self._loops.pop(client.client_id, None)
        if loop is not None:
            loop.running = False

    def _request_all(self) -> None:
        for loop in list(self._loops.values()):
            loop.request()

    def _play_loop(self) -> None:
        while self.running:
            time.sleep(1.0 / max(float(self.gui_fps.value), 1.0))
            if self.playing:
                self.gui_time.value = (int(self.gui_time.value) + 1) % self.seq.num_frames
                self._request_all()

    # ------------------------------------------------------------------------------------------ render
    def render_for(self, client, full: bool) -> None:
        """Render the client's current view (full: at ``max res``; else at the adaptive size) and send it."""
        cam = client.camera
        aspect = float(cam.aspect) if cam.image_height > 0 else self.seq.img_wh[0] / self.seq.img_wh[1]
        max_res = int(self.gui_res.value)
        if full:
            H = max_res / max(aspect, 1.0)
            wh = (max(1, round(H * aspect)), max(1, round(H)))
        else:
            wh = adaptive_wh(aspect, self.cost.pixels_for(1.0 / self.target_fps), max_res)
        w2c, K = camera_from_viser(cam.wxyz, cam.position, cam.fov, wh)
        t = int(self.gui_time.value)
        with self._render_lock:
            tic = time.perf_counter()
            r = self.run.render(t, w2c, K, wh, fg=self.gui_fg.value, bg=self.gui_bg.value)
            dt = time.perf_counter() - tic
        self.cost.add(wh[0] * wh[1], dt)
        img = self._colorize(r)
        self.stats.frames_rendered += 1
        if getattr(client, "client_id", None) in self._gone:  # the browser left during the render
            return
        client.scene.set_background_image(img, format="jpeg", jpeg_quality=90 if full else 60)
        self.stats.frames_sent += 1
        self.stats.last_wh, self.stats.last_render_s, self.stats.last_sent = wh, dt, img
        self.gui_status.content = f"frame {t}: {wh[0]}x{wh[1]} in {dt * 1000:.0f} ms"

    def _colorize(self, r: dict[str, np.ndarray]) -> np.ndarray:
        mode = self.gui_mode.value
        if mode == "depth":
            return colorize_depth(r["depth"], *self.depth_range, invalid=r["alpha"] < 0.05)
        if mode == "foreground":
            return colorize_scalar(r["fg"], 0.0, 1.0, cmap="viridis")
        return to_uint8_rgb(r["rgb"])

    def stop(self) -> None:
        """Stop the render threads and the server."""
        self.running = False
        for loop in list(self._loops.values()):
            loop.running = False
        self.server.stop()


__all__ = ["SHOW_MODES", "RenderCost", "SceneViewer", "ViewerStats", "adaptive_wh", "camera_from_viser"]
