"""Cached cross-frame attention (issue 20): the ring's rule, feature fusion, the stream form against the
sequential student frame by frame, every backend and precision, and the bad input around it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import frames_of, make_video, run_cli

from stdtrt import schedule
from stdtrt.config import ExportConfig, StylizeConfig
from stdtrt.errors import StdtrtError
from stdtrt.io.samples import sample_frames
from stdtrt.models.attention_cache import (
    AttentionCache,
    CachedSelfAttention,
    CacheSettings,
    _Call,
    _fuse,
    _Layer,
)
from stdtrt.models.load import load_model
from stdtrt.runtime.backends.torch import TorchBackend
from stdtrt.runtime.stream import StreamState
from stdtrt.runtime.student import Student, VideoNoise

pytestmark = pytest.mark.usefixtures("one_cpu_thread")
W, H = 64, 48


def test_the_ring_is_written_every_frame_and_advanced_every_interval():
    """Each frame writes its keys into the newest place; every interval-th frame first drops the oldest.
    Values are the frame's number, so the ring's content reads as frame numbers."""
    frames, interval = 3, 2
    cache = AttentionCache(CacheSettings(frames, interval))
    cache.layers = [_Layer("l", tokens=1, channels=1, offset=0, fuse=False)]
    state = torch.full((1, 3 * frames), -7.0)  # never written: must not survive frame 0
    seen = []
    for f in range(7):
        call = _Call(state, torch.tensor([f]))
        block = cache.read(call, 0, 1)
        own = torch.full((1, 1, 1), float(f))
        fresh = torch.tensor(f == 0)
        old = tuple(
            torch.where(fresh, own.unsqueeze(1).expand(-1, frames, -1, -1), block[:, j]) for j in range(3)
        )
        cache.write(call, 0, old, (own, own, own))
        state = call.written[0]
        seen.append(state.view(3, frames)[0].tolist())
    # frame 0 fills every place; then the newest place is always the frame just written, and the older ones
    # move on only at frames 2, 4, 6 (the interval)
    assert seen == [[0, 0, 0], [0, 0, 1], [0, 1, 2], [0, 1, 3], [1, 3, 4], [1, 3, 5], [3, 5, 6]]
    call = _Call(state, torch.tensor([-1]))  # a slot that holds no frame keeps its cache
    cache.write(call, 0, tuple(cache.read(call, 0, 1)[:, j] for j in range(3)), (own * 99,) * 3)
    assert torch.equal(call.written[0], state)


def test_feature_fusion_pulls_only_near_copies():
    cached = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])  # (rows 1, F 1, T 2, C 2)
    out = torch.tensor([[[2.0, 0.02], [1.0, 1.0]]])  # token 0 nearly parallel to cached token 0; token 1 not
    fused = _fuse(out, cached, 0.8)
    assert torch.allclose(fused[0, 0], out[0, 0] + 0.8 * (cached[0, 0, 0] - out[0, 0]))
    assert torch.equal(fused[0, 1], out[0, 1])


def _latents_sequential(model, plan, settings, z0s, noise, guidance=1.0):
    student = Student(model, plan, "a photo", W, H, "", guidance, None, settings)
    return torch.cat([student.sample(z[None], noise) for z in z0s])


def _latents_stream(model, plan, settings, z0s, guidance=1.0):
    backend = TorchBackend.from_model(model, plan, "a photo", "", guidance, W, H, 1, None, settings)
    noise = VideoNoise(backend.latent_shape, 0)
    state, out = StreamState(backend, noise.take), []
    for i, z in enumerate(z0s):
        out += [lat for lat, _ in state.push(z[None], [i])]
    out += [lat for lat, _ in state.flush()]
    return torch.cat(out)


@pytest.fixture(scope="module")
def clip_latents():
    model = load_model("tiny-sd")
    frames = np.stack(list(sample_frames(6, W, H)))
    student = Student(model, schedule.student_plan(model.alphas_cumprod(), 0.75, 4, 0.0), "", W, H)
    with torch.no_grad():
        return student.encode(torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1)


@pytest.mark.parametrize(
    "settings,guidance",
    [(CacheSettings(1), 1.0), (CacheSettings(2, 2), 3.0), (CacheSettings(4, 1, 1.0), 1.0)],
)
def test_stream_equals_sequential_and_the_cache_acts(settings, guidance, clip_latents):
    model = load_model("tiny-sd")
    plan = schedule.student_plan(model.alphas_cumprod(), 0.75, 4, 0.0)
    noise = VideoNoise(model.latent_shape(W, H), 0).take(1)
    seq = _latents_sequential(model, plan, settings, clip_latents, noise, guidance)
    stream = _latents_stream(load_model("tiny-sd"), plan, settings, clip_latents, guidance)
    plain = _latents_sequential(load_model("tiny-sd"), plan, None, clip_latents, noise, guidance)
    rms = float(plain.pow(2).mean().sqrt())
    moved = (seq - plain).abs().amax(dim=(1, 2, 3))  # what the cache does to each frame
    assert moved[0] <= 2e-6 * rms  # frame 0 attends as without a cache (its own keys, duplicated)
    assert (moved[1:] > 1e-4 * rms).all(), moved  # every later frame sees the earlier ones
    diff = (stream - seq).abs()
    if settings.fusion:  # a token nearly as close to two cached frames may be pulled to either (argmax)
        assert diff.mean() <= 1e-5 * rms and diff.max() < 0.5 * moved[1:].min()
    else:
        assert diff.max() <= 2e-6 * rms, diff.max()  # the same frames through the same caches


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 0.02), (torch.bfloat16, 0.08)])
def test_the_cache_runs_in_half_precision(dtype, tol, clip_latents):
    from stdtrt.models.load import placement_for

    plan = None
    outs = {}
    for d in (torch.float32, dtype):
        model = load_model("tiny-sd")
        model.place(placement_for(torch.device("cpu"), d, model.kind, model.vae.config))
        plan = plan or schedule.student_plan(model.alphas_cumprod(), 0.75, 4, 0.0)
        outs[d] = _latents_stream(model, plan, CacheSettings(2, 1, 0.8), clip_latents)
    scale = outs[torch.float32].abs().max()
    err = (outs[dtype] - outs[torch.float32]).abs().max() / scale
    assert torch.isfinite(outs[dtype]).all() and 0 < err < tol, err


def test_each_video_on_a_loaded_student_starts_with_an_empty_cache():
    """--cache-frames with --gamma > 0 runs the sequential student; a second video on the same loaded
    student (stylize-batch's worker keeps it) gives the first video's frames: the caches and the frame
    count start afresh with each runner."""
    from stdtrt.runtime.student import StudentRunner
    from stdtrt.runtime.stylize import load_runner

    cfg = StylizeConfig(model="tiny-sd", width=W, height=H, cache_frames=2, gamma=0.3)
    items = [(f, i) for i, f in enumerate(sample_frames(4, W, H))]
    first = load_runner(cfg, W, H)
    assert isinstance(first, StudentRunner)
    want = list(first.stylize(iter(items)))
    got = list(StudentRunner(first.student, cfg, first.noise.rule).stylize(iter(items)))
    assert all(np.array_equal(a, b) for (a, _), (b, _) in zip(got, want, strict=True))


def test_skipped_frames_do_not_write_the_cache(tmp_path):
    """A frame the similarity filter skips never enters the pipe, so the cache's frame count (the ring's
    clock) counts only the frames that went through the networks."""
    from stdtrt.io.video import probe
    from stdtrt.runtime.stylize import load_runner, run_video

    src = make_video(tmp_path / "still.mp4", frames=8, size=(W, H), audio=False, repeat=True)
    cfg = StylizeConfig(model="tiny-sd", width=W, height=H, cache_frames=2, skip_threshold=0.99, max_skips=2)
    info = probe(src)
    runner = load_runner(cfg, info.width, info.height)
    result = run_video(runner, info, tmp_path / "out.mp4", cfg, progress=False)
    # 8 still frames, at most 2 reuses in a row: frames 0, 3 and 6 go through the networks
    assert result.frames == 8 and result.skipped == 5 and runner.state.entered == 3


def test_a_bundle_with_a_cache_runs_on_every_backend_as_the_model_path(tmp_path):
    from stdtrt.bundle.manifest import read_bundle
    from stdtrt.export.export import export_bundle
    from stdtrt.runtime.stylize import stylize_video

    bundle = tmp_path / "cached"
    result = export_bundle(ExportConfig(model="tiny-sd", out=str(bundle), width=W, height=H, cache_frames=2,
                                        cache_interval=2, tensorrt=False), progress=False)  # fmt: skip
    assert "attention cache" in result.table and read_bundle(bundle).cache["frames"] == 2
    from stdtrt.runtime.backends import load_backend

    for backend in ("onnxruntime", "torch"):  # each backend runs the graph with its cache in and out
        loaded = load_backend(read_bundle(bundle), backend, "cpu")
        assert "cache" in loaded.step_inputs and "cache_next" in loaded.step_outputs, backend
    src = make_video(tmp_path / "in.mp4", frames=6, size=(W, H), audio=False)
    outs = {}
    for backend in ("onnxruntime", "torch"):
        cfg = StylizeConfig(bundle=str(bundle), backend=backend)
        outs[backend] = frames_of(stylize_video(cfg, src, tmp_path / f"{backend}.mp4", progress=False).output)
    model = StylizeConfig(model="tiny-sd", width=W, height=H, cache_frames=2, cache_interval=2)
    outs["model"] = frames_of(stylize_video(model, src, tmp_path / "model.mp4", progress=False).output)
    for name in ("torch", "model"):
        diff = max(
            np.abs(a.astype(int) - b.astype(int)).max()
            for a, b in zip(outs["onnxruntime"], outs[name], strict=True)
        )
        assert diff <= 2, (name, diff)
    for wrong, match in (
        ({"cache_frames": 1}, "cache frames 2, not 1"),
        ({"cache_interval": 1}, "cache interval"),
    ):
        with pytest.raises(StdtrtError, match=match):
            stylize_video(
                StylizeConfig(bundle=str(bundle), explicit=tuple(wrong), **wrong), src, tmp_path / "x.mp4"
            )


@pytest.mark.parametrize(
    "options,match",
    [
        ({"cache_frames": 5}, r"--cache-frames must be in 0..4"),
        ({"cache_frames": 2, "cache_interval": 0}, "--cache-interval must be at least 1"),
        ({"cache_frames": 2, "feature_fusion": 1.5}, r"--feature-fusion must be in \[0, 1\]"),
        ({"feature_fusion": 0.8}, "need --cache-frames 1 or more"),
        ({"cache_frames": 2, "motion_adapter": "tiny-motion"}, "motion modules already attend"),
        ({"cache_frames": 2, "frames_per_step": 2}, "drop --frames-per-step"),
    ],
)
def test_bad_cache_options_are_one_line(options, match):
    for cls in (StylizeConfig, ExportConfig):
        with pytest.raises(StdtrtError, match=match):
            cls(model="tiny-sd", **options)


def test_a_bundle_without_a_cache_refuses_one(tmp_path, capsys):
    from stdtrt.cli import main
    from stdtrt.export.export import export_bundle

    bundle = tmp_path / "plain"
    export_bundle(ExportConfig(model="tiny-sd", out=str(bundle), width=W, height=H, validate=False,
                               tensorrt=False), progress=False)  # fmt: skip
    src = make_video(tmp_path / "in.mp4", frames=2, size=(W, H), audio=False)
    with pytest.raises(SystemExit) as code:
        main(
            [
                "stylize-video",
                str(src),
                "-o",
                str(tmp_path / "o.mp4"),
                "--bundle",
                str(bundle),
                "--cache-frames",
                "2",
                "--trust-unvalidated",
            ]
        )
    err = capsys.readouterr().err.strip().splitlines()
    assert code.value.code == 2 and len(err) == 1 and "cache frames 0, not 2" in err[0]


def _stylized_frames(src, out) -> None:
    """`stylize-video --model tiny-sd --fresh-noise` of `src` at 64x64 as the frames the writer is handed
    (saved to `out`, .npy): the networks' output, before H.264 (whose encoder may round differently)."""
    from stdtrt.io import video
    from stdtrt.runtime.pipeline import compose
    from stdtrt.runtime.stylize import load_runner

    cfg = StylizeConfig(model="tiny-sd", prompt="an oil painting", width=64, height=64, fresh_noise=True)
    info = video.probe(src)
    runner = load_runner(cfg, info.width, info.height)
    frames = video.read_frames(info, runner.width, runner.height)
    np.save(out, np.stack([rgb for rgb, _ in compose(runner.stages())(frames)]))


def _process_state() -> dict:
    """What a run could leave behind in the process besides models: the random generators' states and
    torch's global settings."""
    import random

    return {
        "torch_rng": torch.random.get_rng_state().tolist(),
        "numpy_rng": np.random.get_state()[1].tolist(),
        "python_rng": random.getstate(),
        "default_dtype": torch.get_default_dtype(),
        "grad": torch.is_grad_enabled(),
        "threads": (torch.get_num_threads(), torch.get_num_interop_threads()),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "matmul_precision": torch.get_float32_matmul_precision(),
    }


def test_a_cached_run_leaves_the_next_run_as_a_fresh_process_has_it(tmp_path, capsys):
    """A run with the attention cache, then a --fresh-noise run in the same process: the second gives the
    frames it gives alone in a fresh one-thread process (nothing of the first, its processors on a UNet, a
    model, the RNG or torch's settings, reaches it)."""
    src = make_video(tmp_path / "long.mp4", frames=20, size=(64, 64))
    cached = ["stylize-video", str(src), "-o", str(tmp_path / "cached.mp4"), "--model", "tiny-sd", "--width",
              "64", "--height", "64", "--cache-frames", "2", "--cache-interval", "2", "--no-progress"]  # fmt: skip
    before = _process_state()
    assert run_cli(cached, capsys)[0] == 0
    assert _process_state() == before
    # a model loaded after it is a new one: the cache's processors stayed on the run's own UNet (leftover
    # ones attend as diffusers' do while no cache is passed, so the frames alone would not show them)
    unet = load_model("tiny-sd").unet
    assert not hasattr(unet, "_stdtrt_attention_cache")
    assert not any(isinstance(p, CachedSelfAttention) for p in unet.attn_processors.values())
    _stylized_frames(src, tmp_path / "after.npy")
    code = f"import sys; sys.path[:0] = [{str(Path(__file__).parent)!r}]; import test_attention_cache as t; "
    code += f"t._stylized_frames({str(src)!r}, {str(tmp_path / 'alone.npy')!r})"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    after, alone = np.load(tmp_path / "after.npy"), np.load(tmp_path / "alone.npy")
    assert after.shape == (20, 64, 64, 3) and np.array_equal(after, alone)
