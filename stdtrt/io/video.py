"""Video in and out with PyAV: frames are streamed (never the whole video in memory), the frame rate, the
timestamps, the displayed size (a display rotation applied) and every audio and subtitle stream of the
input are kept, and the output is written to a temporary name and renamed only when complete.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from stdtrt.errors import StdtrtError
from stdtrt.io.atomic import atomic_path, check_writable

log = logging.getLogger(__name__)

# Input videos stdtrt reads (distill data folders; stylize-video reads whatever PyAV opens).
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")

# Output container (by extension) -> (video encoder, pixel format, audio encoder when the track must be
# re-encoded).
CONTAINERS = {
    ".mp4": ("libx264", "yuv420p", "aac"),
    ".m4v": ("libx264", "yuv420p", "aac"),
    ".mov": ("libx264", "yuv420p", "aac"),
    ".mkv": ("libx264", "yuv420p", "aac"),
    ".webm": ("libvpx-vp9", "yuv420p", "libopus"),
}


@dataclass(frozen=True)
class VideoInfo:
    path: Path
    width: int  # as displayed: the coded size turned by `rotation` (a portrait phone clip is portrait here)
    height: int
    rate: Fraction  # average frame rate
    time_base: Fraction
    frames: int  # from the container header; 0 when it does not say
    has_audio: bool
    audio_codec: str | None
    sample_aspect_ratio: Fraction | None
    rotation: int = 0  # display-matrix rotation, counter-clockwise degrees (0, 90, 180 or 270)


def _open(path: Path):
    if not path.exists():
        raise StdtrtError(f"input video {path} does not exist")
    if path.is_dir():
        raise StdtrtError(f"input video {path} is a folder")
    if path.stat().st_size == 0:
        raise StdtrtError(f"input video {path} is empty (0 bytes)")
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise StdtrtError(f"{path} is not a readable video ({_short(exc)})") from None
    if not container.streams.video:
        container.close()
        raise StdtrtError(f"{path} has no video stream")
    return container


def _short(exc: Exception) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


def probe(path: str | Path) -> VideoInfo:
    """What stdtrt needs to know about an input video, with a clear error when it is not one."""
    path = Path(path)
    container = _open(path)
    try:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or Fraction(25)
        audio = container.streams.audio[0] if container.streams.audio else None
        sar = stream.sample_aspect_ratio
        width, height = stream.codec_context.width, stream.codec_context.height
        if not width or not height:
            raise StdtrtError(f"{path}: the video stream has no size (corrupt header?)")
        rotation = _rotation(container, stream, path)
        if rotation in (90, 270):
            width, height = height, width
            sar = 1 / Fraction(sar) if sar else None
        return VideoInfo(
            path=path,
            width=width,
            height=height,
            rotation=rotation,
            rate=Fraction(rate),
            time_base=Fraction(stream.time_base or Fraction(1, 90000)),
            frames=int(stream.frames or 0),
            has_audio=audio is not None,
            audio_codec=audio.codec_context.name if audio is not None else None,
            sample_aspect_ratio=Fraction(sar) if sar else None,
        )
    finally:
        container.close()


def _rotation(container, stream, path: Path) -> int:
    """The display-matrix rotation of the first frame (FFmpeg hands the stream's to each decoded frame),
    counter-clockwise degrees in {0, 90, 180, 270}; another angle is ignored with a warning."""
    try:
        frame = next(container.decode(stream), None)
    except av.FFmpegError:
        return 0  # read_frames reports the corrupt stream
    angle = round(frame.rotation) % 360 if frame is not None and frame.rotation else 0
    if angle % 90:
        log.warning("%s: display rotation %s degrees is not a multiple of 90; ignored", path, angle)
        return 0
    return angle


def _upright(rgb: np.ndarray, rotation: int) -> np.ndarray:
    """A decoded frame turned as its display matrix says (counter-clockwise), contiguous."""
    return np.ascontiguousarray(np.rot90(rgb, rotation // 90)) if rotation else rgb


def _interpolation(src: tuple[int, int], dst: tuple[int, int]) -> str:
    """swscale's filter for a resize: area averaging to shrink, bicubic to enlarge (io/images.resize's rule)."""
    return "AREA" if dst[0] * dst[1] < src[0] * src[1] else "BICUBIC"


def read_frames(
    info: VideoInfo, width: int | None = None, height: int | None = None
) -> Iterator[tuple[np.ndarray, int]]:
    """Yield (RGB uint8 frame (height, width, 3), pts in info.time_base), in presentation order, upright (a
    display rotation applied: the output is written upright, without one); the colour conversion and the
    resize to (width, height) are one swscale call (default: the displayed size).

    A decode error midway, or a video that ends before the frame count its header announces, raises a
    StdtrtError naming the frame where it stopped.
    """
    container = _open(info.path)
    count = 0
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        step = max(1, round(1 / (info.rate * info.time_base))) if info.rate else 1
        size = (width or info.width, height or info.height)
        turned = info.rotation in (90, 270)  # swscale works in the coded orientation
        coded, src = (size[::-1], (info.height, info.width)) if turned else (size, (info.width, info.height))
        scale = {} if coded == src else {"width": coded[0], "height": coded[1]}
        if scale:
            scale["interpolation"] = _interpolation(src, coded)
        try:
            for frame in container.decode(stream):
                pts = frame.pts if frame.pts is not None else count * step
                yield _upright(frame.to_ndarray(format="rgb24", **scale), info.rotation), int(pts)
                count += 1
        except av.FFmpegError as exc:
            raise StdtrtError(
                f"{info.path} is corrupt: decoding failed after {count} frames ({_short(exc)})"
            ) from None
    finally:
        container.close()
    if count == 0:
        raise StdtrtError(f"{info.path} has no decodable video frames")
    if info.frames and count < info.frames:
        raise StdtrtError(
            f"{info.path} is truncated: it announces {info.frames} frames but only {count} could be decoded"
        )


# Audio codecs each output container takes as they are (copied packet by packet; any other is re-encoded
# to the container's own). MP4 and MOV take AAC only: Opus or MP3 copied into MP4 makes players report
# another frame rate and duration, and PCM in MP4 plays in few players (MOV takes PCM).
AUDIO_COPY = {
    ".mp4": {"aac"},
    ".m4v": {"aac"},
    ".mov": {"aac", "pcm_s16le", "pcm_s24le", "pcm_f32le"},
    ".mkv": {"aac", "mp3", "opus", "vorbis", "flac", "ac3", "eac3", "pcm_s16le", "pcm_s24le", "pcm_f32le"},
    ".webm": {"opus", "vorbis"},
}
# Subtitle codecs each output container takes (copied; others are dropped, said in one line).
SUBTITLE_COPY = {
    ".mp4": {"mov_text"},
    ".m4v": {"mov_text"},
    ".mov": {"mov_text"},
    ".mkv": {"subrip", "ass", "ssa", "webvtt", "dvd_subtitle", "hdmv_pgs_subtitle"},
    ".webm": {"webvtt"},
}

# Text subtitles convert between formats (their text and timing kept); bitmap ones (DVD, PGS) do not.
TEXT_SUBTITLES = {"subrip", "ass", "ssa", "webvtt", "mov_text", "text"}
SUBTITLE_CONVERT = {
    ".mp4": "mov_text",
    ".m4v": "mov_text",
    ".mov": "mov_text",
    ".mkv": "subrip",
    ".webm": "webvtt",
}
_MS = Fraction(1, 1000)


@dataclass
class _Track:
    """One audio or subtitle stream of the input on its way into the output: its own demuxer, so every
    track is read in step with the video and memory stays bounded."""

    kind: str  # "audio" or "subtitle"
    index: int  # in the input's streams of its kind
    codec: str
    copy: bool
    source: object  # the input container this track is demuxed from
    stream: object = None  # the output stream
    packets: Iterator | None = None
    pending: object = None


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


def _layout(ctx) -> str:
    """A channel layout an encoder accepts: the input's when it names one, else the usual layout for its
    channel count (PCM in Matroska often says only "2 channels")."""
    name = ctx.layout.name if ctx.layout else ""
    if name and "channels" not in name:
        return name
    return {1: "mono", 2: "stereo", 6: "5.1", 8: "7.1"}.get(ctx.channels, "stereo")


class VideoWriter:
    """Encode RGB frames to `tmp_path` (H.264, or VP9 for .webm), muxing every audio and subtitle stream
    of the input as it goes.

    Audio is copied packet by packet when the output container takes its codec (AUDIO_COPY), else
    re-encoded; subtitles are copied where the container takes their codec (SUBTITLE_COPY), else text ones
    are converted to the container's text format (SUBTITLE_CONVERT) and bitmap ones dropped with one line.
    Packets are interleaved up to each video frame's time, so memory stays bounded.
    """

    def __init__(
        self, tmp_path: Path, final_suffix: str, info: VideoInfo, crf: int = 18, pad_odd: bool = False
    ):
        suffix = final_suffix.lower()
        if suffix not in CONTAINERS:
            raise StdtrtError(
                f"output extension {final_suffix!r} not supported; use one of {', '.join(CONTAINERS)}"
            )
        self.size = output_size(info, pad_odd)
        vcodec, pix_fmt, self._acodec = CONTAINERS[suffix]
        self.info, self.suffix = info, suffix
        self.out = av.open(str(tmp_path), "w", format=_format_for(suffix))
        self.video = self.out.add_stream(vcodec, rate=info.rate)
        self.video.width, self.video.height, self.video.pix_fmt = *self.size, pix_fmt
        self.video.time_base = info.time_base
        self.video.codec_context.time_base = info.time_base
        if info.sample_aspect_ratio:
            self.video.codec_context.sample_aspect_ratio = info.sample_aspect_ratio
        opts = {"crf": str(crf)}
        if vcodec == "libx264":
            opts["preset"] = "veryfast"
        else:
            opts.update({"b": "0", "row-mt": "1", "deadline": "realtime", "cpu-used": "8"})
        self.video.options = opts
        self.frames = 0
        self.tracks: list[_Track] = []
        self.dropped: list[str] = []  # "subtitle stream 1 (subrip): .mp4 takes mov_text only"
        self._setup_tracks()

    def audio_summary(self) -> str:
        """none, copied, re-encoded, or both ("copied, re-encoded") over the audio tracks."""
        states = [("copied" if t.copy else "re-encoded") for t in self.tracks if t.kind == "audio"]
        return ", ".join(dict.fromkeys(states)) or "none"

    # -- audio and subtitles ----------------------------------------------------------------------------
    def _setup_tracks(self) -> None:
        with av.open(
            str(self.info.path)
        ) as probe_in:  # canonical codec names (mp3, not its decoder mp3float)
            audio = [s.codec_context.codec.canonical_name for s in probe_in.streams.audio]
            subs = [s.codec_context.codec.canonical_name for s in probe_in.streams.subtitles]
        for i, codec in enumerate(audio):
            self._add_audio(i, codec)
        for i, codec in enumerate(subs):
            if codec in SUBTITLE_COPY[self.suffix]:
                source = av.open(str(self.info.path))
                src = source.streams.subtitles[i]
                track = _Track("subtitle", i, codec, True, source, self.out.add_stream_from_template(src))
                track.packets = (p for p in source.demux(src) if p.dts is not None and p.size)
                self.tracks.append(track)
            elif codec in TEXT_SUBTITLES:
                self._add_converted_subtitle(i, codec)
            else:
                takes = ", ".join(sorted(SUBTITLE_COPY[self.suffix]))
                self.dropped.append(
                    f"subtitle stream {i} ({codec}): {self.suffix} takes {takes} only, and a bitmap subtitle "
                    f"converts to no text format"
                )
        for line in self.dropped:
            log.warning("dropped %s", line)

    def _add_converted_subtitle(self, i: int, codec: str) -> None:
        """A text subtitle the container does not take, converted to the one it does (SUBTITLE_CONVERT):
        each event decoded and encoded again, its text and times kept; the encoder opened here, so a
        failure is one dropped line, not a broken output."""
        target = SUBTITLE_CONVERT[self.suffix]
        source = av.open(str(self.info.path))
        src = source.streams.subtitles[i]
        try:
            if not src.codec_context.is_open:
                src.codec_context.open()  # its ASS header: what the text encoders need
            stream = self.out.add_stream(target)
            stream.codec_context.subtitle_header = src.codec_context.subtitle_header
            stream.codec_context.time_base = _MS
            stream.codec_context.open()
        except (av.FFmpegError, ValueError) as exc:
            source.close()
            self.dropped.append(
                f"subtitle stream {i} ({codec}): converting it to {target} failed ({_short(exc)})"
            )
            return
        track = _Track("subtitle", i, codec, False, source, stream)
        track.packets = self._converted_subtitles(src, stream)
        self.tracks.append(track)
        log.info("subtitle stream %d: converted from %s to %s", i, codec, target)

    def _converted_subtitles(self, src, out_stream):
        """Re-encode path of a text subtitle: output packets in milliseconds, each event's text and times."""
        ctx, enc = src.codec_context, out_stream.codec_context
        try:
            for packet in src.container.demux(src):
                if not packet.size or packet.pts is None:
                    continue
                events = ctx.decode2(packet)
                if events is None:
                    continue
                out = enc.encode_subtitle(events)
                start = packet.pts * packet.time_base
                length = (
                    packet.duration * packet.time_base if packet.duration else events.end_display_time * _MS
                )
                out.stream, out.time_base = out_stream, _MS
                out.pts = out.dts = int(round(start / _MS))
                out.duration = int(round(length / _MS))
                yield out
        except av.FFmpegError as exc:
            log.warning("subtitle stream %d: conversion stopped early: %s", src.index, _short(exc))

    def _add_audio(self, i: int, codec: str) -> None:
        source = av.open(str(self.info.path))
        src = source.streams.audio[i]
        track = _Track("audio", i, codec, codec in AUDIO_COPY[self.suffix], source)
        if track.copy:
            track.stream = self.out.add_stream_from_template(src)
            track.packets = (p for p in source.demux(src) if p.dts is not None and p.size)
        else:
            rate = src.codec_context.sample_rate or 48000
            rate = 48000 if self._acodec == "libopus" else rate
            track.stream = self.out.add_stream(self._acodec, rate=rate)
            track.stream.layout = _layout(src.codec_context)
            track.packets = self._decoded_audio(source, src, track.stream)
        self.tracks.append(track)
        log.info(
            "audio stream %d: %s (%s)", i, "copied" if track.copy else f"re-encoded to {self._acodec}", codec
        )

    def _decoded_audio(self, source, src, out_stream):
        """Re-encode path: yield output packets of one input audio stream in the output codec."""
        ctx = out_stream.codec_context
        resampler = av.AudioResampler(
            format=ctx.format.name if ctx.format else "fltp",
            layout=out_stream.layout,
            rate=ctx.sample_rate,
            frame_size=ctx.frame_size or 1024,
        )
        try:
            for frame in source.decode(src):
                frame.pts = None
                for f in resampler.resample(frame):
                    yield from out_stream.encode(f)
        except av.FFmpegError as exc:
            log.warning("audio decoding stopped early: %s", _short(exc))
        for f in resampler.resample(None):
            yield from out_stream.encode(f)
        yield from out_stream.encode(None)

    def _mux_tracks_until(self, seconds: float | None) -> None:
        """Mux every track's pending packets whose time is at most `seconds` (all of them when None)."""
        for track in self.tracks:
            while track.packets is not None:
                if track.pending is None:
                    track.pending = next(track.packets, None)
                    if track.pending is None:
                        track.packets = None
                        break
                p = track.pending
                t = float(p.pts * p.time_base) if p.pts is not None and p.time_base else None
                if seconds is not None and t is not None and t > seconds:
                    break
                if track.copy:
                    p.stream = track.stream
                self.out.mux(p)
                track.pending = None

    # -- video ------------------------------------------------------------------------------------------
    def write(self, rgb: np.ndarray, pts: int) -> None:
        """Encode one RGB uint8 frame at `pts` (in the input's time base), resized to the output's size and
        converted to its pixel format in one swscale call."""
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame.pts = pts
        frame.time_base = self.info.time_base
        self._mux_tracks_until(float(pts * self.info.time_base) + 0.5)
        size = self.size
        scale = {}
        if (rgb.shape[1], rgb.shape[0]) != size:
            scale = {
                "width": size[0],
                "height": size[1],
                "interpolation": _interpolation(rgb.shape[1::-1], size),
            }
        self.out.mux(self.video.encode(frame.reformat(format=self.video.pix_fmt, **scale)))
        self.frames += 1

    def close(self) -> None:
        try:
            self.out.mux(self.video.encode(None))
            self._mux_tracks_until(None)
        finally:
            self.out.close()
            self._close_sources()

    def abort(self) -> None:
        with contextlib.suppress(Exception):  # the file is being thrown away
            self.out.close()
        self._close_sources()

    def _close_sources(self) -> None:
        for track in self.tracks:
            track.source.close()


def _format_for(suffix: str) -> str:
    return {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm"}[suffix]


def check_output(input_path: Path, output_path: Path) -> None:
    """Refuse an output equal to the input, an unsupported extension or an unwritable folder."""
    if output_path.resolve() == input_path.resolve():
        raise StdtrtError(f"output {output_path} is the input video; choose another output path")
    if output_path.suffix.lower() not in CONTAINERS:
        raise StdtrtError(
            f"output extension {output_path.suffix!r} not supported; use one of {', '.join(CONTAINERS)}"
        )
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
        out = av.open(str(tmp), "w", format=_format_for(path.suffix.lower()))
        try:
            video = None
            for i, rgb in enumerate(frames):
                if video is None:
                    video = out.add_stream("libx264", rate=rate)
                    video.height, video.width = rgb.shape[:2]
                    video.pix_fmt = "yuv420p"
                    video.options = {"crf": str(crf), "preset": "veryfast"}
                    if audio is not None:
                        astream = out.add_stream("aac", rate=sample_rate)
                        astream.layout = "mono"
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
                frame.pts = i
                frame.time_base = 1 / Fraction(rate)
                out.mux(video.encode(frame.reformat(format="yuv420p")))
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
