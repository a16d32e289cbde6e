"""The output containers stdtrt writes, one row each: what every other part of io/video asks about a
suffix (muxer, encoders, which audio and subtitle codecs it takes as they are)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from stdtrt.errors import StdtrtError

# Input videos stdtrt reads (distill data folders; stylize-video reads whatever PyAV opens).
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")

_PCM = frozenset({"pcm_s16le", "pcm_s24le", "pcm_f32le"})
# Text subtitles convert between formats (their text and timing kept); bitmap ones (DVD, PGS) do not.
TEXT_SUBTITLES = frozenset({"subrip", "ass", "ssa", "webvtt", "mov_text", "text"})


@dataclass(frozen=True)
class Container:
    muxer: str  # FFmpeg's format name
    video: str  # video encoder
    pix_fmt: str  # 4:2:0: what every player decodes
    audio: str  # the audio encoder for a track that must be re-encoded
    audio_copy: frozenset[str]  # audio codecs copied packet by packet; any other is re-encoded
    subtitle_copy: frozenset[str]  # subtitle codecs copied; text ones otherwise converted to `subtitle`
    subtitle: str  # the text subtitle format this container takes


# MP4 and MOV take AAC only (Opus or MP3 copied into MP4 makes players report another frame rate and
# duration, and PCM in MP4 plays in few players; MOV takes PCM).
_MP4 = Container("mp4", "libx264", "yuv420p", "aac", frozenset({"aac"}), frozenset({"mov_text"}), "mov_text")
CONTAINERS = {
    ".mp4": _MP4,
    ".m4v": _MP4,
    ".mov": Container(
        "mov", "libx264", "yuv420p", "aac", frozenset({"aac"}) | _PCM, frozenset({"mov_text"}), "mov_text"
    ),  # fmt: skip
    ".mkv": Container(
        "matroska",
        "libx264",
        "yuv420p",
        "aac",
        frozenset({"aac", "mp3", "opus", "vorbis", "flac", "ac3", "eac3"}) | _PCM,
        frozenset({"subrip", "ass", "ssa", "webvtt", "dvd_subtitle", "hdmv_pgs_subtitle"}),
        "subrip",
    ),  # fmt: skip
    ".webm": Container(
        "webm",
        "libvpx-vp9",
        "yuv420p",
        "libopus",
        frozenset({"opus", "vorbis"}),
        frozenset({"webvtt"}),
        "webvtt",
    ),  # fmt: skip
}

# Live outputs to a URL (stdtrt live --sink): MPEG-TS for udp:// and srt:// (and anything else), RTSP and
# FLV (RTMP) for those servers. No audio and subtitle tracks go with live frames.
LIVE_CONTAINERS = {
    "rtsp": Container("rtsp", "libx264", "yuv420p", "aac", frozenset(), frozenset(), ""),
    "rtmp": Container("flv", "libx264", "yuv420p", "aac", frozenset(), frozenset(), ""),
    "": Container("mpegts", "libx264", "yuv420p", "aac", frozenset(), frozenset(), ""),
}


def live_container(url: str) -> Container:
    """The row for a live output URL, by its scheme (MPEG-TS unless it is rtsp:// or rtmp://)."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    return LIVE_CONTAINERS.get(scheme, LIVE_CONTAINERS[""])


def container_for(path: str | Path) -> Container:
    """The row for an output path's suffix (or a bare suffix, ".mp4"), or one line naming the suffixes
    stdtrt writes."""
    text = str(path)
    suffix = (text if text.startswith(".") and not Path(text).suffix else Path(text).suffix).lower()
    if suffix not in CONTAINERS:
        raise StdtrtError(f"output extension {suffix!r} not supported; use one of {', '.join(CONTAINERS)}")
    return CONTAINERS[suffix]
