"""Writing a stylized video: RGB frames encoded (H.264, or VP9 for .webm) at the input's frame rate, time
base and displayed size, tagged with the colour matrix and range they were written in, every audio and
subtitle stream of the input muxed alongside (io/video/tracks.py), to a temporary name that the caller
renames when complete (io/atomic.py)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from stdtrt.errors import StdtrtError
from stdtrt.io.atomic import atomic_path, check_writable
from stdtrt.io.images import fit_box, letterbox
from stdtrt.io.video.containers import CONTAINERS, container_for
from stdtrt.io.video.probe import VideoInfo
from stdtrt.io.video.read import FrameSizes, interpolation
from stdtrt.io.video.tracks import Tracks

# What the output's pixels are: RGB converted to YUV with the BT.709 matrix in limited range (what players
# assume for video without tags, and what they are tagged with); the primaries and transfer are the
# input's (the pixels keep them), BT.709 when it says none.
_BT709, _UNSPECIFIED, _LIMITED = 1, 2, 1


def output_size(info: VideoInfo, pad_odd: bool = False) -> tuple[int, int]:
    """The output video's size: the input's (as displayed). H.264 and VP9 with 4:2:0 colour need an even
    width and height: an odd side is refused, or with `pad_odd` written one pixel larger (the stylized
    frame is resized to it, as it is to any output size)."""
    w, h = info.width, info.height
    if not (w % 2 or h % 2):
        return w, h
    if not pad_odd:
        raise StdtrtError(
            f"{info.path} is {w}x{h}: H.264/VP9 output with 4:2:0 colour needs an even width and height; pass "
            f"--pad-odd to write it at {w + w % 2}x{h + h % 2}, or crop or scale the input first"
        )
    return w + w % 2, h + h % 2


def _tag_colour(ctx, info: VideoInfo | None) -> None:
    colour = (info.colour if info is not None else None) or {}
    ctx.colorspace, ctx.color_range = _BT709, _LIMITED
    for key in ("color_primaries", "color_trc"):
        value = colour.get(key, _UNSPECIFIED)
        setattr(ctx, key, value if value not in (0, _UNSPECIFIED) else _BT709)


def _to_yuv(frame, pix_fmt: str, size: tuple[int, int] | None = None):
    """RGB -> the output's pixel format in the colour it is tagged with, resized in the same swscale call."""
    scale = {}
    if size is not None and (frame.width, frame.height) != size:
        scale = {"width": size[0], "height": size[1],
                 "interpolation": interpolation((frame.width, frame.height), size).upper()}  # fmt: skip
    return frame.reformat(format=pix_fmt, dst_colorspace="ITU709", dst_color_range="MPEG", **scale)


class VideoWriter:
    """Encode RGB frames to `tmp_path`, muxing every audio and subtitle stream of the input as it goes.
    Packets are interleaved up to each video frame's time, so memory stays bounded. With `sizes` (the
    reader's FrameSizes), a frame fitted into the working size from a picture of another size or aspect
    is taken back out of its bars and fitted into the output size the same way."""

    def __init__(
        self,
        tmp_path: Path,
        final_suffix: str,
        info: VideoInfo,
        crf: int = 18,
        pad_odd: bool = False,
        sizes: FrameSizes | None = None,
        container=None,
        live: bool = False,
    ):
        """`container`: a row of containers.py for an output that is not a file of a known suffix (a live
        URL); `live`: encode for latency (x264 ultrafast, zerolatency: no frame waits for later ones)."""
        self.container = container or container_for(final_suffix)
        self.size = output_size(info, pad_odd)
        self.info, self.suffix, self.sizes = info, final_suffix.lower(), sizes
        self.frames = 0
        self.out = av.open(str(tmp_path), "w", format=self.container.muxer, timeout=10 if live else None)
        try:
            self.video = self.out.add_stream(self.container.video, rate=info.rate)
            self.video.width, self.video.height = self.size
            self.video.pix_fmt = self.container.pix_fmt
            self.video.time_base = info.time_base
            ctx = self.video.codec_context
            ctx.time_base = info.time_base
            _tag_colour(ctx, info)
            if info.sample_aspect_ratio:
                ctx.sample_aspect_ratio = info.sample_aspect_ratio
            opts = {"crf": str(crf)}
            if self.container.video == "libx264":
                opts["preset"] = "veryfast"
                if live:  # a keyframe every second: a viewer who joins late waits at most that long
                    keyint = str(max(1, round(float(info.rate))))
                    opts.update({"preset": "ultrafast", "tune": "zerolatency", "g": keyint})
            else:
                opts.update({"b": "0", "row-mt": "1", "deadline": "realtime", "cpu-used": "8"})
            self.video.options = opts
            self.tracks = Tracks(info.path, self.out, self.container, self.suffix)
        except BaseException:
            self.out.close()
            raise

    @property
    def dropped(self) -> list[str]:
        return self.tracks.dropped

    def audio_summary(self) -> str:
        return self.tracks.audio_summary()

    def _back(self, rgb: np.ndarray, pts: int) -> np.ndarray:
        """A working-size frame as the picture it came from (out of the bars it was fitted between), fitted
        into the output size when its source was of another size than the video's."""
        if self.sizes is None:
            return rgb
        source = self.sizes.source(pts)
        x, y, w, h = fit_box(source, (rgb.shape[1], rgb.shape[0]))
        content = rgb[y : y + h, x : x + w]  # the whole frame unless it was fitted between bars
        if source == self.sizes.nominal:
            return content  # resized to the output size by the encoder's conversion
        return letterbox(np.ascontiguousarray(content), *self.size)

    def write(self, rgb: np.ndarray, pts: int) -> None:
        """Encode one RGB uint8 frame at `pts` (in the input's time base), resized to the output's size and
        converted to its pixel format in one swscale call."""
        rgb = self._back(rgb, pts)
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame.pts = pts
        frame.time_base = self.info.time_base
        self.tracks.mux_until(float(pts * self.info.time_base) + 0.5)
        self.out.mux(self.video.encode(_to_yuv(frame, self.video.pix_fmt, self.size)))
        self.frames += 1

    def close(self) -> None:
        try:
            self.out.mux(self.video.encode(None))
            self.tracks.mux_until(None)
        finally:
            self.out.close()
            self.tracks.close()

    def abort(self) -> None:
        with contextlib.suppress(Exception):  # the file is being thrown away
            self.out.close()
        self.tracks.close()


def check_output(input_path: Path, output_path: Path) -> None:
    """Refuse an output equal to the input, an unsupported extension or an unwritable folder."""
    if output_path.resolve() == input_path.resolve():
        raise StdtrtError(f"output {output_path} is the input video; choose another output path")
    container_for(output_path)
    check_writable(output_path)


def write_video(
    path: str | Path,
    frames: Iterator[np.ndarray],
    rate: Fraction,
    audio: np.ndarray | None = None,
    sample_rate: int = 44100,
    crf: int = 18,
) -> None:
    """Write RGB frames (and optional mono float32 audio in [-1, 1]) to a new H.264/AAC video.

    For making inputs (the demo video, test clips); atomic like every output.
    """

    path = Path(path)
    with atomic_path(path) as tmp:
        out = av.open(str(tmp), "w", format=container_for(path).muxer)
        try:
            video = None
            for i, rgb in enumerate(frames):
                if video is None:
                    video = out.add_stream("libx264", rate=rate)
                    video.height, video.width = rgb.shape[:2]
                    video.pix_fmt = "yuv420p"
                    video.options = {"crf": str(crf), "preset": "veryfast"}
                    _tag_colour(video.codec_context, None)
                    if audio is not None:
                        astream = out.add_stream("aac", rate=sample_rate)
                        astream.layout = "mono"
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
                frame.pts = i
                frame.time_base = 1 / Fraction(rate)
                out.mux(video.encode(_to_yuv(frame, "yuv420p")))
            if video is None:
                raise ValueError("no frames to write")
            out.mux(video.encode(None))
            if audio is not None:
                samples = np.asarray(audio, dtype=np.float32).reshape(1, -1)
                size = astream.codec_context.frame_size or 1024
                for start in range(0, samples.shape[1], size):
                    chunk = np.ascontiguousarray(samples[:, start : start + size])
                    frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
                    frame.sample_rate = sample_rate
                    frame.pts = start
                    out.mux(astream.encode(frame))
                out.mux(astream.encode(None))
        finally:
            out.close()


__all__ = ["CONTAINERS", "VideoWriter", "check_output", "output_size", "write_video"]
