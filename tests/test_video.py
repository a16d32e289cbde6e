"""Video: the round trip keeps frame count, rate, size and audio; fixed noise; bad input fails with one
clear line; outputs appear only when complete."""

import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from conftest import frames_of, make_video

from stdtrt.config import StylizeConfig
from stdtrt.errors import StdtrtError
from stdtrt.io.video import Orientation, probe
from stdtrt.runtime.stylize import stylize_image, stylize_video

CFG = StylizeConfig(model="tiny-sd", prompt="an oil painting", width=64, height=48)


def test_round_trip_keeps_frames_rate_size_and_audio(tmp_path):
    src = make_video(tmp_path / "in.mp4", frames=10, size=(96, 64), fps=8)
    result = stylize_video(CFG, src, tmp_path / "out.mp4", progress=False)
    assert result.frames == 10 and result.audio == "copied"
    a, b = probe(src), probe(result.output)
    assert (b.width, b.height, b.rate, b.frames) == (96, 64, Fraction(8), 10)
    assert b.has_audio and b.audio_codec == "aac"
    with av.open(str(src)) as ci, av.open(str(result.output)) as co:
        dur = [float(s.duration * s.time_base) for s in ci.streams.audio + co.streams.audio]
        vpts_in = [f.pts for f in ci.decode(video=0)]
        vpts_out = [f.pts for f in co.decode(video=0)]
    assert abs(dur[0] - dur[1]) < 0.05
    assert [p * a.time_base for p in vpts_in] == [p * b.time_base for p in vpts_out]
    assert len(frames_of(result.output)) == 10
    assert not [p for p in os.listdir(tmp_path) if "partial" in p]


@pytest.mark.parametrize("suffix,audio", [(".mkv", "copied"), (".webm", "re-encoded")])
def test_other_containers(tmp_path, suffix, audio):
    src = make_video(tmp_path / "in.mp4", frames=4)
    result = stylize_video(CFG, src, tmp_path / f"out{suffix}", progress=False)
    assert result.audio == audio and len(frames_of(result.output)) == 4
    assert probe(result.output).has_audio


def test_video_without_audio(tmp_path):
    src = make_video(tmp_path / "in.mp4", frames=3, audio=False)
    result = stylize_video(CFG, src, tmp_path / "out.mp4", progress=False)
    assert result.audio == "none" and not probe(result.output).has_audio


def test_fixed_noise_is_shared_by_all_frames_fresh_noise_is_not(tmp_path):
    src = make_video(tmp_path / "same.mp4", frames=3, repeat=True, audio=False)
    fixed = frames_of(stylize_video(CFG, src, tmp_path / "fixed.mp4", progress=False).output)
    cfg = StylizeConfig(**{**CFG.__dict__, "fresh_noise": True})
    fresh = frames_of(stylize_video(cfg, src, tmp_path / "fresh.mp4", progress=False).output)
    diff = lambda f: np.abs(f[0].astype(int) - f[2].astype(int)).mean()  # noqa: E731
    assert diff(fixed) < 1.0  # identical inputs, identical noise: only codec noise differs
    assert diff(fresh) > 5 * max(diff(fixed), 0.2)


def test_frames_per_step_match_frame_by_frame(tmp_path):
    """--frames-per-step B only groups frames into one network call: each frame comes out as it would
    alone (up to float rounding, at most one level), in order, the last short group included; on the
    sequential student (--gamma > 0) and through the whole video pipeline on the stream form."""
    from stdtrt.io.images import resize
    from stdtrt.runtime.student import StudentRunner
    from stdtrt.runtime.stylize import load_student

    src = make_video(tmp_path / "in.mp4", frames=4, audio=False)
    frames = [resize(f, CFG.width, CFG.height) for f in frames_of(src)]
    student = load_student(CFG, CFG.width, CFG.height)  # the sequential student (what --gamma > 0 runs)
    outs = {}
    for batch in (1, 3):
        runner = StudentRunner(student, StylizeConfig(**{**CFG.__dict__, "frames_per_step": batch}), "shared")
        outs[batch] = list(runner.stylize((f, i) for i, f in enumerate(frames)))
    assert [tag for _, tag in outs[3]] == [0, 1, 2, 3]
    for (a, _), (b, _) in zip(outs[1], outs[3], strict=True):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    cfg = StylizeConfig(**{**CFG.__dict__, "frames_per_step": 3, "crf": 0})
    three = stylize_video(cfg, src, tmp_path / "three.mp4", progress=False)
    one = stylize_video(
        StylizeConfig(**{**CFG.__dict__, "crf": 0}), src, tmp_path / "one.mp4", progress=False
    )
    assert "3 frames per slot" in three.backend and three.frames == 4
    for a, b in zip(frames_of(one.output), frames_of(three.output), strict=True):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 2  # rounding (one level, through 4:2:0)


def test_student_encodes_the_prompt_once_not_per_frame(tiny_sd):
    from stdtrt import schedule
    from stdtrt.runtime.student import Student
    from stdtrt.schedule import make_noise

    plan = schedule.student_plan(tiny_sd.alphas_cumprod(), 0.75, 4)
    student = Student(tiny_sd, plan, "oil", 64, 64)
    calls = []
    hook = tiny_sd.pipe.text_encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        frames = np.zeros((2, 64, 64, 3), np.uint8)
        student(frames, make_noise(student.latent_shape, 0))
        student(frames, make_noise(student.latent_shape, 0))
    finally:
        hook.remove()
    assert calls == []


def test_stylize_image_keeps_size_and_is_seeded(tmp_path):
    from PIL import Image

    src = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(src)
    cfg = StylizeConfig(model="tiny-sd", prompt="oil", width=64, height=48)
    a = np.asarray(Image.open(stylize_image(cfg, src, tmp_path / "a.png")))
    b = np.asarray(Image.open(stylize_image(cfg, src, tmp_path / "b.png")))
    c = np.asarray(
        Image.open(stylize_image(StylizeConfig(**{**cfg.__dict__, "seed": 1}), src, tmp_path / "c.png"))
    )
    assert a.shape == (50, 70, 3) and np.array_equal(a, b) and not np.array_equal(a, c)


# -- bad input ---------------------------------------------------------------------------------------------
def test_missing_empty_and_non_video_inputs(tmp_path):
    out = tmp_path / "out.mp4"
    with pytest.raises(StdtrtError, match="does not exist"):
        stylize_video(CFG, tmp_path / "nope.mp4", out)
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(StdtrtError, match="empty"):
        stylize_video(CFG, tmp_path / "empty.mp4", out)
    (tmp_path / "text.mp4").write_text("not a video at all\n" * 100)
    with pytest.raises(StdtrtError, match="not a readable video"):
        stylize_video(CFG, tmp_path / "text.mp4", out)
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "still.png")
    wav = tmp_path / "sound.m4a"
    with av.open(str(wav), "w") as c:  # audio only: no video stream
        s = c.add_stream("aac", rate=8000)
        s.layout = "mono"
        f = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        f.sample_rate, f.pts = 8000, 0
        c.mux(s.encode(f))
        c.mux(s.encode(None))
    with pytest.raises(StdtrtError, match="no video stream"):
        stylize_video(CFG, wav, out)
    assert not out.exists()


def test_truncated_video_fails_and_leaves_no_output(tmp_path):
    src = make_video(tmp_path / "in.mp4", frames=24, size=(96, 64), faststart=True)
    data = src.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    out = tmp_path / "out.mp4"
    out.write_bytes(b"previous result")  # must survive the failed run untouched
    with pytest.raises(StdtrtError, match="truncated|corrupt"):
        stylize_video(CFG, cut, out, progress=False)
    assert out.read_bytes() == b"previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.mp4", "in.mp4", "out.mp4"]


def test_output_path_problems(tmp_path, video):
    with pytest.raises(StdtrtError, match="is the input"):
        stylize_video(CFG, video, video)
    with pytest.raises(StdtrtError, match="does not exist"):
        stylize_video(CFG, video, tmp_path / "no" / "such" / "dir.mp4")
    with pytest.raises(StdtrtError, match="extension"):
        stylize_video(CFG, video, tmp_path / "out.gif")
    (tmp_path / "file").write_text("x")
    with pytest.raises(StdtrtError, match="not a folder"):
        stylize_video(CFG, video, tmp_path / "file" / "out.mp4")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    # as root a 0o500 folder is still writable; /sys is a read-only file system for everyone
    target = next((d for d in (locked, Path("/sys")) if not _can_write(d)), None)
    if target is None:
        pytest.skip("no unwritable folder on this machine (root, and /sys writable)")
    with pytest.raises(StdtrtError, match="not writable"):
        stylize_video(CFG, video, target / "out.mp4")
    locked.chmod(0o700)


def _can_write(folder: Path) -> bool:
    try:
        (folder / ".probe").write_bytes(b"")
        (folder / ".probe").unlink()
        return True
    except OSError:
        return False


def test_odd_resolution_is_refused_or_padded(tmp_path, caplog):
    import av as _av

    path = tmp_path / "odd.mkv"
    with _av.open(str(path), "w") as c:  # ffv1 stores odd sizes, H.264 4:2:0 cannot
        s = c.add_stream("ffv1", rate=5)
        s.width, s.height, s.pix_fmt = 65, 47, "yuv444p"
        for i in range(2):
            f = _av.VideoFrame.from_ndarray(np.zeros((47, 65, 3), np.uint8), format="rgb24")
            f.pts = i
            c.mux(s.encode(f.reformat(format="yuv444p")))
        c.mux(s.encode(None))
    with pytest.raises(StdtrtError, match="even width and height; pass --pad-odd to write it at 66x48"):
        stylize_video(CFG, path, tmp_path / "out.mp4")
    assert not (tmp_path / "out.mp4").exists()
    with caplog.at_level("WARNING", logger="stdtrt"):
        result = stylize_video(
            StylizeConfig(model="tiny-sd", pad_odd=True), path, tmp_path / "out.mp4", progress=False
        )
    out = probe(result.output)
    assert (out.width, out.height, result.frames) == (
        66,
        48,
        2,
    ) and "written at 66x48 (--pad-odd" in caplog.text


@pytest.mark.parametrize(
    "changes,match",
    [
        ({"strength": 0.0}, "strength"),
        ({"strength": 1.5}, "strength"),
        ({"nfe": 0}, "nfe"),
        ({"width": 100}, "multiple of 8"),
        ({"height": 7}, "multiple of 8"),
        ({"gamma": 1.0}, "gamma"),
    ],
)
def test_bad_settings(changes, match):
    with pytest.raises(StdtrtError, match=match):
        StylizeConfig(**{**CFG.__dict__, **changes})


def test_unknown_model_fails_before_any_output(tmp_path, video):
    cfg = StylizeConfig(**{**CFG.__dict__, "model": "nobody/nothing"})
    with pytest.raises(StdtrtError, match="hf download"):
        stylize_video(cfg, video, tmp_path / "out.mp4")
    assert not (tmp_path / "out.mp4").exists()


def test_noise_is_the_same_on_every_device():
    from stdtrt.schedule import make_noise

    assert torch.equal(make_noise((4, 8, 8), 3), make_noise((4, 8, 8), 3))
    assert not torch.equal(make_noise((4, 8, 8), 3), make_noise((4, 8, 8), 4))


def _rotated_clip(path: Path, degrees: int, frames: int = 3) -> Path:
    """A 64x48 coded clip, a red block in its top-left corner, with a display matrix of `degrees`
    counter-clockwise (PyAV's convention, what `VideoFrame.rotation` reads back): a phone's portrait clip."""
    out = av.open(str(path), "w")
    stream = out.add_stream("libx264", rate=8)
    stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
    stream.set_display_rotation(degrees)
    for i in range(frames):
        rgb = np.full((48, 64, 3), 40, np.uint8)
        rgb[:16, :16] = (255, 0, 0)
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        frame.pts = i
        out.mux(stream.encode(frame))
    out.mux(stream.encode(None))
    out.close()
    return path


@pytest.mark.parametrize(
    "degrees,size,corner",
    [(90, (48, 64), "bottom-left"), (270, (48, 64), "top-right"), (180, (64, 48), "bottom-right")],
)
def test_a_rotated_video_is_read_upright_and_written_upright(degrees, size, corner, tmp_path):
    from stdtrt.io.video import read_frames

    src = _rotated_clip(tmp_path / "phone.mp4", degrees)
    info = probe(src)
    assert (info.width, info.height) == size and info.orientation.swap == (degrees in (90, 270))
    rgb, _ = next(read_frames(info))
    h, w = rgb.shape[:2]
    corners = {"top-left": rgb[:8, :8], "top-right": rgb[:8, w - 8 :], "bottom-left": rgb[h - 8 :, :8],
               "bottom-right": rgb[h - 8 :, w - 8 :]}  # fmt: skip
    red = [
        name for name, patch in corners.items() if patch[..., 0].mean() > 200 and patch[..., 1].mean() < 60
    ]
    assert (w, h) == size and red == [corner]
    small, _ = next(
        read_frames(info, size[0] // 2, size[1] // 2)
    )  # resized in the coded orientation, then turned
    assert small.shape[1::-1] == (size[0] // 2, size[1] // 2)
    result = stylize_video(StylizeConfig(model="tiny-sd"), src, tmp_path / "out.mp4", progress=False)
    out = probe(result.output)
    assert (out.width, out.height) == size and out.orientation == Orientation()  # upright, no matrix left


def _multi_track(
    path: Path, audio: list[tuple[str, int, str]], subtitle: bool | str = False, frames: int = 8
) -> Path:
    """A 64x48 clip at 8 fps with the audio streams asked for ((encoder, rate, layout), one second each)
    and optionally a subtitle stream (True: subrip; or a codec name, its one packet bytes of no meaning),
    in a container that holds them all (.mkv)."""
    out = av.open(str(path), "w")
    video = out.add_stream("libx264", rate=8)
    video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
    tracks = []
    for codec, rate, layout in audio:
        stream = out.add_stream(codec, rate=rate)
        stream.layout = layout
        tracks.append((stream, rate, layout))
    sub = out.add_mux_stream("subrip" if subtitle is True else subtitle) if subtitle else None
    for i in range(frames):
        frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 30 * i % 255, np.uint8), format="rgb24")
        frame.pts, frame.time_base = i, Fraction(1, 8)
        out.mux(video.encode(frame))
    out.mux(video.encode(None))
    for stream, rate, layout in tracks:
        size, channels = stream.codec_context.frame_size or 1024, 1 if layout == "mono" else 2
        resampler = av.AudioResampler(format=stream.codec_context.format.name, layout=layout, rate=rate)
        for start in range(0, rate * frames // 8, size):
            t = (start + np.arange(size)) / rate
            wave = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
            frame = av.AudioFrame.from_ndarray(
                np.repeat(wave[None], channels, axis=0), format="fltp", layout=layout
            )
            frame.sample_rate, frame.pts = rate, start
            for f in resampler.resample(frame):
                out.mux(stream.encode(f))
        out.mux(stream.encode(None))
    if sub is not None:
        packet = av.Packet(b"a line of dialogue")
        packet.stream, packet.pts, packet.dts, packet.duration = sub, 0, 0, 500
        packet.time_base = Fraction(1, 1000)
        out.mux(packet)
    out.close()
    return path


def _streams(path: Path) -> list[tuple[str, str]]:
    with av.open(str(path)) as c:
        return [(s.type, s.codec_context.name) for s in c.streams]


def _audio_seconds(path: Path, index: int) -> float:
    """The duration of one audio stream's packets."""
    with av.open(str(path)) as c:
        stream = c.streams.audio[index]
        return sum(float(p.duration * p.time_base) for p in c.demux(stream) if p.duration)


def _packets(path: Path) -> list[int]:
    """Packets with data, per stream."""
    with av.open(str(path)) as c:
        counts = [0] * len(c.streams)
        for p in c.demux():
            if p.size:
                counts[p.stream.index] += 1
    return counts


def test_every_audio_and_subtitle_stream_is_kept_or_said(tmp_path, caplog):
    src = _multi_track(
        tmp_path / "in.mkv", [("aac", 44100, "mono"), ("libopus", 48000, "stereo")], subtitle=True
    )
    assert _streams(src) == [("video", "h264"), ("audio", "aac"), ("audio", "opus"), ("subtitle", "srt")]
    mkv = stylize_video(StylizeConfig(model="tiny-sd"), src, tmp_path / "out.mkv", progress=False)
    assert _streams(mkv.output) == _streams(src) and mkv.audio == "copied"
    assert _packets(mkv.output) == _packets(src)  # every packet of every copied stream, the subtitle's too
    with caplog.at_level("WARNING", logger="stdtrt"):
        mp4 = stylize_video(StylizeConfig(model="tiny-sd"), src, tmp_path / "out.mp4", progress=False)
    assert _streams(mp4.output) == [
        ("video", "h264"),
        ("audio", "aac"),
        ("audio", "aac"),
        ("subtitle", "mov_text"),
    ]
    assert mp4.audio == "copied, re-encoded"  # the Opus track into AAC: .mp4 copies AAC only
    seconds = [_audio_seconds(src, 1), _audio_seconds(mp4.output, 0), _audio_seconds(mp4.output, 1)]
    assert all(abs(x - seconds[0]) < 0.1 for x in seconds), seconds
    assert "dropped" not in caplog.text
    assert _subtitle_events(mp4.output) == [("a line of dialogue", 0.0, 0.5)]  # SubRip converted to mov_text


def _subtitle_events(path: Path) -> list[tuple[str, float, float]]:
    """(text, start s, duration s) of the first subtitle stream's events, decoded by FFmpeg's decoder."""
    with av.open(str(path)) as c:
        stream = c.streams.subtitles[0]
        events = []
        for p in c.demux(stream):
            if p.size and (subs := stream.codec_context.decode2(p)) is not None:
                text = b"".join(r.ass for r in subs).decode().split(",", 8)[-1]
                events.append((text, float(p.pts * p.time_base), float(p.duration * p.time_base)))
        return events


@pytest.mark.parametrize("first,then,codec", [(".mp4", ".mkv", "subrip"), (".mkv", ".webm", "webvtt")])
def test_text_subtitles_convert_to_the_container_s_format(first, then, codec, tmp_path):
    """mov_text (from .mp4) into .mkv as SubRip; SubRip into .webm as WebVTT: the text and times kept."""
    src = _multi_track(tmp_path / "in.mkv", [], subtitle=True)
    if first == ".mp4":
        src = stylize_video(StylizeConfig(model="tiny-sd"), src, tmp_path / "mid.mp4", progress=False).output
    out = stylize_video(StylizeConfig(model="tiny-sd"), src, tmp_path / f"out{then}", progress=False).output
    assert _streams(out)[-1] == ("subtitle", {"subrip": "srt"}.get(codec, codec))
    assert _subtitle_events(out) == [("a line of dialogue", 0.0, 0.5)]


def test_bitmap_subtitles_that_a_container_cannot_take_are_said(tmp_path, caplog):
    src = _multi_track(tmp_path / "in.mkv", [], subtitle="dvd_subtitle")
    with caplog.at_level("WARNING", logger="stdtrt"):
        out = stylize_video(StylizeConfig(model="tiny-sd"), src, tmp_path / "out.mp4", progress=False).output
    assert _streams(out) == [("video", "h264")]
    assert (
        "dropped subtitle stream 0 (dvd_subtitle): .mp4 takes mov_text only, and a bitmap subtitle"
        in caplog.text
    )


@pytest.mark.parametrize("codec", ["libopus", "libmp3lame", "pcm_s16le"])
@pytest.mark.parametrize("suffix", [".mp4", ".mov", ".mkv", ".webm"])
def test_frame_rate_count_and_duration_hold_in_every_container(codec, suffix, tmp_path):
    rate = 48000 if codec == "libopus" else 44100
    src = _multi_track(tmp_path / "in.mkv", [(codec, rate, "stereo")])
    result = stylize_video(StylizeConfig(model="tiny-sd"), src, tmp_path / f"out{suffix}", progress=False)
    a, b = probe(src), probe(result.output)
    assert (b.rate, len(frames_of(result.output))) == (a.rate, 8)
    with av.open(str(src)) as ci, av.open(str(result.output)) as co:
        t_in = [float(f.pts * f.time_base) for f in ci.decode(video=0)]
        t_out = [float(f.pts * f.time_base) for f in co.decode(video=0)]
        kept = co.streams.audio[0].codec_context.name
    assert np.allclose(t_in, t_out, atol=1e-3)
    players = {".mp4": {"aac"}, ".mov": {"aac", "pcm_s16le"}, ".webm": {"opus"}}
    assert suffix == ".mkv" or kept in players[suffix]  # what that container's players take
