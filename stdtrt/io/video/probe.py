"""What stdtrt needs to know about an input video before reading it: the displayed size (its display
matrix applied: rotations and mirrors), frame rate, time base, the duration it shows, bit depth, alpha,
colour tags and its audio; a clear line when the file is not a video."""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from stdtrt.errors import StdtrtError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Orientation:
    """How a decoded frame is turned upright, as its display matrix says (what players apply): a
    transpose, then a flip of the rows and/or the columns. The eight axis-aligned cases: rotations by
    multiples of 90 degrees, mirrors, and transposes (a rotation with a mirror)."""

    swap: bool = False  # rows and columns exchanged (a quarter turn, or a transpose)
    flip_rows: bool = False
    flip_cols: bool = False

    @classmethod
    def from_matrix(cls, m: tuple[int, ...]) -> Orientation | None:
        """From FFmpeg's display matrix (nine int32, [a b u; c d v; x y w], ISO/IEC 14496-12's tkhd
        layout: a point (x, y) of the coded frame, y pointing down, is shown at (a x + c y, b x + d y) up to
        a translation). None when the matrix is not axis-aligned (an arbitrary angle)."""
        a, b, c, d = m[0], m[1], m[3], m[4]
        if a == 0 and d == 0 and b != 0 and c != 0:  # x' depends on y, y' on x: rows and columns swap
            return cls(swap=True, flip_rows=b < 0, flip_cols=c < 0)
        if b == 0 and c == 0 and a != 0 and d != 0:
            return cls(swap=False, flip_rows=d < 0, flip_cols=a < 0)
        return None

    def apply(self, rgb: np.ndarray) -> np.ndarray:
        """A decoded frame (H, W, C) turned upright, contiguous."""
        if self == Orientation():
            return rgb
        out = rgb.transpose(1, 0, 2) if self.swap else rgb
        if self.flip_rows:
            out = out[::-1]
        if self.flip_cols:
            out = out[:, ::-1]
        return np.ascontiguousarray(out)

    def turn(self, size: tuple[int, int]) -> tuple[int, int]:
        """A (width, height) between the coded and the displayed orientation (either way)."""
        return (size[1], size[0]) if self.swap else size

    def describe(self) -> str:
        if self == Orientation():
            return "upright"
        names = {
            (True, False, True): "turned 90 degrees clockwise",
            (True, True, False): "turned 90 degrees counter-clockwise",
            (False, True, True): "turned 180 degrees",
            (False, False, True): "mirrored left to right",
            (False, True, False): "mirrored top to bottom",
            (True, False, False): "transposed",
            (True, True, True): "transposed across the other diagonal",
        }
        return names[(self.swap, self.flip_rows, self.flip_cols)]


@dataclass(frozen=True)
class VideoInfo:
    path: Path
    width: (
        int  # as displayed: the coded size turned by `orientation` (a portrait phone clip is portrait here)
    )
    height: int
    rate: Fraction  # average frame rate
    time_base: Fraction
    frames: (
        int  # expected frame count: the shown duration times the rate, else the header's count; 0: unknown
    )
    has_audio: bool
    audio_codec: str | None
    sample_aspect_ratio: Fraction | None
    orientation: Orientation = Orientation()
    duration: Fraction | None = None  # seconds the video stream shows (its edit list applied); None: unknown
    start: Fraction = Fraction(0)  # seconds of the stream's first timestamp
    pix_fmt: str = "yuv420p"  # the decoded frames' pixel format
    bits: int = 8  # bits per colour component
    alpha: bool = False  # the frames carry an alpha channel (dropped: the output has none)
    colour: dict | None = None  # {"colorspace", "color_range", "color_primaries", "color_trc"} of frame 1


def open_video(path: Path):
    """The opened container, or one line saying why a path is not a video."""
    if not path.exists():
        raise StdtrtError(f"input video {path} does not exist")
    if path.is_dir():
        raise StdtrtError(f"input video {path} is a folder")
    if path.stat().st_size == 0:
        raise StdtrtError(f"input video {path} is empty (0 bytes)")
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise StdtrtError(f"{path} is not a readable video ({short(exc)})") from None
    if not container.streams.video:
        container.close()
        raise StdtrtError(f"{path} has no video stream")
    return container


def short(exc: Exception) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


def probe(path: str | Path) -> VideoInfo:
    """What stdtrt needs to know about an input video, with a clear error when it is not one."""
    path = Path(path)
    container = open_video(path)
    try:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or Fraction(25)
        audio = container.streams.audio[0] if container.streams.audio else None
        sar = stream.sample_aspect_ratio
        width, height = stream.codec_context.width, stream.codec_context.height
        if not width or not height:
            raise StdtrtError(f"{path}: the video stream has no size (corrupt header?)")
        first = _first_frame(container, stream)
        orientation = _orientation(first, path)
        width, height = orientation.turn((width, height))
        if orientation.swap and sar:
            sar = 1 / Fraction(sar)
        time_base = Fraction(stream.time_base or Fraction(1, 90000))
        duration = Fraction(stream.duration) * time_base if stream.duration else None
        header = int(stream.frames or 0)
        frames = round(duration * Fraction(rate)) if duration else header
        fmt = first.format if first is not None else stream.codec_context.format
        return VideoInfo(
            path=path,
            width=width,
            height=height,
            orientation=orientation,
            rate=Fraction(rate),
            time_base=time_base,
            frames=min(frames, header) if header and frames else frames,
            has_audio=audio is not None,
            audio_codec=audio.codec_context.name if audio is not None else None,
            sample_aspect_ratio=Fraction(sar) if sar else None,
            duration=duration,
            start=Fraction(stream.start_time or 0) * time_base,
            pix_fmt=fmt.name if fmt is not None else "yuv420p",
            bits=max((c.bits for c in fmt.components), default=8) if fmt is not None else 8,
            alpha=any(c.is_alpha for c in fmt.components) if fmt is not None else False,
            colour=_colour(first),
        )
    finally:
        container.close()


def _first_frame(container, stream):
    try:
        return next(container.decode(stream), None)
    except av.FFmpegError:
        return None  # read_frames reports the corrupt stream


def _orientation(frame, path: Path) -> Orientation:
    """The first frame's display matrix (FFmpeg hands the stream's to each decoded frame) as an
    Orientation; a matrix that is not axis-aligned is ignored with a warning."""
    matrix = None
    sides = frame.side_data if frame is not None else ()
    # PyAV 18.1 made side_data a mapping of the types to the SideData (iterating it gives the types)
    for side in sides.values() if hasattr(sides, "values") else sides:
        if side.type.name == "DISPLAYMATRIX" and len(bytes(side)) >= 36:
            matrix = struct.unpack("<9i", bytes(side)[:36])
    if matrix is None:
        return Orientation()
    found = Orientation.from_matrix(matrix)
    if found is None:
        log.warning("%s: its display matrix turns it by %.0f degrees, not a multiple of 90; ignored", path,
                    frame.rotation)  # fmt: skip
        return Orientation()
    return found


def _colour(frame) -> dict | None:
    if frame is None:
        return None
    return {k: int(getattr(frame, k)) for k in ("colorspace", "color_range", "color_primaries", "color_trc")}


def conversion_notes(info: VideoInfo) -> list[str]:
    """What writing this input as 8-bit 4:2:0 H.264/VP9 without alpha loses, one line each."""
    notes = []
    if info.bits > 8:
        notes.append(f"{info.path} is {info.bits}-bit ({info.pix_fmt}); the output is 8-bit (yuv420p)")
    if info.alpha:
        notes.append(f"{info.path} has an alpha channel ({info.pix_fmt}); the output has none (dropped)")
    return notes
