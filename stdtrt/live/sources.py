"""Where live frames come from: a pipe on stdin (y4m, or raw rgb24 of a given size), a video file (as fast
as the networks go, or with --realtime at its own timestamps), a V4L2 camera, a URL PyAV opens (RTSP, RTMP,
SRT, UDP, HTTP/HLS; reopened with back-off when it drops), and the page's webcam (live/feeds.py).

Each yields `Captured` frames already at the working size (fitted by io/images.fit_box, so a stream that
changes size midway keeps going), and says whether it has a clock of its own (`clocked`: then the newest
frame wins, live/realtime.Latest).
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np

from stdtrt.errors import StdtrtError
from stdtrt.io import video
from stdtrt.io.images import letterbox
from stdtrt.live.realtime import Captured

log = logging.getLogger(__name__)


class SourceEnded(StdtrtError):
    """A source that stopped midway (a pipe cut inside a frame, a stream that could not be reopened): the
    frames before it are kept, the outputs closed cleanly, and the run ends with this line."""


def is_url(name: str) -> bool:
    return "://" in name


class Source:
    """What every source says: its name, displayed size, frame rate, time base and whether it is clocked."""

    name: str
    width: int
    height: int
    rate: Fraction
    time_base: Fraction
    clocked: bool

    def frames(self, width: int, height: int) -> Iterator[Captured]:
        raise NotImplementedError

    def close(self) -> None:
        pass


# -- pipes -------------------------------------------------------------------------------------------------
Y4M_MAGIC = b"YUV4MPEG2"


def parse_y4m_header(line: bytes) -> tuple[int, int, Fraction, str]:
    """(width, height, frame rate, colour space) of a y4m stream header line."""
    fields = {t[:1]: t[1:] for t in line.decode("ascii", "replace").split()[1:]}
    try:
        width, height = int(fields["W"]), int(fields["H"])
    except (KeyError, ValueError):
        raise StdtrtError(f"the y4m header on stdin has no size: {line[:80]!r}") from None
    num, _, den = fields.get("F", "30:1").partition(":")
    rate = Fraction(int(num), int(den or 1)) if num.isdigit() else Fraction(30)
    colour = fields.get("C", "420jpeg")
    if not colour.startswith("420"):
        raise StdtrtError(
            f"the y4m stream on stdin is C{colour}: send 4:2:0 (ffmpeg ... -pix_fmt yuv420p -f yuv4mpegpipe -)"
        )
    if width % 2 or height % 2:
        raise StdtrtError(
            f"the y4m stream on stdin is {width}x{height}: 4:2:0 needs an even width and height"
        )
    return width, height, rate, colour


class PipeSource(Source):
    """Frames on a pipe: y4m (its header says size and rate), else raw rgb24 of --size at --fps. The pipe is
    the clock only with --realtime (a live producer, newest frame wins); otherwise every frame is taken.
    A pipe that ends inside a frame keeps the frames before it and ends the run with one line."""

    def __init__(self, stream, size: tuple[int, int] | None, fps: float, realtime: bool, name: str = "stdin"):
        self.stream, self.name, self.clocked = stream, name, realtime
        head = stream.peek(len(Y4M_MAGIC))[: len(Y4M_MAGIC)] if hasattr(stream, "peek") else b""
        if not head:
            raise StdtrtError(f"the pipe on {name} is empty: no frames came")
        self.y4m = head == Y4M_MAGIC
        if self.y4m:
            self.width, self.height, self.rate, _ = parse_y4m_header(stream.readline())
            self.frame_bytes = self.width * self.height * 3 // 2
        else:
            if size is None:
                raise StdtrtError(
                    f"the pipe on {name} is not y4m: give the size of its raw rgb24 frames with --size WxH "
                    f"(and --fps), or send y4m (ffmpeg ... -f yuv4mpegpipe -)"
                )
            self.width, self.height = size
            self.rate = Fraction(fps).limit_denominator(1001)
            self.frame_bytes = self.width * self.height * 3
        self.time_base = 1 / self.rate

    def _read(self, n: int) -> bytes:
        chunks, got = [], 0
        while got < n:
            chunk = self.stream.read(n - got)
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def _picture(self) -> np.ndarray | None:
        """The next frame as RGB at its own size; None at a clean end."""
        if self.y4m:
            marker = self.stream.readline()
            if not marker:
                return None
            if not marker.startswith(b"FRAME"):
                raise SourceEnded(
                    f"the y4m stream on {self.name} is corrupt: {marker[:20]!r} where a FRAME was"
                )
        data = self._read(self.frame_bytes)
        if not data and not self.y4m:
            return None
        if len(data) < self.frame_bytes:
            raise SourceEnded(
                f"the pipe on {self.name} ended inside a frame ({len(data)} of {self.frame_bytes} bytes): the "
                f"frames before it were kept"
            )
        if not self.y4m:
            return np.frombuffer(data, np.uint8).reshape(self.height, self.width, 3)
        import av

        yuv = np.frombuffer(data, np.uint8).reshape(self.height * 3 // 2, self.width)
        return av.VideoFrame.from_ndarray(yuv, format="yuv420p").to_ndarray(format="rgb24")

    def frames(self, width: int, height: int) -> Iterator[Captured]:
        index = 0
        while (rgb := self._picture()) is not None:
            captured = time.perf_counter()
            yield Captured(letterbox(rgb, width, height), index, captured, index)
            index += 1


# -- files, cameras, URLs (PyAV) ----------------------------------------------------------------------------
class FileSource(Source):
    """A video file, read as stylize-video reads it (upright, its colours, fitted into the working size);
    with --realtime played at its own timestamps (clocked: the newest frame wins)."""

    def __init__(self, path: str, realtime: bool):
        self.info = video.probe(path)
        self.name, self.clocked = str(path), realtime
        self.width, self.height = self.info.width, self.info.height
        self.rate, self.time_base = self.info.rate, self.info.time_base

    def frames(self, width: int, height: int) -> Iterator[Captured]:
        start = first = None
        for index, (rgb, pts) in enumerate(video.read_frames(self.info, width, height)):
            if self.clocked:
                t = float(pts * self.time_base)
                if start is None:
                    start, first = time.perf_counter(), t
                wait = start + (t - first) - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
            yield Captured(rgb, pts, time.perf_counter(), index)


def _short(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


def no_protocol(name: str) -> str:
    """The line for a URL scheme the FFmpeg inside PyAV was built without (the PyPI wheels have no srt)."""
    scheme = name.split("://", 1)[0]
    return (
        f"{name}: the FFmpeg inside PyAV has no {scheme}:// protocol (PyPI's av wheels are built without "
        f"SRT); use udp:// or rtsp://, or a PyAV built against an FFmpeg with it"
    )


class StreamSource(Source):
    """A V4L2 camera or a URL, decoded by PyAV and converted as files are (io/video's Converter). A URL that
    drops (an error, or no frame within --timeout) is reopened with back-off, said each time; after
    --reconnects failed tries the run stops cleanly with one line."""

    clocked = True

    def __init__(self, name: str, timeout: float, reconnects: int):
        self.name, self.timeout, self.reconnects = name, timeout, reconnects
        self.camera = not is_url(name)
        if self.camera:
            if not Path(name).exists():
                raise StdtrtError(f"camera {name} does not exist (`ls /dev/video*` lists the cameras here)")
            if not os.access(name, os.R_OK):
                raise StdtrtError(
                    f"camera {name} cannot be opened: no permission (add yourself to the video group)"
                )
        self.container = self._open()
        stream = self.container.streams.video[0]
        ctx = stream.codec_context
        self.width, self.height = ctx.width, ctx.height
        self.rate = Fraction(stream.average_rate or stream.guessed_rate or 30)
        self.time_base = Fraction(stream.time_base or Fraction(1, 90000))

    def _open(self):
        import av

        what = "camera" if self.camera else "URL"
        # no buffering, and at most 1 s of probing before the first frame (FFmpeg's default is 5 s)
        options = {
            "fflags": "nobuffer",
            "flags": "low_delay",
            "analyzeduration": "1000000",
            "probesize": "1000000",
        }
        try:
            container = av.open(
                self.name, format="v4l2" if self.camera else None, options=options,
                timeout=(self.timeout, self.timeout),
            )  # fmt: skip
        except av.FFmpegError as exc:
            if isinstance(exc, av.error.ProtocolNotFoundError):
                raise StdtrtError(no_protocol(self.name)) from None
            if getattr(exc, "errno", None) == errno.EBUSY:
                raise StdtrtError(f"camera {self.name} is busy: another program is using it") from None
            if isinstance(exc, av.ExitError) or getattr(exc, "errno", None) in (errno.ETIMEDOUT, errno.EIO):
                raise StdtrtError(f"{what} {self.name} did not answer within {self.timeout:g} s") from None
            raise StdtrtError(f"cannot open {what} {self.name}: {_short(exc)}") from None
        if not container.streams.video:
            container.close()
            raise StdtrtError(f"{what} {self.name} has no video stream")
        return container

    def _info(self, stream) -> video.VideoInfo:
        return video.VideoInfo(
            path=Path(self.name), width=self.width, height=self.height, rate=self.rate,
            time_base=self.time_base, frames=0, has_audio=False, audio_codec=None, sample_aspect_ratio=None,
        )  # fmt: skip

    def frames(self, width: int, height: int) -> Iterator[Captured]:
        import av

        from stdtrt.io.video.read import Converter

        index, tries = 0, 0
        while True:
            reason = "it did not open"
            if self.container is not None:
                stream = self.container.streams.video[0]
                stream.thread_type = "AUTO"
                convert = Converter(self._info(stream), width, height, None)
                reason = "it ended"
                try:
                    for frame in self.container.decode(stream):
                        captured = time.perf_counter()
                        pts = int(frame.pts if frame.pts is not None else index)
                        yield Captured(convert(frame, index, pts), pts, captured, index)
                        index, tries = index + 1, 0
                except av.FFmpegError as exc:
                    reason = (
                        f"no frame for {self.timeout:g} s" if isinstance(exc, av.ExitError) else _short(exc)
                    )
                self.close()
            if self.reconnects == 0:
                log.warning("source %s stopped (%s): stopping", self.name, reason)
                return
            if tries >= self.reconnects:
                raise SourceEnded(
                    f"source {self.name} dropped ({reason}) and did not come back after {tries} tries"
                )
            wait = min(8, 2**tries)
            tries += 1
            log.warning("source %s dropped (%s): reconnecting in %d s (try %d of %d)",
                        self.name, reason, wait, tries, self.reconnects)  # fmt: skip
            time.sleep(wait)
            try:
                self.container = self._open()
            except StdtrtError as exc:
                log.warning("%s", exc)

    def close(self) -> None:
        if getattr(self, "container", None) is not None:
            self.container.close()
            self.container = None


def open_source(cfg, web=None) -> Source:
    """The source --source names (`web`: the page's webcam, which `web` (the live page) provides)."""
    name = cfg.source
    if name == "web":
        if web is None:
            raise StdtrtError("--source web is the page's webcam: it needs the page (--sink web)")
        return web.source()
    if name == "-":
        return PipeSource(sys.stdin.buffer, cfg.frame_size() if cfg.size else None, cfg.fps, cfg.realtime)
    if is_url(name) or name.startswith("/dev/video"):
        return StreamSource(name, cfg.timeout, cfg.reconnects)
    return FileSource(name, cfg.realtime)
