"""Reading a video's frames: streamed in presentation order (never the whole video in memory), upright,
converted to RGB as ffmpeg itself converts (libavfilter's scale filter: the stream's own colour matrix,
range and chroma siting) and resized in the same call, every frame by the same rule even when the
stream changes size midway; truncation judged by decode errors and the duration the file shows.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from fractions import Fraction

import av
import numpy as np

from stdtrt.errors import StdtrtError
from stdtrt.io.images import fit_box, place
from stdtrt.io.video.probe import VideoInfo, open_video, short

log = logging.getLogger(__name__)


def interpolation(src: tuple[int, int], dst: tuple[int, int]) -> str:
    """swscale's filter for a resize: area averaging to shrink, bicubic to enlarge (io/images.resize's rule)."""
    return "area" if dst[0] * dst[1] < src[0] * src[1] else "bicubic"


class FrameSizes:
    """The displayed size of each frame's source picture, for the way back: the video's own (its first
    frames') unless the stream changed size, when the reader records the frame's and the writer takes it."""

    def __init__(self, info: VideoInfo):
        self.nominal = (info.width, info.height)
        self._other: dict[int, tuple[int, int]] = {}

    def record(self, pts: int, size: tuple[int, int]) -> None:
        self._other[pts] = size

    def source(self, pts: int) -> tuple[int, int]:
        return self._other.pop(pts, self.nominal)


class Converter:
    """Decoded frames -> upright RGB uint8 (height, width, 3): each picture fitted into the working size by
    io/images.fit_box (stretched when the aspect agrees, else centred between black bars). One filter
    graph per input format and size, so a stream that changes size midway gets a graph of its own."""

    def __init__(self, info: VideoInfo, width: int, height: int, sizes: FrameSizes | None):
        self.info, self.size, self.sizes = info, (width, height), sizes
        self.graphs: dict[tuple, tuple] = {}
        self.other_size_seen = False

    def _graph(self, frame) -> tuple:
        key = (frame.width, frame.height, frame.format.name)
        if key not in self.graphs:
            shown = self.info.orientation.turn((frame.width, frame.height))
            box = fit_box(shown, self.size)
            coded = self.info.orientation.turn(box[2:])  # resized in the coded orientation, then turned
            g = av.filter.Graph()
            src = g.add_buffer(width=frame.width, height=frame.height, format=frame.format,
                               time_base=self.info.time_base)  # fmt: skip
            flags = interpolation((frame.width, frame.height), coded)
            scale = g.add("scale", f"w={coded[0]}:h={coded[1]}:flags={flags}")
            rgb = g.add("format", "pix_fmts=rgb24")
            sink = g.add("buffersink")
            src.link_to(scale)
            scale.link_to(rgb)
            rgb.link_to(sink)
            g.configure()
            self.graphs[key] = (g, shown, box)
        return self.graphs[key]

    def __call__(self, frame, index: int, pts: int) -> np.ndarray:
        graph, shown, box = self._graph(frame)
        if shown != (self.info.width, self.info.height):
            if not self.other_size_seen:
                log.warning(
                    "%s changes size at frame %d (%dx%d, its first frames %dx%d): such frames are fitted into "
                    "the working size with their aspect kept and written in the video's size between black "
                    "bars", self.info.path, index, *shown, self.info.width, self.info.height,
                )  # fmt: skip
                self.other_size_seen = True
            if self.sizes is not None:
                self.sizes.record(pts, shown)
        graph.push(frame)
        rgb = self.info.orientation.apply(graph.pull().to_ndarray())
        if box[2:] != self.size:
            rgb = place(rgb, box[:2], *self.size)
        return rgb


def read_frames(
    info: VideoInfo, width: int | None = None, height: int | None = None, sizes: FrameSizes | None = None
) -> Iterator[tuple[np.ndarray, int]]:
    """Yield (RGB uint8 frame (height, width, 3), pts in info.time_base), in presentation order, upright
    (the display matrix applied: the output is written upright, without one), at (width, height) (default:
    the displayed size). A frame of another size than the video's first ones is fitted with its aspect
    kept (`sizes`, when given, records its size for the writer's way back).

    A decode error midway, or a video whose frames end well before the duration it shows, raises a
    StdtrtError naming where it stopped (a trimmed file whose header counts more samples than its edit list
    shows is not truncated).
    """
    container = open_video(info.path)
    count, last = 0, None
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        step = max(1, round(1 / (info.rate * info.time_base))) if info.rate else 1
        convert = Converter(info, width or info.width, height or info.height, sizes)
        try:
            for frame in container.decode(stream):
                pts = int(frame.pts if frame.pts is not None else count * step)
                yield convert(frame, count, pts), pts
                count, last = count + 1, pts
        except av.FFmpegError as exc:
            raise StdtrtError(
                f"{info.path} is corrupt: decoding failed after {count} frames ({short(exc)})"
            ) from None
    finally:
        container.close()
    if count == 0:
        raise StdtrtError(f"{info.path} has no decodable video frames")
    _check_complete(info, count, last + step)


def _check_complete(info: VideoInfo, count: int, end_pts: int) -> None:
    """Frames that end more than two frame intervals (and 2 %) before the video's shown duration mean a
    cut file; without a duration in the stream there is nothing to compare (decode errors still say)."""
    if not info.duration:
        return
    shown = info.duration
    decoded = Fraction(end_pts) * info.time_base - info.start
    slack = max(2 / info.rate if info.rate else Fraction(1, 10), shown * Fraction(2, 100))
    if decoded < shown - slack:
        raise StdtrtError(
            f"{info.path} is truncated: its video shows {float(shown):.2f} s but its frames end at "
            f"{float(decoded):.2f} s ({count} frames could be decoded)"
        )
