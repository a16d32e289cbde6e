"""The page's frames: the newest of each stream for its readers, its webcam as a Source, the page as a Sink.

Each reader (an MJPEG response, the WebRTC track) takes the newest frame once; nothing waits on a backlog.
`page` below is live/page.py's Page, which imports this module.
"""

from __future__ import annotations

import asyncio
import queue
import time
from fractions import Fraction

import numpy as np

from stdtrt.io.images import letterbox
from stdtrt.live.realtime import Captured
from stdtrt.live.sinks import Sink
from stdtrt.live.sources import Source

WEB_SIZE = (640, 480)  # what the page asks its webcam for


def _jpeg(rgb: np.ndarray) -> bytes:
    import cv2

    ok, data = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 85])
    return data.tobytes()


class Feed:
    """The newest frame of one stream (the input or the stylized output), for the page's readers."""

    def __init__(self):
        self.rgb: np.ndarray | None = None
        self.version = 0
        self.captured = 0.0
        self._jpeg: tuple[int, bytes] | None = None

    def publish(self, rgb: np.ndarray, captured: float) -> None:
        self.rgb, self.captured, self.version = rgb, captured, self.version + 1

    def jpeg(self) -> bytes:
        version = self.version
        if self._jpeg is None or self._jpeg[0] != version:
            self._jpeg = (version, _jpeg(self.rgb))
        return self._jpeg[1]

    async def newer(self, version: int, stop: asyncio.Event) -> int:
        """Wait until a frame newer than `version` is there (polled: the writer is another thread)."""
        while self.version <= version and not stop.is_set():
            await asyncio.sleep(0.005)
        return self.version


class WebSource(Source):
    """The page's webcam: frames of the WebRTC track, the newest winning (clocked)."""

    clocked = True
    name = "the page's webcam"

    def __init__(self, page):
        self.page = page
        self.width, self.height = WEB_SIZE
        self.rate, self.time_base = Fraction(30), Fraction(1, 90000)
        self.frames_in: queue.Queue = queue.Queue(maxsize=1)

    def offer(self, rgb: np.ndarray, pts: int) -> None:
        """From the WebRTC track: the newest frame replaces one not yet taken."""
        item = (rgb, pts, time.perf_counter())
        try:
            self.frames_in.get_nowait()
            self.page.dropped_before += 1
        except queue.Empty:
            pass
        self.frames_in.put_nowait(item)

    def frames(self, width: int, height: int):
        index = 0
        while not self.page.stopping.is_set():
            try:
                rgb, pts, captured = self.frames_in.get(timeout=0.1)
            except queue.Empty:
                continue
            yield Captured(letterbox(rgb, width, height), pts, captured, index)
            index += 1


class WebSink(Sink):
    """The page: the stylized frame (and its input) published for the WebRTC track and MJPEG readers."""

    def __init__(self, page):
        self.page = page

    def write(self, rgb: np.ndarray, frame: Captured) -> None:
        self.page.input.publish(frame.rgb, frame.captured)
        self.page.output.publish(rgb, frame.captured)


def stylized_track(page):
    """The WebRTC track of the stylized stream: each recv() gives the newest output frame not sent yet,
    timestamped by its capture time on the 90 kHz clock (so the page plays it at the source's pace)."""
    import av
    from aiortc import MediaStreamTrack

    class StylizedTrack(MediaStreamTrack):
        kind = "video"

        def __init__(self):
            super().__init__()
            self.version, self.start, self.last_pts = 0, None, -1

        async def recv(self):
            feed = page.output
            self.version = await feed.newer(self.version, page.closed)
            if feed.rgb is None:
                from aiortc.mediastreams import MediaStreamError

                raise MediaStreamError
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(feed.rgb), format="rgb24")
            self.start = feed.captured if self.start is None else self.start
            pts = max(self.last_pts + 1, round((feed.captured - self.start) * 90000))
            frame.pts, frame.time_base, self.last_pts = pts, Fraction(1, 90000), pts
            return frame

    return StylizedTrack()
