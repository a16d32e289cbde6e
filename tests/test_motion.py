"""The video student: the teacher with a motion adapter (tiny-motion on tiny-sd), clips as data, STD over
clips (exact resume, the adversarial branch on frames of each clip), LoRA files diffusers' AnimateDiff loads,
inference in overlapping windows blended without seams, and one line for each bad input."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import frames_of, losses, make_video, small

from stdtrt.config import StylizeConfig
from stdtrt.errors import StdtrtError
from stdtrt.models.conditioning import Conditioning, predict_eps
from stdtrt.models.load import load_model

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


@pytest.fixture(scope="module")
def clips_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    make_video(folder / "a.mp4", frames=10, size=(48, 40), audio=False)
    make_video(folder / "b.mp4", frames=8, size=(48, 40), audio=False)
    (folder / "a.txt").write_text("a cat")
    return folder


def _clip_cfg(clips_dir, out, **changes):
    base = dict(motion_adapter="tiny-motion", clip_frames=4, frame_stride=2, clips_per_video=2, batch_size=2)
    return small(clips_dir, out, **{**base, **changes})


def test_the_motion_adapter_joins_the_unet_and_keeps_its_spatial_weights():
    base, motion = load_model("tiny-sd"), load_model("tiny-sd", motion_adapter="tiny-motion")
    assert type(motion.unet).__name__ == "UNetMotionModel" and motion.motion == "tiny-motion"
    assert torch.equal(motion.unet.conv_in.weight, base.unet.conv_in.weight)
    x = torch.randn(1, 4, 5, 8, 8, generator=torch.Generator().manual_seed(0))  # 1 clip of 5 frames
    cond = Conditioning(torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(1)))
    with torch.no_grad():
        eps = predict_eps(motion.unet, x, 500, cond)
        assert eps.shape == x.shape
        # every frame sees the prompt: with the motion modules' output projections zeroed (the identity
        # AnimateDiff starts training from) each frame is what the image UNet gives for it alone
        zeroed = 0
        for name, module in motion.unet.named_modules():
            if "motion_modules" in name and name.endswith("proj_out"):
                module.weight.zero_(), module.bias.zero_()
                zeroed += 1
        assert zeroed and not torch.allclose(predict_eps(motion.unet, x, 500, cond), eps)
        eps = predict_eps(motion.unet, x, 500, cond)
        alone = predict_eps(base.unet, x[:, :, 2], 500, cond)
    torch.testing.assert_close(eps[:, :, 2], alone, rtol=1e-4, atol=1e-5)


def test_an_adapter_for_another_base_is_refused(tmp_path):
    from diffusers import MotionAdapter

    MotionAdapter(block_out_channels=(32, 64, 64), motion_layers_per_block=1, motion_norm_num_groups=8,
                  motion_num_attention_heads=2).save_pretrained(tmp_path / "xl-adapter")  # fmt: skip
    with pytest.raises(StdtrtError, match=r"made for a UNet with blocks of \[32, 64, 64\] channels"):
        load_model("tiny-sd", motion_adapter=str(tmp_path / "xl-adapter"))
    with pytest.raises(StdtrtError, match="hf download nobody/adapter.*tiny-motion"):
        load_model("tiny-sd", motion_adapter="nobody/adapter")


def test_clips_are_consecutive_frames_at_the_stride_cached_once(clips_dir, tmp_path, caplog):
    from stdtrt.distill.data import clip_starts, scan_clips

    assert clip_starts(10, 4, 2, 2) == [0, 3] and clip_starts(6, 4, 2, 2) == []  # a clip spans 7 frames
    cache = tmp_path / "cache"
    clips = scan_clips(clips_dir, "x", "{caption}", 4, 2, 2, 40, cache)
    assert len(clips) == 4  # a.mp4 (10 frames): starts 0 and 3; b.mp4 (8 frames): starts 0 and 1
    by_video = {}
    for c in clips:
        by_video.setdefault(c.frames[0].parent, []).append([int(p.stem) for p in c.frames])
    assert sorted(map(sorted, by_video.values())) == [
        [[0, 2, 4, 6], [1, 3, 5, 7]],
        [[0, 2, 4, 6], [3, 5, 7, 9]],
    ]
    stamps = {p: p.stat().st_mtime_ns for p in cache.rglob("*.png")}
    again = scan_clips(clips_dir, "x", "{caption}", 4, 2, 2, 40, cache)
    assert again == clips and stamps == {p: p.stat().st_mtime_ns for p in cache.rglob("*.png")}  # reused
    with caplog.at_level("WARNING"):
        long = scan_clips(
            clips_dir, "x", "{caption}", 5, 2, 1, 40, tmp_path / "c2"
        )  # spans 9: b is too short
    assert len(long) == 1 and "shorter than one clip" in caplog.text
    with pytest.raises(StdtrtError, match="no video .* holds a clip of 8 frames at stride 4"):
        scan_clips(clips_dir, "x", "{caption}", 8, 4, 1, 40, tmp_path / "c3")


def test_images_are_refused_in_clip_mode(data_dir, tmp_path):
    from stdtrt.distill.trainer import distill

    with pytest.raises(StdtrtError, match="trains on clips of videos; .* is an image"):
        distill(_clip_cfg(data_dir, tmp_path / "r"), progress=False)


def test_std_over_clips_trains_the_motion_modules_and_resumes_exactly(clips_dir, tmp_path):
    import shutil

    from stdtrt.distill.trainer import distill

    cfg = _clip_cfg(clips_dir, tmp_path / "straight", max_steps=4, checkpoint_every=2)
    assert cfg.rho == 0.3  # the video default
    distill(cfg, progress=False)
    split = tmp_path / "split"
    shutil.copytree(tmp_path / "straight", split)
    shutil.rmtree(split / "checkpoints" / "step-000004")
    (split / "lora.safetensors").unlink()
    distill(_clip_cfg(clips_dir, split, max_steps=4, checkpoint_every=2), resume=True, progress=False)
    assert losses(tmp_path / "straight") == losses(split)
    from safetensors import safe_open

    from stdtrt.models.lora import read_metadata

    with safe_open(str(split / "lora.safetensors"), framework="pt") as f:
        keys = list(f.keys())
    assert any("motion_modules" in k for k in keys)
    assert read_metadata(split / "lora.safetensors")["motion_adapter"] == "tiny-motion"
    rows = [json.loads(line) for line in (split / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) for r in rows)


def test_the_adversarial_branch_sees_frames_of_each_clip(clips_dir, tmp_path):
    from conftest import start_run

    run = start_run(
        _clip_cfg(clips_dir, tmp_path / "r", adv_weight=0.5, adv_model="tiny-dinov2", adv_frames=2)
    )
    seen = []
    hook = run.adv.disc.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    try:
        metrics = run.optimise()
    finally:
        hook.remove()
    assert seen[0] == 2 * 2 and np.isfinite(metrics["loss_g"])  # batch 2 clips x 2 frames


@pytest.fixture(scope="module")
def motion_lora(clips_dir, tmp_path_factory):
    from stdtrt.distill.trainer import distill

    out = tmp_path_factory.mktemp("motion-run")
    distill(_clip_cfg(clips_dir, out, max_steps=2, lr=1e-2), progress=False)
    return out


def test_both_lora_files_load_onto_the_motion_model_and_in_diffusers_animatediff(motion_lora):
    from diffusers import AnimateDiffVideoToVideoPipeline, DDIMScheduler

    from stdtrt.models.lora import lora_layers
    from stdtrt.models.motion import motion_preset

    x = torch.randn(1, 4, 4, 4, 4, generator=torch.Generator().manual_seed(3))
    plain = load_model("tiny-sd", motion_adapter="tiny-motion")
    cond = Conditioning(torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(4)))
    with torch.no_grad():
        base = predict_eps(plain.unet, x, 500, cond)
    outs = []
    for name in ("lora.safetensors", "pytorch_lora_weights.safetensors"):
        model = load_model("tiny-sd", motion_adapter="tiny-motion", lora=str(motion_lora / name))
        assert any("motion_modules" in n for n in lora_layers(model.unet))
        with torch.no_grad():
            outs.append(predict_eps(model.unet, x, 500, cond))
    assert (outs[0] - outs[1]).abs().max() < 1e-5 and (outs[0] - base).abs().max() > 1e-4
    sd = load_model("tiny-sd").pipe  # diffusers' own AnimateDiff video-to-video pipeline, its own loader
    pipe = AnimateDiffVideoToVideoPipeline(
        vae=sd.vae, text_encoder=sd.text_encoder, tokenizer=sd.tokenizer, unet=sd.unet,
        motion_adapter=motion_preset("tiny-motion"), scheduler=DDIMScheduler.from_config(sd.scheduler.config),
    )  # fmt: skip
    pipe.load_lora_weights(str(motion_lora), weight_name="pytorch_lora_weights.safetensors")
    with torch.no_grad():
        theirs = predict_eps(pipe.unet, x, 500, cond)
    assert (theirs - outs[1]).abs().max() < 1e-5


def test_a_video_student_needs_its_adapter_and_an_image_student_none(motion_lora, tmp_path):
    from conftest import make_lora

    with pytest.raises(StdtrtError, match="is a video student .*--motion-adapter tiny-motion"):
        load_model("tiny-sd", lora=str(motion_lora / "lora.safetensors"))
    with pytest.raises(StdtrtError, match="is an image student .*drop --motion-adapter"):
        load_model("tiny-sd", motion_adapter="tiny-motion", lora=str(make_lora("tiny-sd", tmp_path)))


def test_windows_overlap_and_blend_without_seams(motion_lora):
    """Windows of 4 frames overlapping by 2 over 9 frames: each frame's latents are its window's (or, in an
    overlap, the blend of both windows' with weights summing to one); frames leave in order."""
    from stdtrt.io.samples import sample_frames
    from stdtrt.runtime.student import to_tensor, to_uint8
    from stdtrt.runtime.stylize import load_runner, load_student
    from stdtrt.runtime.windows import blend_weights

    cfg = StylizeConfig(model="tiny-sd", motion_adapter="tiny-motion", lora=str(motion_lora / "lora.safetensors"),
                        width=48, height=40, window=4, overlap=2)  # fmt: skip
    runner = load_runner(cfg, 48, 40)
    frames = list(sample_frames(9, 48, 40))
    out = list(runner.stylize((f, i) for i, f in enumerate(frames)))
    assert [t for _, t in out] == list(range(9))
    # by hand: windows start at 0, 2, 4, 6 (the last one padded with its last frame), each window one
    # trajectory of the sequential student on the same model
    student = load_student(cfg, 48, 40)

    def window_latents(start):  # one trajectory of 4 frames from `start`, by the Student's own calls
        window = (frames + [frames[-1]] * 4)[start : start + 4]
        z = student.encode(to_tensor(np.stack(window), "cpu")).transpose(0, 1)[None]
        noise = runner.noise.at(start, 4).transpose(0, 1)[None]  # each frame's own, in every window
        return student.sample(z, noise)[0].transpose(0, 1)

    lat = [window_latents(s) for s in (0, 2, 4, 6)]
    ramp = blend_weights(2).view(-1, 1, 1, 1)
    assert torch.allclose(ramp.flatten(), torch.tensor([1 / 3, 2 / 3]))
    want = [lat[0][0], lat[0][1]]
    for k in range(1, 4):
        want += list((1 - ramp) * lat[k - 1][2:4] + ramp * lat[k][:2])
    want.append(lat[3][2])  # frame 8: the last window's own
    for i, (frame, _) in enumerate(out):
        ref = to_uint8(student.decode(want[i][None]))[0]
        assert np.abs(frame.astype(int) - ref.astype(int)).max() <= 1, i
    assert not np.array_equal(out[2][0], to_uint8(student.decode(lat[0][2][None]))[0])  # it did blend


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_the_model_path_runs_the_stream_form_as_the_sequential_student_at_half(precision, motion_lora):
    """--model --motion-adapter in half precision (the GPU's run): the stream form (NFE windows in flight,
    the blend on the device) gives the sequential student's frames at the same precision, within a few
    levels (the two order the same half-precision operations differently: one UNet call per window over
    the NFE slots against NFE calls); --gamma > 0 runs the sequential student."""
    from stdtrt.io.samples import sample_frames
    from stdtrt.runtime.stylize import load_runner, load_student
    from stdtrt.runtime.windows import WindowRunner

    cfg = StylizeConfig(model="tiny-sd", motion_adapter="tiny-motion", lora=str(motion_lora / "lora.safetensors"),
                        width=48, height=40, window=4, overlap=2, precision=precision)  # fmt: skip
    items = [(f, i) for i, f in enumerate(sample_frames(7, 48, 40))]
    runner = load_runner(cfg, 48, 40)
    assert "stream form: 4 windows in flight" in runner.describe()
    got = list(runner.stylize(iter(items)))
    sequential = WindowRunner(load_student(cfg, 48, 40), 4, 2, cfg.seed, runner.noise.rule)
    want = list(sequential.stylize(iter(items)))
    assert [t for _, t in got] == [t for _, t in want] == list(range(7))
    diff = max(np.abs(a.astype(int) - b.astype(int)).max() for (a, _), (b, _) in zip(got, want, strict=True))
    assert diff <= (4 if precision == "fp16" else 12), diff
    assert "sequential steps per window" in load_runner(replace(cfg, gamma=0.3), 48, 40).describe()


def test_each_run_on_a_sequential_window_engine_re_noises_from_its_seed(motion_lora):
    """--gamma > 0 (the sequential motion student): a second run on the same loaded engine, as
    stylize-batch's worker makes one per video, gives the first run's frames (the re-noising generator is
    seeded per run, not carried over from the video before)."""
    from stdtrt.io.samples import sample_frames
    from stdtrt.runtime.stylize import load_runner
    from stdtrt.runtime.windows import WindowRunner

    cfg = StylizeConfig(model="tiny-sd", motion_adapter="tiny-motion", lora=str(motion_lora / "lora.safetensors"),
                        width=48, height=40, window=4, overlap=2, gamma=0.3)  # fmt: skip
    items = [(f, i) for i, f in enumerate(sample_frames(6, 48, 40))]
    first = load_runner(cfg, 48, 40)
    want = list(first.stylize(iter(items)))
    again = WindowRunner(first.engine, first.window, first.overlap, cfg.seed, first.noise.rule)
    got = list(again.stylize(iter(items)))
    assert all(np.array_equal(a, b) for (a, _), (b, _) in zip(got, want, strict=True))


def test_stylize_video_with_the_motion_student_keeps_the_video(motion_lora, tmp_path):
    from stdtrt.runtime.stylize import stylize_video

    src = make_video(tmp_path / "in.mp4", frames=7, size=(48, 40))
    cfg = StylizeConfig(model="tiny-sd", motion_adapter="tiny-motion", lora=str(motion_lora / "lora.safetensors"),
                        window=4, overlap=1)  # fmt: skip
    result = stylize_video(cfg, src, tmp_path / "out.mp4", progress=False)
    assert result.frames == 7 and result.audio == "copied" and "windows of 4 frames" in result.backend
    assert len(frames_of(result.output)) == 7


@pytest.mark.parametrize(
    "changes,match",
    [
        ({"window": 1}, "--window must be at least 2"),
        ({"window": 4, "overlap": 4}, "--overlap must be in"),
        ({"window": 40}, "longer than the 32 frames"),
        ({"skip_threshold": 0.9}, "belongs to the per-frame student"),
        ({"frames_per_step": 2}, "slot is one window .*drop --frames-per-step"),
    ],
)
def test_bad_window_input_is_one_line(changes, match, motion_lora, video, tmp_path):
    from stdtrt.runtime.stylize import stylize_video

    base = dict(model="tiny-sd", motion_adapter="tiny-motion", lora=str(motion_lora / "lora.safetensors"))
    with pytest.raises(StdtrtError, match=match):
        stylize_video(StylizeConfig(**{**base, **changes}), video, tmp_path / "out.mp4")
    assert not (tmp_path / "out.mp4").exists()


def _zero_motion(unet) -> None:
    """The motion modules' output projections zeroed: each frame then is what the image UNet gives alone."""
    for name, module in unet.named_modules():
        if "motion_modules" in name and name.endswith("proj_out"):
            module.weight.data.zero_(), module.bias.data.zero_()


@pytest.mark.parametrize("case", ["sdxl", "style"])
def test_each_frame_of_a_clip_gets_its_conditioning_once(case, tmp_path):
    """Only the text hidden states go in once per frame: a UNetMotionModel repeats the time embedding,
    SDXL's added conditioning and the IP-Adapter embedding per frame itself. With the motion modules
    zeroed, every frame of a guided clip equals the image UNet on that frame alone."""
    from PIL import Image

    from stdtrt.io.samples import sample_frames
    from stdtrt.models.conditioning import conditionings
    from stdtrt.models.style import load_style

    preset = "tiny-sdxl" if case == "sdxl" else "tiny-sd"
    base, motion = load_model(preset), load_model(preset, motion_adapter="tiny-motion")
    style = None
    if case == "style":
        Image.fromarray(next(iter(sample_frames(1, 40, 40)))).save(tmp_path / "s.png")
        style = load_style(base, str(tmp_path / "s.png"), "tiny-ip-adapter", 1.0, "all")
        load_style(motion, str(tmp_path / "s.png"), "tiny-ip-adapter", 1.0, "all")
    _zero_motion(motion.unet)
    cond, uncond = conditionings(base.pipe, "an oil painting", "", 3.0, 64, 64, style)
    x = torch.randn(2, 4, 3, 8, 8, generator=torch.Generator().manual_seed(0))  # 2 clips of 3 frames
    t = torch.tensor([500, 300])
    with torch.no_grad():
        clip = predict_eps(motion.unet, x, t, cond, uncond, 3.0)
        for f in range(3):
            alone = predict_eps(base.unet, x[:, :, f], t, cond, uncond, 3.0)
            torch.testing.assert_close(clip[:, :, f], alone, rtol=1e-4, atol=1e-5)


def test_a_clip_longer_than_the_adapter_attends_over_is_one_line(clips_dir, tmp_path):
    from stdtrt.distill.trainer import distill

    with pytest.raises(
        StdtrtError, match="--clip-frames 40 is longer than the 32 frames tiny-motion attends over"
    ):
        distill(_clip_cfg(clips_dir, tmp_path / "r", clip_frames=40, frame_stride=1), progress=False)
    assert not (tmp_path / "r" / "lora.safetensors").exists()


# -- the video student's bundle: the motion UNet in stream form, a window per slot ---------------------------
@pytest.fixture(scope="module")
def motion_bundle(motion_lora, tmp_path_factory):
    from stdtrt.config import ExportConfig
    from stdtrt.export.export import export_bundle

    cfg = ExportConfig(model="tiny-sd", motion_adapter="tiny-motion", lora=str(motion_lora / "lora.safetensors"),
                       window=4, width=48, height=40, out=str(tmp_path_factory.mktemp("vb") / "b"),
                       tensorrt=False, precision="fp32")  # fmt: skip
    return export_bundle(cfg, progress=False)


def test_a_video_bundle_is_validated_and_records_its_window(motion_bundle):
    """Export validates the motion UNet graph against the torch module, and one whole window through the
    stream pipe against the sequential motion student (export/validate.py); the manifest says the window."""
    from stdtrt.bundle.manifest import read_bundle

    bundle = read_bundle(motion_bundle.path)
    assert bundle.motion["adapter"] == "tiny-motion" and bundle.motion["window"] == 4 and bundle.batch == 4
    rows = {r["name"]: r for r in bundle.manifest.validation["rows"]}
    assert rows["frames (stream vs sequential torch)"]["ok"] and rows["unet (finished latents)"]["ok"]
    assert bundle.manifest.key_fields["motion"] == {
        "adapter": "tiny-motion",
        "window": 4,
        "noise_rule": "per-frame",
    }


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_a_video_bundle_stylizes_as_the_sequential_motion_student(backend, motion_bundle, motion_lora):
    """Nine frames in windows of 4 overlapping by 2 (four windows, the last padded): the bundle's stream
    form (four windows in flight) gives the frames of the sequential torch student on the same model."""
    from stdtrt.io.samples import sample_frames
    from stdtrt.runtime.stylize import load_runner, load_student
    from stdtrt.runtime.windows import WindowRunner

    frames = list(sample_frames(9, 48, 40))
    items = [(f, i) for i, f in enumerate(frames)]
    reference = StylizeConfig(model="tiny-sd", motion_adapter="tiny-motion", window=4, overlap=2,
                              lora=str(motion_lora / "lora.safetensors"), width=48, height=40)  # fmt: skip
    sequential = WindowRunner(load_student(reference, 48, 40), 4, 2)
    want = list(sequential.stylize(iter(items)))
    runner = load_runner(StylizeConfig(bundle=str(motion_bundle.path), backend=backend, overlap=2), 48, 40)
    assert "stream form: 4 windows in flight" in runner.describe()
    got = list(runner.stylize(iter(items)))
    assert [t for _, t in got] == list(range(9))
    for (a, _), (b, _) in zip(got, want, strict=True):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 2


@pytest.mark.parametrize(
    "changes,match",
    [
        ({"window": 8}, "exported for window 4, not 8"),
        ({"motion_adapter": "other-adapter"}, "exported for motion adapter 'tiny-motion'"),
        ({"skip_threshold": 0.9}, "belongs to the per-frame student"),
    ],
)
def test_a_video_bundle_refuses_what_it_was_not_made_for(changes, match, motion_bundle, video, tmp_path):
    from stdtrt.runtime.stylize import stylize_video

    cfg = StylizeConfig(bundle=str(motion_bundle.path), **changes)
    with pytest.raises(StdtrtError, match=match):
        stylize_video(cfg, video, tmp_path / "out.mp4")
    assert not (tmp_path / "out.mp4").exists()


def test_export_of_a_video_student_refuses_frames_per_step_and_long_windows(motion_lora, tmp_path):
    from stdtrt.config import ExportConfig
    from stdtrt.export.export import export_bundle

    with pytest.raises(StdtrtError, match="drop --frames-per-step"):
        ExportConfig(model="tiny-sd", motion_adapter="tiny-motion", frames_per_step=2)
    cfg = ExportConfig(model="tiny-sd", motion_adapter="tiny-motion", window=40, out=str(tmp_path / "b"),
                       lora=str(motion_lora / "lora.safetensors"), tensorrt=False)  # fmt: skip
    with pytest.raises(StdtrtError, match="--window 40 is longer than the 32 frames"):
        export_bundle(cfg, progress=False)
    assert not (tmp_path / "b").exists()


def test_a_video_bundle_in_fp16_validates(motion_lora, tmp_path):
    """The GPU's bundle: the motion UNet traced in fp16 (float32 islands, export/fp16.py), validated on
    onnxruntime against the float32 torch module and the sequential motion student within fp16's bounds."""
    from stdtrt.config import ExportConfig
    from stdtrt.export.export import export_bundle

    cfg = ExportConfig(model="tiny-sd", motion_adapter="tiny-motion", lora=str(motion_lora / "lora.safetensors"),
                       window=2, nfe=2, width=32, height=32, out=str(tmp_path / "b"), tensorrt=False,
                       precision="fp16")  # fmt: skip
    m = json.loads((export_bundle(cfg, progress=False).path / "manifest.json").read_text())
    assert m["precision"] == "fp16" and m["graphs"]["unet"]["precision"] == "fp16"
    assert all(r["ok"] for r in m["validation"]["rows"]) and len(m["validation"]["rows"]) == 5


def test_bench_times_a_video_bundle_in_windows(motion_bundle):
    from stdtrt.config import BenchConfig
    from stdtrt.eval.bench import run_bench

    path = str(motion_bundle.path)
    with pytest.raises(StdtrtError, match="motion UNet.*--no-baseline"):
        run_bench(BenchConfig(bundles=(path,), backends=("onnxruntime",), frames=6))
    # windows of 4 overlapping by 1: 3 frames leave per UNet call, 4 windows in flight, 6 windows in all
    (bench,) = run_bench(
        BenchConfig(bundles=(path,), backends=("onnxruntime",), frames=19, baseline=False)
    ).bundles
    (run,) = bench.runs
    assert "windows of 4 frames overlapping by 1" in run.describe
    assert 0 < run.steady_fps < 3 * run.fps  # a burst of 3 frames written at once is not a rate


@pytest.mark.parametrize("rule", ["per-frame", "shared"])
def test_distill_and_the_window_runner_noise_a_clip_alike(rule, clips_dir, tmp_path):
    """The one noise rule of the video student: distill's clip noise for a seed is the noise a video of that
    seed gets over its first window at inference; the rule goes into the LoRA and comes back out."""
    from accelerate import Accelerator

    from stdtrt.distill.run import Run
    from stdtrt.distill.trainer import distill
    from stdtrt.models.card import StudentCard
    from stdtrt.runtime.student import VideoNoise
    from stdtrt.runtime.stylize import load_runner

    cfg = _clip_cfg(clips_dir, tmp_path / "run", clip_noise=rule, max_steps=1)
    run = Run(_clip_cfg(clips_dir, tmp_path / "probe", clip_noise=rule), Accelerator(cpu=True))
    trained = run.variant.clip_noise([1234], (4, 4, 5, 6))[0]  # (4, F, h, w)
    runtime = VideoNoise((4, 5, 6), 1234, rule).at(0, 4).transpose(0, 1)
    assert torch.equal(trained, runtime)
    same = all(torch.equal(trained[:, 0], trained[:, f]) for f in range(1, 4))
    assert same == (rule == "shared")
    later = VideoNoise((4, 5, 6), 1234, rule)
    assert torch.equal(later.at(2, 4)[0], later.at(0, 4)[2])  # a frame's noise is its own in every window
    distill(cfg, progress=False)
    lora = tmp_path / "run" / "lora.safetensors"
    card = StudentCard.read(lora)
    assert card.noise_rule == rule and card.clip_frames == 4
    stylize = StylizeConfig(
        model="tiny-sd", motion_adapter="tiny-motion", lora=str(lora), width=48, height=40
    )
    runner = load_runner(stylize, 48, 40)
    assert runner.noise.rule == rule and runner.window == 4  # the default window: the trained clip length


def test_an_overlap_over_half_the_window_is_refused(motion_lora):
    from stdtrt.runtime.stylize import load_runner

    cfg = StylizeConfig(model="tiny-sd", motion_adapter="tiny-motion", lora=str(motion_lora / "lora.safetensors"),
                        window=4, overlap=3)  # fmt: skip
    with pytest.raises(StdtrtError, match=r"--overlap must be in \[0, window / 2\]"):
        load_runner(cfg, 48, 40)


def test_the_clip_std_step_matches_a_hand_computation(clips_dir, tmp_path):
    """distill/step.py's pure step on clips (B, 4, F, h, w) through the motion UNet, against std.md's
    formulas written out with plain UNetMotionModel calls (its text states once per frame, as diffusers'
    AnimateDiff pipelines pass them): the LCM-guided teacher DDIM step with the adapters off, the
    stop-gradient target from x_next, the student's jump, the pseudo-Huber loss; every frame of a clip at
    its clip's own t_n. R = 1 makes s = t_{n-2} deterministic."""
    from conftest import start_run

    from stdtrt.distill.step import Batch, StepPlan, std_step
    from stdtrt.distill.teacher import adapters_off

    run = start_run(_clip_cfg(clips_dir, tmp_path / "r"))
    torch.manual_seed(3)
    for p in run.lora_params.values():  # a non-zero adapter: student and teacher differ
        p.data.normal_(0, 0.05)
    g = torch.Generator().manual_seed(0)
    frames = run.cfg.clip_frames
    x = torch.randn(2, 4, frames, 4, 4, generator=g)
    n, w = torch.tensor([38, 20]), torch.tensor([5.0, 12.0])
    cond, uncond = run.prompts.map(lambda t: t[:1].expand(2, *t.shape[1:])), run.uncond.repeat(2)
    batch = Batch(x, n, torch.zeros_like(x), w, torch.zeros(2, dtype=torch.long), cond, uncond)
    out = std_step(batch, run._student, run._target_net, run.teacher, StepPlan(run.abar, 50, 1, "std", 1e-3),
                   g, run.loss_fn)  # fmt: skip

    def unet(x, t, c):
        return run.raw_unet(x, t, encoder_hidden_states=c.embeds.repeat_interleave(frames, 0)).sample

    abar = run.abar
    a = lambda t: abar[t].sqrt().view(-1, 1, 1, 1, 1)  # noqa: E731  (B,) -> (B, 1, 1, 1, 1): per clip
    b = lambda t: (1 - abar[t]).sqrt().view(-1, 1, 1, 1, 1)  # noqa: E731
    t, tp, s = (
        torch.tensor([779, 419]),
        torch.tensor([759, 399]),
        torch.tensor([739, 379]),
    )  # t_n, t_n-1, t_n-2
    with torch.no_grad():
        with adapters_off(run.raw_unet):
            e_c, e_u = unet(x, t, cond), unet(x, t, uncond)
        e_T = e_c + w.view(-1, 1, 1, 1, 1) * (e_c - e_u)
        x_next = a(tp) * (x - b(t) * e_T) / a(t) + b(tp) * e_T
        e_next = unet(x_next, tp, cond)
        target = a(s) * (x_next - b(tp) * e_next) / a(tp) + b(s) * e_next
        eps = unet(x, t, cond)
        pred = a(s) * (x - b(t) * eps) / a(t) + b(s) * eps
        loss = (((pred - target) ** 2 + 1e-6).sqrt() - 1e-3).mean()
    assert out.s.tolist() == s.tolist() and out.n_next.tolist() == [37, 19]
    for name, ours, ref in (
        ("x_next", out.x_next, x_next),
        ("target", out.target, target),
        ("pred", out.pred, pred),
    ):
        assert ours.shape == x.shape and torch.allclose(ours, ref, atol=1e-5), name
    assert abs(float(out.loss.detach()) - float(loss)) < 1e-6 and out.loss.requires_grad
    assert not torch.allclose(e_c, eps, atol=1e-3)  # the teacher really ran without the adapter
    assert not torch.allclose(eps[:, :, 0], eps[:, :, 1], atol=1e-4)  # the frames are not one image repeated


def test_per_step_blending_without_overlap_is_the_windows_and_its_windows_are_the_runners():
    """windows.sample_blended_per_step: its windows start where WindowRunner's do; with overlap 0 every
    window is one trajectory of its own (WindowRunner's result); with an overlap, the shared frames carry
    one state through the steps (not the clean-latent blend)."""
    from stdtrt import schedule
    from stdtrt.runtime.student import Student
    from stdtrt.runtime.windows import WindowRunner, sample_blended_per_step, window_starts, window_weights

    model = load_model("tiny-sd", motion_adapter="tiny-motion")
    plan = schedule.student_plan(model.alphas_cumprod(), 0.75, 2)
    student = Student(model, plan, "a cat", 16, 16)
    runner = WindowRunner(student, 4, 2)
    for n in (3, 4, 5, 6, 8, 9, 10):
        starts = [s for _, _, s in runner._windows([(None, i) for i in range(n)])]
        assert window_starts(n, 4, 2) == starts, n
    w = [window_weights(4, 2, k == 0, k == 2) for k in range(3)]
    assert torch.allclose(w[0][2:] + w[1][:2], torch.ones(2)) and w[0][0] == w[2][-1] == 1
    g = torch.Generator().manual_seed(0)
    z0, noise = torch.randn(8, 4, 2, 2, generator=g), torch.randn(8, 4, 2, 2, generator=g)
    alone = torch.cat([student.sample(z0[s : s + 4].transpose(0, 1)[None], noise[s : s + 4].transpose(0, 1)[None])[0]
                       .transpose(0, 1) for s in (0, 4)])  # fmt: skip
    torch.testing.assert_close(sample_blended_per_step(student, z0, noise, 4, 0), alone, rtol=1e-5, atol=1e-6)
    blended = sample_blended_per_step(student, z0[:6], noise[:6], 4, 2)
    assert blended.shape == (6, 4, 2, 2) and not torch.allclose(blended[:4], alone[:4])
