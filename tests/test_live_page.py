"""The live page in a real headless Chromium (Debian's package) whose fake camera plays a y4m file: the
webcam goes to stdtrt over WebRTC, comes back stylized over WebRTC, and a prompt change from the page's
control changes it. Also: the token, and one viewer at a time (plain HTTP, no browser needed).
A screenshot of the page is saved under test-artifacts/ (or $STDTRT_ARTIFACTS)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.usefixtures("one_cpu_thread")
pytest.importorskip("aiortc", reason="the page needs aiortc (pip install 'stdtrt[live]')")
pytest.importorskip("aiohttp", reason="the page needs aiohttp (pip install 'stdtrt[live]')")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
W, H = 64, 48
ARTIFACTS = Path(os.environ.get("STDTRT_ARTIFACTS", Path(__file__).resolve().parents[1] / "test-artifacts"))


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, body=None, timeout: float = 10):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data, {"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class Live:
    """stdtrt live running in a thread of this process, with its page."""

    def __init__(self, **settings):
        from stdtrt.config import LiveConfig, StylizeConfig
        from stdtrt.live.run import run_live

        s = StylizeConfig(model="tiny-sd", width=W, height=H, nfe=2, prompt="an oil painting")
        self.cfg = LiveConfig(stylize=s, port=_port(), **settings)
        self.ready, self.live, self.result, self.error = threading.Event(), None, None, None

        def run():
            try:
                self.result = run_live(self.cfg, ready=self._ready)
            except BaseException as exc:  # noqa: BLE001 - re-raised by the test
                self.error = exc
            finally:
                self.ready.set()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert self.ready.wait(120), "stdtrt live did not start"
        if self.error:
            raise self.error
        self.url = self.live.page.url.split("?")[0]
        self.q = f"?token={self.live.page.token}" if self.live.page.token else ""

    def _ready(self, live):
        self.live = live
        self.ready.set()

    def stop(self):
        _get(self.url + "stop" + self.q, {})
        self.thread.join(60)
        if self.error:
            raise self.error
        return self.result


def test_the_token_is_required_off_the_loopback_and_a_second_viewer_is_told_busy():
    live = Live(source="web", sink="web", host="0.0.0.0", token="s3cret-token")
    try:
        assert _get(live.url)[0] == 403
        code, body = _get(live.url + "?token=wrong-token")
        assert code == 403 and b"wrong or missing token" in body
        assert _get(live.url + "stats?token=wrong-token")[0] == 403
        code, body = _get(live.url + live.q)
        assert code == 200 and b"stdtrt live" in body
        first = urllib.request.urlopen(live.url + "mjpeg" + live.q + "&feed=output", timeout=10)
        try:
            code, body = _get(live.url + "mjpeg" + live.q + "&feed=output")
            assert code == 409 and b"busy" in body
            code, body = _get(live.url + "offer" + live.q, {"sdp": "", "type": "offer"})
            assert code == 409 and b"one viewer at a time" in body
        finally:
            first.close()
    finally:
        live.stop()


class Browser:
    """Headless Chromium with a fake camera, driven over the DevTools protocol (aiohttp's websocket)."""

    def __init__(self, url: str, camera: Path, profile: Path):
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--use-fake-ui-for-media-stream",
             "--use-fake-device-for-media-stream", f"--use-file-for-fake-video-capture={camera}",
             "--remote-debugging-port=0", f"--user-data-dir={profile}", "--window-size=900,600",
             "--autoplay-policy=no-user-gesture-required", url],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        active = profile / "DevToolsActivePort"
        deadline = time.time() + 60
        while not active.exists() or not active.read_text().strip():
            assert time.time() < deadline and self.proc.poll() is None, "chromium did not start"
            time.sleep(0.2)
        port = int(active.read_text().split()[0])
        while True:
            _, body = _get(f"http://127.0.0.1:{port}/json")
            pages = [t for t in json.loads(body) if t["type"] == "page"]
            if pages:
                break
            time.sleep(0.2)
        import asyncio

        self.loop = asyncio.new_event_loop()
        self.ws_url, self.n = pages[0]["webSocketDebuggerUrl"], 0
        self.session, self.ws = self.loop.run_until_complete(self._connect())

    async def _connect(self):
        import aiohttp

        session = aiohttp.ClientSession()
        return session, await session.ws_connect(self.ws_url, max_msg_size=0)

    async def _call(self, method, params):
        self.n += 1
        await self.ws.send_json({"id": self.n, "method": method, "params": params})
        while True:
            msg = await self.ws.receive_json()
            if msg.get("id") == self.n:
                return msg

    def call(self, method, **params):
        return self.loop.run_until_complete(self._call(method, params))

    def js(self, expression: str):
        msg = self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        return msg["result"]["result"].get("value")

    def remote_frame(self) -> np.ndarray:
        """The stylized frame the page's <video> shows now, at its own size."""
        data = self.js(
            "(() => { const v = document.getElementById('remote'); const c = document.createElement('canvas');"
            " c.width = v.videoWidth; c.height = v.videoHeight; const g = c.getContext('2d');"
            " g.drawImage(v, 0, 0); return [c.width, c.height, Array.from(g.getImageData(0, 0, c.width,"
            " c.height).data)]; })()"
        )
        w, h, px = data
        return np.asarray(px, np.uint8).reshape(h, w, 4)[..., :3]

    def close(self):
        self.loop.run_until_complete(self.session.close())
        self.loop.close()
        self.proc.terminate()
        self.proc.wait(20)


def _blocks(rgb: np.ndarray) -> np.ndarray:
    """8x8 block means: the picture without the codec's fine noise (two VP8 legs at 64x48 are lossy)."""
    h, w = rgb.shape[0] // 8 * 8, rgb.shape[1] // 8 * 8
    return rgb[:h, :w].astype(float).reshape(h // 8, 8, w // 8, 8, 3).mean(axis=(1, 3))


def _diff(a, b) -> float:
    return float(np.abs(_blocks(a) - _blocks(b)).mean())


def _wait(predicate, seconds: float, what: str):
    deadline = time.time() + seconds
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium here (apt-get install chromium; .ci/run installs it)"
)
def test_the_page_in_chromium_gets_its_webcam_back_stylized_and_a_prompt_change_changes_it(tmp_path):
    from stdtrt.io.images import letterbox
    from stdtrt.io.samples import sample_frames

    still = next(sample_frames(1, 128, 96))  # a still camera: the stylized frame stays put, up to VP8
    camera = tmp_path / "camera.y4m"
    import av

    yuv = av.VideoFrame.from_ndarray(still, format="rgb24").reformat(format="yuv420p").to_ndarray().tobytes()
    camera.write_bytes(b"YUV4MPEG2 W128 H96 F10:1 Ip A1:1 C420jpeg\n" + (b"FRAME\n" + yuv) * 20)
    live = Live(source="web", sink="web")
    browser = Browser(live.url, camera, tmp_path / "profile")
    try:
        state = lambda: browser.js("JSON.stringify(window.stdtrt)")  # noqa: E731
        _wait(
            lambda: json.loads(state() or "{}").get("received", 0) >= 8, 120, f"stylized frames ({state()})"
        )
        assert json.loads(state())["transport"] == "webrtc"
        time.sleep(1)
        a1 = browser.remote_frame()
        time.sleep(1)
        a2 = browser.remote_frame()
        assert a1.shape == (H, W, 3)
        server = live.live.page.output.rgb
        camera_in = letterbox(still, W, H)
        shown, styled = _diff(a2, server), _diff(a2, camera_in)
        print(f"page vs stdtrt's output {shown:.1f}, page vs camera {styled:.1f}")
        assert shown < styled / 2  # what the page shows is what stdtrt made (VP8 aside), not the camera
        noise = np.abs(a1.astype(int) - a2).mean()  # a still camera under one prompt: only the codecs move it
        before = server.copy()

        browser.js("document.getElementById('prompt').value = 'a watercolour of a city at night'")
        browser.js("document.getElementById('apply').click()")
        _wait(lambda: json.loads(_get(live.url + "stats" + live.q)[1])["generation"] == 1, 60, "the change")
        seen = json.loads(state())["received"]
        _wait(lambda: json.loads(state())["received"] >= seen + 8, 60, "frames after the change")
        time.sleep(1)
        b = browser.remote_frame()
        changed = np.abs(b.astype(int) - a2).mean()
        made = np.abs(live.live.page.output.rgb.astype(int) - before).mean()
        print(
            f"prompt change: on the page {changed:.2f}, in stdtrt's output {made:.2f}; codec noise {noise:.2f}"
        )
        assert made > 1  # tiny-sd's random text encoder moves a picture by ~2.5 levels per prompt
        assert changed > max(0.3, 3 * noise)  # and the page shows it (VP8 keeps less of a small change)

        figures = json.loads(_get(live.url + "stats" + live.q)[1])
        assert figures["frames"] > 8 and figures["p95_ms"] > 0
        _wait(lambda: "latency p50" in (browser.js("document.getElementById('figures').textContent") or ""),
              10, "the figures on the page")  # fmt: skip
        shot = browser.call("Page.captureScreenshot", format="png")["result"]["data"]
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "live-page.png").write_bytes(base64.b64decode(shot))
        from PIL import Image

        assert Image.open(ARTIFACTS / "live-page.png").size[0] > 0
    finally:
        browser.close()
        result = live.stop()
    assert result.frames > 16


@pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium here (apt-get install chromium; .ci/run installs it)"
)
def test_a_file_source_is_shown_on_the_page_over_webrtc_and_its_input_over_mjpeg(tmp_path):
    """--source FILE --realtime --sink web: the page receives only (a recvonly transceiver), the source is
    the MJPEG feed beside it."""
    from conftest import make_video

    clip = make_video(tmp_path / "clip.mp4", frames=120, size=(W, H), fps=12, audio=False)
    camera = tmp_path / "unused.y4m"
    camera.write_bytes(b"")
    live = Live(source=str(clip), sink="web", realtime=True)
    browser = Browser(live.url, camera, tmp_path / "profile")
    try:
        state = lambda: json.loads(browser.js("JSON.stringify(window.stdtrt)") or "{}")  # noqa: E731
        _wait(lambda: state().get("received", 0) >= 5, 120, "stylized frames")
        assert state()["transport"] == "webrtc"
        _wait(lambda: browser.js("document.getElementById('input').naturalWidth") == W, 30, "the MJPEG input")
        frame = browser.remote_frame()
        assert frame.shape == (H, W, 3) and frame.std() > 5
    finally:
        browser.close()
        result = live.stop()
    assert result.frames >= 5
