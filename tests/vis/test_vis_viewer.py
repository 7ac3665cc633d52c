"""``python -m flow3d.view``: the viser viewer of a checkpoint trained for a few steps.

A plain HTTP test of the page, the render path with a stand-in client (compared with direct renders),
and a real browser: headless Chromium from the OS packages driven by Playwright (never a downloaded
browser). The browser test skips when chromium or playwright is missing; CI installs both.
"""

from __future__ import annotations

import math
import shutil
import socket
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

viser = pytest.importorskip("viser", reason="the viewer needs viser (pip install 'flow3d[viewer]')")

from flow3d.eval.video import colorize_depth, to_uint8_rgb  # noqa: E402
from flow3d.view import ViewConfig, main, start_viewer  # noqa: E402
from flow3d.vis.viewer import RenderCost, adaptive_wh, camera_from_viser  # noqa: E402

CHROMIUM = Path(shutil.which("chromium") or "/usr/bin/chromium")  # Debian's package
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(cond, timeout: float, what: str) -> None:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def viewer(work_dir):
    v = start_viewer(ViewConfig(work_dir=str(work_dir), port=_free_port(), max_res=160, device="cpu"))
    yield v
    v.stop()


def test_camera_from_viser_reproduces_a_training_camera(trained):
    run, seq = trained
    W, H = seq.img_wh
    for t in (0, 5):
        c2w = np.linalg.inv(seq.w2cs[t].double().numpy())
        fov = 2 * math.atan(H / 2 / float(seq.Ks[t, 1, 1]))
        w2c, K = camera_from_viser(viser.transforms.SO3.from_matrix(c2w[:3, :3]).wxyz, c2w[:3, 3], fov, (W, H))
        torch.testing.assert_close(w2c, seq.w2cs[t], atol=1e-5, rtol=0)
        torch.testing.assert_close(K, seq.Ks[t], atol=1e-4, rtol=0)  # the synthetic cameras are centred


def test_adaptive_size_keeps_aspect_and_bounds():
    W, H = adaptive_wh(1.5, 1.2e5, max_res=2048)
    assert abs(W * H - 1.2e5) / 1.2e5 < 0.02 and abs(W / H - 1.5) < 0.02
    assert adaptive_wh(1.5, 100.0, max_res=2048) == (72, 48)  # not below 48 pixels on the shorter side
    assert adaptive_wh(1.5, 1e12, max_res=320) == (320, 213)  # the longer side capped by max_res
    assert adaptive_wh(0.5, 1e12, max_res=320) == (160, 320)  # portrait: the height is the longer side


def test_render_cost_fits_the_fixed_and_per_pixel_parts():
    cost = RenderCost()
    assert cost.pixels_for(0.1) == pytest.approx(0.1 / 1e-5)  # the guess before any render
    cost.add(10_000, 0.2 + 1e-6 * 10_000)  # a single size: proportional until two sizes are seen
    assert cost.fit() == (0.0, pytest.approx(0.21 / 10_000))
    for px in (20_000, 40_000, 80_000, 160_000):
        cost.add(px, 0.2 + 1e-6 * px)  # hand-made: 200 ms fixed + 1 us per pixel
    a, b = cost.fit()
    assert a == pytest.approx(0.2, rel=1e-6) and b == pytest.approx(1e-6, rel=1e-6)
    assert cost.pixels_for(0.5) == pytest.approx(300_000, rel=1e-5)  # (0.5 - 0.2) / 1e-6
    assert cost.pixels_for(0.125) == pytest.approx(50_000, rel=1e-5)  # fixed part > the frame time: a/4 of pixels


def test_http_page_answers(viewer):
    with urllib.request.urlopen(f"http://127.0.0.1:{viewer.port}/", timeout=30) as r:
        assert r.status == 200
        body = r.read().decode("utf-8", "replace")
    assert body.lower().startswith("<!doctype html") and "<script" in body


class _StandInClient:
    """What the viewer reads from a viser client: a camera, and a scene that takes background images."""

    def __init__(self, seq, t: int, wh: tuple[int, int]):
        c2w = np.linalg.inv(seq.w2cs[t].double().numpy())
        self.camera = SimpleNamespace(
            wxyz=viser.transforms.SO3.from_matrix(c2w[:3, :3]).wxyz,
            position=c2w[:3, 3],
            fov=2 * math.atan(seq.img_wh[1] / 2 / float(seq.Ks[t, 1, 1])),
            aspect=wh[0] / wh[1],
            image_height=wh[1],
            update_timestamp=1.0,
        )
        self.sent: list[np.ndarray] = []
        self.scene = SimpleNamespace(set_background_image=lambda img, **kw: self.sent.append(img))


def test_render_follows_the_panel_options(viewer, trained):
    run, seq = trained
    W, H = seq.img_wh
    client = _StandInClient(seq, 3, (W, H))
    viewer.gui_time.value = 3
    viewer.gui_res.value = 48  # = W: a full render is the training resolution
    try:
        viewer.render_for(client, full=True)
        ref = run.render(3, seq.w2cs[3], seq.Ks[3], (W, H))
        assert client.sent[-1].shape == (H, W, 3)
        assert np.abs(client.sent[-1].astype(int) - to_uint8_rgb(ref["rgb"]).astype(int)).max() <= 1
        viewer.gui_mode.value = "depth"
        viewer.render_for(client, full=True)
        expected = colorize_depth(ref["depth"], *viewer.depth_range, invalid=ref["alpha"] < 0.05)
        assert np.abs(client.sent[-1].astype(int) - expected.astype(int)).max() <= 1
        viewer.gui_mode.value = "RGB"
        viewer.gui_bg.value = False
        viewer.render_for(client, full=True)
        only_fg = run.render(3, seq.w2cs[3], seq.Ks[3], (W, H), bg=False)
        assert np.abs(client.sent[-1].astype(int) - to_uint8_rgb(only_fg["rgb"]).astype(int)).max() <= 1
        assert np.abs(client.sent[-1].astype(int) - client.sent[0].astype(int)).mean() > 5  # the static part went
        viewer.gui_bg.value, viewer.gui_res.value = True, 160
        viewer.cost = RenderCost(seconds_per_pixel=10.0)  # as if rendering were very slow: the smallest image
        viewer.render_for(client, full=False)
        assert client.sent[-1].shape[:2] == (48, 64)  # the shorter side at its 48-pixel floor, aspect kept
    finally:
        viewer.gui_mode.value, viewer.gui_bg.value, viewer.gui_res.value = "RGB", True, 160


def test_play_advances_time_and_pause_stops_it(viewer):
    viewer.gui_fps.value = 30
    start = int(viewer.gui_time.value)
    viewer.set_playing(True)
    try:
        assert viewer.gui_pause.visible and not viewer.gui_play.visible
        _wait(lambda: int(viewer.gui_time.value) not in (start,), 10, "time to advance")
    finally:
        viewer.set_playing(False)
    assert viewer.gui_play.visible and not viewer.gui_pause.visible
    time.sleep(0.2)
    stopped = int(viewer.gui_time.value)
    time.sleep(0.5)
    assert int(viewer.gui_time.value) == stopped


def _canvas_correlation(shot: np.ndarray, sent: np.ndarray) -> float:
    """Correlation of the screenshot's canvas with the sent image, stretched to the canvas as viser shows it,
    in a region clear of the panel (right), the software-WebGL notice (top left) and the axes (bottom left)."""
    import cv2

    h, w = shot.shape[:2]
    ref = cv2.resize(sent, (w, h), interpolation=cv2.INTER_LINEAR)
    ys, xs = slice(int(0.3 * h), int(0.88 * h)), slice(int(0.08 * w), int(0.6 * w))
    a = shot[ys, xs, :3].astype(np.float64).mean(-1).ravel()
    b = ref[ys, xs].astype(np.float64).mean(-1).ravel()
    return float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else 0.0


@pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="headless browser test: chromium is not installed (apt-get install chromium; .ci/run installs it)",
)
def test_a_real_browser_connects_and_shows_a_rendered_frame(viewer, trained, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs playwright (the dev extra)")
    run, seq = trained
    viewer.gui_cams.value = False  # frustum lines would cross the compared region
    sent_before = viewer.stats.frames_sent
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    with sync_api.sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 720},  # the panel floats right of 0.7 W
        )
        try:
            page = ctx.new_page()
            page.goto(f"http://127.0.0.1:{viewer.port}/", timeout=60_000)
            _wait(lambda: len(viewer.server.get_clients()) >= 1, 120, "the browser to connect")
            _wait(lambda: viewer.stats.frames_sent > sent_before, 120, "a frame rendered and sent")
            corr, shot = -1.0, None

            def shows_the_frame() -> bool:
                nonlocal corr, shot
                shot = np.frombuffer(page.screenshot(type="png"), np.uint8)
                import cv2

                shot = cv2.cvtColor(cv2.imdecode(shot, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
                corr = _canvas_correlation(shot, viewer.stats.last_sent)
                return corr > 0.9

            _wait(shows_the_frame, 90, "the screenshot to show the sent frame")
            assert shot.std() > 10  # not blank
            (tmp_path / "viewer.png").write_bytes(page.screenshot(type="png"))

            # clicking a training camera's frustum: the browser's camera moves to that camera and time
            client = next(iter(viewer.server.get_clients().values()))
            n = viewer.stats.frames_sent
            viewer.jump_to(client, 2)
            _wait(lambda: viewer.stats.frames_sent > n + 1, 120, "frames of the new view")
            c2w = np.linalg.inv(seq.w2cs[2].double().numpy())
            np.testing.assert_allclose(client.camera.position, c2w[:3, 3], atol=1e-4)
            R = viser.transforms.SO3(client.camera.wxyz).as_matrix()
            np.testing.assert_allclose(R, c2w[:3, :3], atol=1e-3)
            assert viewer.gui_time.value == 2
        finally:
            ctx.close()
    assert viewer.stats.render_errors == 0 and viewer.stats.clients_connected >= 1


def test_cli_error_for_a_missing_checkpoint(work_dir):
    with pytest.raises(SystemExit, match=r"^error: checkpoint .*model_9.ckpt not found"):
        main(["--work-dir", str(work_dir), "--model", "9", "--port", str(_free_port())])
