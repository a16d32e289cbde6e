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
from stdtrt.io.video import probe
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
    from stdtrt.runtime.stylize import StudentRunner, load_student

    src = make_video(tmp_path / "in.mp4", frames=4, audio=False)
    frames = [resize(f, CFG.width, CFG.height) for f in frames_of(src)]
    student = load_student(CFG, CFG.width, CFG.height)  # the sequential student (what --gamma > 0 runs)
    outs = {}
    for batch in (1, 3):
        runner = StudentRunner(student, StylizeConfig(**{**CFG.__dict__, "frames_per_step": batch}))
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
    from stdtrt.runtime.student import Student, make_noise

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


def test_odd_resolution_is_refused(tmp_path):
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
    with pytest.raises(StdtrtError, match="even width and height"):
        stylize_video(CFG, path, tmp_path / "out.mp4")


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
    from stdtrt.runtime.student import make_noise

    assert torch.equal(make_noise((4, 8, 8), 3), make_noise((4, 8, 8), 3))
    assert not torch.equal(make_noise((4, 8, 8), 3), make_noise((4, 8, 8), 4))
