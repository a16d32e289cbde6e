"""Every audio and subtitle stream of the input, on its way into the output beside the stylized video.

Audio is copied packet by packet when the output container takes its codec (Container.audio_copy), else
re-encoded; subtitles are copied where the container takes their codec, else text ones are converted to
the container's text format (their text and times kept) and bitmap ones dropped with one line. Each track
has its own demuxer, so every track is read in step with the video and memory stays bounded.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

from stdtrt.io.video.containers import TEXT_SUBTITLES, Container
from stdtrt.io.video.probe import short

log = logging.getLogger(__name__)
_MS = Fraction(1, 1000)


@dataclass
class _Track:
    kind: str  # "audio" or "subtitle"
    index: int  # in the input's streams of its kind
    codec: str
    copy: bool
    source: object  # the input container this track is demuxed from
    stream: object = None  # the output stream
    packets: Iterator | None = None
    pending: object = None


def _layout(ctx) -> str:
    """A channel layout an encoder accepts: the input's when it names one, else the usual layout for its
    channel count (PCM in Matroska often says only "2 channels")."""
    name = ctx.layout.name if ctx.layout else ""
    if name and "channels" not in name:
        return name
    return {1: "mono", 2: "stereo", 6: "5.1", 8: "7.1"}.get(ctx.channels, "stereo")


class Tracks:
    """The input's audio and subtitle tracks added to `out` (an output container being written)."""

    def __init__(self, source_path: Path, out, container: Container, suffix: str):
        self.path, self.out, self.container, self.suffix = source_path, out, container, suffix
        self.tracks: list[_Track] = []
        self.dropped: list[str] = []  # "subtitle stream 1 (subrip): .mp4 takes mov_text only"
        try:
            self._setup()
        except BaseException:
            self.close()  # the demuxers opened so far
            raise
        for line in self.dropped:
            log.warning("dropped %s", line)

    def audio_summary(self) -> str:
        """none, copied, re-encoded, or both ("copied, re-encoded") over the audio tracks."""
        states = [("copied" if t.copy else "re-encoded") for t in self.tracks if t.kind == "audio"]
        return ", ".join(dict.fromkeys(states)) or "none"

    def _open(self):
        return av.open(str(self.path))

    def _setup(self) -> None:
        if self.path is None:  # frames from a live source: no tracks beside them
            return
        with self._open() as probe_in:  # canonical codec names (mp3, not its decoder mp3float)
            audio = [s.codec_context.codec.canonical_name for s in probe_in.streams.audio]
            subs = [s.codec_context.codec.canonical_name for s in probe_in.streams.subtitles]
        for i, codec in enumerate(audio):
            self._add_audio(i, codec)
        for i, codec in enumerate(subs):
            if codec in self.container.subtitle_copy:
                source = self._open()
                track = _Track("subtitle", i, codec, True, source)
                self.tracks.append(track)
                src = source.streams.subtitles[i]
                track.stream = self.out.add_stream_from_template(src)
                track.packets = (p for p in source.demux(src) if p.dts is not None and p.size)
            elif codec in TEXT_SUBTITLES:
                self._add_converted_subtitle(i, codec)
            else:
                takes = ", ".join(sorted(self.container.subtitle_copy))
                self.dropped.append(
                    f"subtitle stream {i} ({codec}): {self.suffix} takes {takes} only, and a bitmap subtitle "
                    f"converts to no text format"
                )

    def _add_converted_subtitle(self, i: int, codec: str) -> None:
        """A text subtitle the container does not take, converted to the one it does: each event decoded
        and encoded again, its text and times kept; the encoder opened here, so a failure is one dropped
        line, not a broken output."""
        target = self.container.subtitle
        source = self._open()
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
                f"subtitle stream {i} ({codec}): converting it to {target} failed ({short(exc)})"
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
            log.warning("subtitle stream %d: conversion stopped early: %s", src.index, short(exc))

    def _add_audio(self, i: int, codec: str) -> None:
        source = self._open()
        track = _Track("audio", i, codec, codec in self.container.audio_copy, source)
        self.tracks.append(track)
        src = source.streams.audio[i]
        if track.copy:
            track.stream = self.out.add_stream_from_template(src)
            track.packets = (p for p in source.demux(src) if p.dts is not None and p.size)
        else:
            encoder = self.container.audio
            rate = 48000 if encoder == "libopus" else src.codec_context.sample_rate or 48000
            track.stream = self.out.add_stream(encoder, rate=rate)
            track.stream.layout = _layout(src.codec_context)
            track.packets = self._decoded_audio(source, src, track.stream)
        how = "copied" if track.copy else f"re-encoded to {self.container.audio}"
        log.info("audio stream %d: %s (%s)", i, how, codec)

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
            log.warning("audio decoding stopped early: %s", short(exc))
        for f in resampler.resample(None):
            yield from out_stream.encode(f)
        yield from out_stream.encode(None)

    def mux_until(self, seconds: float | None) -> None:
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

    def close(self) -> None:
        for track in self.tracks:
            with contextlib.suppress(Exception):
                track.source.close()
