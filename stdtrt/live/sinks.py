"""Where stylized live frames go: a pipe on stdout (y4m or raw rgb24), a file (io/video's writer, written
atomically), a URL PyAV muxes (MPEG-TS over UDP or SRT, RTSP, RTMP), a virtual camera (pyvirtualcam), or
the page (live/feeds.py).

A sink is opened with the source (its size and clock) and takes (working-size frame, Captured): it writes
the picture at the source's displayed size (out of the bars it was fitted between) and keeps the source's
timestamps, so a recording or a stream plays at the source's clock (dropped frames leave gaps, not a
faster video).
"""

from __future__ import annotations

import contextlib
import logging
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np

from stdtrt.errors import StdtrtError
from stdtrt.io import video
from stdtrt.io.atomic import atomic_path
from stdtrt.io.images import unletterbox
from stdtrt.live.realtime import Captured
from stdtrt.live.sources import is_url, no_protocol

log = logging.getLogger(__name__)


class SinkClosed(Exception):
    """The reader went away (a closed pipe, a viewer that left for good): the run stops cleanly."""


class Sink:
    def write(self, rgb: np.ndarray, frame: Captured) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """The output complete (a file renamed into place)."""

    def abort(self) -> None:
        """The run failed: nothing half-written left under the output's name."""
        self.close()


def _info(source) -> video.VideoInfo:
    """The VideoInfo a writer needs, for live frames: no audio or subtitle tracks go beside them."""
    return video.VideoInfo(
        path=None, width=source.width + source.width % 2,
        height=source.height + source.height % 2, rate=Fraction(source.rate), time_base=Fraction(source.time_base),
        frames=0, has_audio=False, audio_codec=None, sample_aspect_ratio=None,
    )  # fmt: skip


class PipeSink(Sink):
    """Frames on stdout at the source's size: y4m (4:2:0, the header says size and rate) or raw rgb24."""

    def __init__(self, stream, source, fmt: str = "y4m"):
        self.stream, self.fmt = stream, fmt
        self.size = (source.width + source.width % 2, source.height + source.height % 2) if fmt == "y4m" else (
            source.width, source.height)  # fmt: skip
        if fmt == "y4m":
            rate = Fraction(source.rate).limit_denominator(1001)
            w, h = self.size
            self._put(f"YUV4MPEG2 W{w} H{h} F{rate.numerator}:{rate.denominator} Ip A1:1 C420jpeg\n".encode())

    def _put(self, data: bytes) -> None:
        try:
            self.stream.write(data)
            self.stream.flush()
        except (BrokenPipeError, ValueError):  # the reader closed its end
            raise SinkClosed("the reader of stdout closed the pipe") from None

    def write(self, rgb: np.ndarray, frame: Captured) -> None:
        rgb = unletterbox(rgb, self.size)
        if self.fmt == "rgb24":
            self._put(np.ascontiguousarray(rgb).tobytes())
            return
        import av

        yuv = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24").reformat(format="yuv420p")
        self._put(b"FRAME\n" + np.ascontiguousarray(yuv.to_ndarray()).tobytes())

    def close(self) -> None:
        with contextlib.suppress(BrokenPipeError, ValueError):
            self.stream.flush()


class WriterSink(Sink):
    """A file (atomically: under a temporary name until complete) or a URL (live encoding: x264 ultrafast
    and zerolatency), through io/video's VideoWriter, at the source's size and timestamps."""

    def __init__(self, target: str, source, crf: int, realtime: bool):
        info = _info(source)
        self.url = is_url(target)
        self.sizes = video.FrameSizes(info)
        self.info = info
        self._atomic = None
        if self.url:
            try:
                self.writer = video.VideoWriter(
                    target, ".ts", info, crf=crf, sizes=self.sizes, container=video.live_container(target), live=True
                )  # fmt: skip
            except Exception as exc:  # PyAV's errors for an unreachable server
                if type(exc).__name__ == "ProtocolNotFoundError":
                    raise StdtrtError(no_protocol(target)) from None
                raise StdtrtError(
                    f"cannot open the sink {target}: {str(exc).splitlines()[0][:200]}"
                ) from None
        else:
            path = Path(target)
            video.container_for(path)
            self._atomic = atomic_path(path)
            tmp = self._atomic.__enter__()
            self.path = path
            self.writer = video.VideoWriter(tmp, path.suffix, info, crf=crf, sizes=self.sizes, live=realtime)
        self.last_pts = None

    def write(self, rgb: np.ndarray, frame: Captured) -> None:
        pts = frame.pts
        if self.last_pts is not None and pts <= self.last_pts:  # a source that restarted its clock
            pts = self.last_pts + 1
        self.last_pts = pts
        try:
            self.writer.write(rgb, pts)
        except Exception as exc:
            if self.url:
                raise SinkClosed(
                    f"the sink stopped taking frames: {str(exc).splitlines()[0][:200]}"
                ) from None
            raise

    def close(self) -> None:
        try:
            self.writer.close()
        except Exception:
            if not self.url:
                raise
        if self._atomic is not None:
            self._atomic.__exit__(None, None, None)

    def abort(self) -> None:
        self.writer.abort()
        if self._atomic is not None:
            with contextlib.suppress(Exception):
                self._atomic.__exit__(RuntimeError, RuntimeError("aborted"), None)


class VirtualCamSink(Sink):
    """A virtual camera other programs see (pyvirtualcam: v4l2loopback on Linux, OBS's on Windows and macOS)."""

    def __init__(self, source, width: int, height: int):
        try:
            import pyvirtualcam
        except ImportError:
            raise StdtrtError(
                "--sink virtualcam needs pyvirtualcam: pip install 'stdtrt[live]' pyvirtualcam (and on Linux "
                "the v4l2loopback module)"
            ) from None
        try:
            self.cam = pyvirtualcam.Camera(width, height, float(source.rate))
        except RuntimeError as exc:
            raise StdtrtError(f"cannot start the virtual camera: {exc}") from None
        log.info("virtual camera %s", self.cam.device)

    def write(self, rgb: np.ndarray, frame: Captured) -> None:
        self.cam.send(np.ascontiguousarray(rgb))

    def close(self) -> None:
        self.cam.close()


def open_sink(cfg, source, width: int, height: int, web=None) -> Sink:
    """The sink --sink names (`web`: the page, which `web` (the live page) provides)."""
    name = cfg.sink
    if name == "web":
        return web.sink()
    if name == "-":
        return PipeSink(sys.stdout.buffer, source, cfg.sink_format)
    if name == "virtualcam":
        return VirtualCamSink(source, width, height)
    return WriterSink(name, source, cfg.stylize.crf, cfg.realtime or source.clocked)
