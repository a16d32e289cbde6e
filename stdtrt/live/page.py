"""The page and its server, in the same process as the networks (aiohttp, in a thread of its own).

    GET  /         the page: the source and the stylized stream side by side, the figures, the controls
    POST /offer    WebRTC (aiortc): the page's webcam in (--source web), the stylized stream out (--sink web)
    GET  /mjpeg    the fallback: ?feed=output (stylized) or ?feed=input, one JPEG per new frame, newest only
    GET  /stats    the figures: frames, fps, capture-to-sink latency p50/p95, drops
    POST /control  {"prompt": ..., "strength": ..., "cache": true|false}: taken between frames, no restart
    POST /stop     ends the run cleanly (the output so far kept)

Bound to 127.0.0.1 unless --host says otherwise; on any other host every request needs the token (--token,
or one generated and printed). One viewer at a time: a second is told the stream is busy.
Nothing here waits on a backlog: the WebRTC track and the MJPEG stream send the newest frame, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import secrets
import sys
import threading

from stdtrt.errors import StdtrtError
from stdtrt.live.feeds import WEB_SIZE, Feed, WebSink, WebSource, stylized_track

log = logging.getLogger(__name__)


class Page:
    def __init__(self, cfg):
        try:
            import aiohttp.web  # noqa: F401
        except ImportError:
            raise StdtrtError("the page needs aiohttp and aiortc: pip install 'stdtrt[live]'") from None
        self.cfg = cfg
        self.token = cfg.token or (None if cfg.local else secrets.token_urlsafe(12))
        self.input, self.output = Feed(), Feed()
        self.figures: dict = {"frames": 0, "dropped": 0, "fps": 0.0}
        self.dropped_before = 0  # webcam frames replaced before the capture thread took them
        self.live = None
        self.viewer = None  # the one peer connection (or MJPEG reader) being served
        self.peers: set = set()
        self.stopping = threading.Event()
        self.web_source = WebSource(self) if cfg.source == "web" else None
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._stop = None
        try:
            self.port = asyncio.run_coroutine_threadsafe(self._serve(), self.loop).result(timeout=30)
        except OSError as exc:
            self._shutdown_loop()
            if exc.errno == errno.EADDRINUSE:
                raise StdtrtError(
                    f"port {cfg.port} on {cfg.host} is in use (another stdtrt live?): pass --port N, or 0 for any free one"
                ) from None
            raise StdtrtError(
                f"cannot serve the page on {cfg.host}:{cfg.port}: {exc.strerror or exc}"
            ) from None
        host = "127.0.0.1" if cfg.host in ("0.0.0.0", "::") else cfg.host
        self.url = f"http://{host}:{self.port}/" + (f"?token={self.token}" if self.token else "")
        print(f"stdtrt live: open {self.url}", file=sys.stderr, flush=True)

    # -- what the run uses ------------------------------------------------------------------------------
    def source(self) -> WebSource:
        return self.web_source

    def sink(self) -> WebSink:
        return WebSink(self)

    def attach(self, live) -> None:
        self.live = live

    def close(self) -> None:
        self.stopping.set()
        if self.loop.is_running():
            with contextlib.suppress(Exception):  # closing anyway
                asyncio.run_coroutine_threadsafe(self._close(), self.loop).result(timeout=10)
        self._shutdown_loop()

    def _shutdown_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)

    # -- the server -------------------------------------------------------------------------------------
    async def _serve(self) -> int:
        from aiohttp import web

        @web.middleware
        async def check_token(request, handler):
            given = request.query.get("token") or request.headers.get("X-Token") or ""
            if self.token and not secrets.compare_digest(given.encode(), self.token.encode()):
                return web.Response(
                    status=403, text="wrong or missing token: open the URL stdtrt live printed\n"
                )
            return await handler(request)

        app = web.Application(middlewares=[check_token], client_max_size=4 * 2**20)
        app.router.add_get("/", self._index)
        app.router.add_post("/offer", self._offer)
        app.router.add_get("/mjpeg", self._mjpeg)
        app.router.add_get("/stats", self._stats)
        app.router.add_post("/control", self._control)
        app.router.add_post("/stop", self._stop_run)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.cfg.host, self.cfg.port, reuse_address=False)
        await site.start()
        self.closed = asyncio.Event()
        return site._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        self.closed.set()
        for pc in list(self.peers):
            await pc.close()
        await self.runner.cleanup()

    @staticmethod
    def _json(data, status=200):
        from aiohttp import web

        return web.json_response(data, status=status)

    async def _index(self, request):
        from aiohttp import web

        live = self.live
        s = live.controls.cfg if live else self.cfg.stylize
        baked = ""
        if live is not None and live.bundle is not None:
            baked = (f"the bundle {live.bundle.path} bakes its prompt ({live.bundle.manifest.prompt!r}), strength "
                     f"and cache: export another bundle to change them, or run --model")  # fmt: skip
        elif live is not None and live.model is None:
            baked = ("with --style-image, --controlnet, --motion-adapter or --gamma the settings are fixed for the "
                     "run: start another to change them")  # fmt: skip
        width, height = (live.runner.width, live.runner.height) if live else WEB_SIZE
        config = {
            "token": self.token or "", "prompt": s.prompt, "strength": s.strength, "cache": s.cache_frames > 0,
            "baked": baked, "web_source": self.cfg.source == "web", "web_sink": self.cfg.sink == "web",
            "width": WEB_SIZE[0] if self.cfg.source == "web" else width,
            "height": WEB_SIZE[1] if self.cfg.source == "web" else height,
        }  # fmt: skip
        from stdtrt.live.html import PAGE

        return web.Response(text=PAGE.replace("{config}", json.dumps(config)), content_type="text/html")

    async def _stats(self, request):
        figures = dict(self.figures)
        figures["dropped"] = figures.get("dropped", 0) + self.dropped_before
        if self.live is not None:
            figures["generation"] = self.live.controls.generation
            figures["note"] = self.live.latency_note
        figures["viewer"] = self.viewer is not None
        return self._json(figures)

    async def _control(self, request):
        live = self.live
        if live is None:
            return self._json({"error": "the networks are still loading"}, 503)
        if live.bundle is not None or live.model is None:
            return self._json(
                {"error": "this run's settings are baked (a bundle): export another, or run --model"}, 409
            )
        try:
            body = await request.json()
        except ValueError:
            return self._json({"error": "the body must be JSON"}, 400)
        settings = {}
        if "prompt" in body:
            settings["prompt"] = str(body["prompt"])
        if "strength" in body:
            try:
                settings["strength"] = float(body["strength"])
            except (TypeError, ValueError):
                return self._json({"error": f"strength must be a number, got {body['strength']!r}"}, 400)
        if "cache" in body:
            settings["cache_frames"] = 1 if body["cache"] else 0
        if not settings:
            return self._json({"error": "nothing to change: give prompt, strength or cache"}, 400)
        try:
            live.check_change(settings)
            live.controls.change(**settings)
        except StdtrtError as exc:
            return self._json({"error": str(exc)}, 400)
        return self._json({"applied": settings})

    async def _stop_run(self, request):
        self.stopping.set()
        if self.live is not None:
            self.live.stop()
        return self._json({"stopping": True})

    async def _mjpeg(self, request):
        from aiohttp import web

        feed = self.output if request.query.get("feed", "output") == "output" else self.input
        claim = feed is self.output
        if claim:
            if self.viewer is not None:
                return self._json({"error": "the stream is busy: one viewer at a time"}, 409)
            self.viewer = request
        response = web.StreamResponse(headers={"Content-Type": "multipart/x-mixed-replace; boundary=frame",
                                               "Cache-Control": "no-cache"})  # fmt: skip
        await response.prepare(request)
        version = 0
        try:
            while not self.closed.is_set():
                version = await feed.newer(version, self.closed)
                if feed.rgb is None:
                    continue
                data = feed.jpeg()
                await response.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                                     + str(len(data)).encode() + b"\r\n\r\n" + data + b"\r\n")  # fmt: skip
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            if claim and self.viewer is request:
                self.viewer = None
        return response

    async def _offer(self, request):
        from aiortc import RTCPeerConnection, RTCSessionDescription

        if self.viewer is not None:
            return self._json({"error": "the stream is busy: one viewer at a time"}, 409)
        try:
            body = await request.json()
            offer = RTCSessionDescription(sdp=body["sdp"], type=body["type"])
        except (ValueError, KeyError, TypeError):
            return self._json({"error": "the body must be a WebRTC offer {sdp, type}"}, 400)
        pc = RTCPeerConnection()
        self.viewer = pc
        self.peers.add(pc)

        @pc.on("connectionstatechange")
        async def on_state():
            if pc.connectionState in ("failed", "closed"):
                self.peers.discard(pc)
                if self.viewer is pc:
                    self.viewer = None
                await pc.close()

        @pc.on("track")
        def on_track(track):
            if track.kind == "video" and self.web_source is not None:
                asyncio.ensure_future(self._read_track(track))

        await pc.setRemoteDescription(offer)
        if self.cfg.sink == "web":
            pc.addTrack(stylized_track(self))
        await pc.setLocalDescription(await pc.createAnswer())
        return self._json({"sdp": pc.localDescription.sdp, "type": pc.localDescription.type})

    async def _read_track(self, track) -> None:
        from aiortc.mediastreams import MediaStreamError

        while not self.closed.is_set():
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            self.web_source.offer(frame.to_ndarray(format="rgb24"), int(frame.pts or 0))
