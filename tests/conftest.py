"""Shared fixtures: tiny real models built from config with a fixed seed, short real videos, and an
isolated, offline Hugging Face cache so no test can reach (or depend on) a hub."""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture(scope="module")
def one_cpu_thread():
    """For the export and runtime tests (`pytestmark = pytest.mark.usefixtures("one_cpu_thread")`): the
    tiny models' ops are too small to gain from threads, and when another process shares the CPU,
    OpenMP's barrier waits make every tiny op up to 100x slower (measured: 0.03 s vs 9 s for one tiny-sdxl
    sample). Not for the whole suite: some older tests compare H.264 output of runs whose floats agree to
    1e-6, and a one-thread conv rounds a few pixels across a level, which the encoder then amplifies."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True, scope="session")
def _isolated_caches(tmp_path_factory):
    root = tmp_path_factory.mktemp("caches")
    os.environ["STDTRT_CACHE"] = str(root / "stdtrt")
    os.environ["HF_HUB_CACHE"] = str(root / "hf")
    import huggingface_hub.constants as c

    c.HF_HUB_CACHE = str(root / "hf")
    yield


@pytest.fixture(scope="session")
def tiny_sd():
    from stdtrt.models.load import load_model

    return load_model("tiny-sd")


@pytest.fixture(scope="session")
def tiny_sdxl():
    from stdtrt.models.load import load_model

    return load_model("tiny-sdxl")


def make_video(
    path: Path, frames: int = 8, size=(96, 64), fps=8, audio=True, repeat=False, faststart=False
) -> Path:
    """A short real-content video (a photograph panned), optionally with a tone track."""
    from stdtrt.io.samples import sample_frames, tone
    from stdtrt.io.video import write_video

    w, h = size
    if repeat:
        first = next(sample_frames(1, w, h))
        source = (first for _ in range(frames))
    else:
        source = sample_frames(frames, w, h)
    write_video(path, source, Fraction(fps), audio=tone(frames / fps) if audio else None)
    if faststart:  # rewrite with the index first, so a cut file still opens
        import av

        src, tmp = av.open(str(path)), path.with_suffix(".fs.mp4")
        out = av.open(str(tmp), "w", options={"movflags": "faststart"})
        streams = {s.index: out.add_stream_from_template(s) for s in src.streams}
        for packet in src.demux():
            if packet.dts is not None:
                packet.stream = streams[packet.stream.index]
                out.mux(packet)
        out.close()
        src.close()
        os.replace(tmp, path)
    return path


@pytest.fixture
def video(tmp_path):
    return make_video(tmp_path / "in.mp4")


def frames_of(path: Path) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    from PIL import Image

    from stdtrt.io.samples import sample_frames

    folder = tmp_path_factory.mktemp("data")
    for i, rgb in enumerate(sample_frames(4, 48, 40)):
        Image.fromarray(rgb).save(folder / f"img{i}.png")
    (folder / "img0.txt").write_text("an astronaut")
    return folder


def small(data_dir, out, **changes):
    """A distillation config small enough for a CPU test: tiny-sd, 32 px, rank 4, batch 2."""
    from stdtrt.config import DistillConfig

    base = dict(
        model="tiny-sd",
        data=str(data_dir),
        out=str(out),
        prompt="a photo",
        max_steps=4,
        batch_size=2,
        bank_size=4,
        resolution=32,
        lora_rank=4,
        lora_alpha=2.0,  # not the rank: a load path that drops alpha / rank fails the tests
        compile_loss=False,
        log_every=1,
        checkpoint_every=100,
        warmup_steps=0,
        lr=1e-3,
    )
    base.update(changes)
    return DistillConfig(**base)


def losses(out: Path) -> list[float]:
    import json

    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def start_run(cfg):
    """A training Run (one process, CPU) for tests that drive single steps."""
    from accelerate import Accelerator

    from stdtrt.distill.checkpoint import prepare_out_dir
    from stdtrt.distill.run import Run
    from stdtrt.distill.trainer import mixed_precision

    prepare_out_dir(cfg, False, False)
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    return Run(cfg, Accelerator(cpu=True, mixed_precision=mixed_precision(cfg.mixed_precision)))


def assert_two_steps_match_fp32(cfg_for, precision: str, rtol: float, check_half=None) -> None:
    """Two optimiser steps of a Run on cfg_for("no") and two on cfg_for(precision) (accelerate's state
    reset around each; `check_half(run)` asserts on the half one before it steps): their losses and gradient
    norms agree within rtol, and the first losses differ (it did run in half precision)."""
    from accelerate.state import AcceleratorState

    steps = {}
    try:
        for mp in ("no", precision):
            AcceleratorState._reset_state(True)
            run = start_run(cfg_for(mp))
            if mp != "no" and check_half is not None:
                check_half(run)
            steps[mp] = [run.optimise() for _ in range(2)]
    finally:
        AcceleratorState._reset_state(True)
    for ours, ref in zip(steps[precision], steps["no"], strict=True):
        for key in ("loss_std", "grad_norm"):
            assert ours[key] == pytest.approx(ref[key], rel=rtol), key
    assert steps[precision][0]["loss_std"] != steps["no"][0]["loss_std"]  # it did run in half precision


# -- exported bundles (tests of `stdtrt export` and of the runtime that reads them) --------------------------
def make_lora(preset: str, folder: Path) -> Path:
    """A random non-zero LoRA for a preset's UNet (a zero adapter would hide a broken merge)."""
    import torch

    from stdtrt.models.load import load_model
    from stdtrt.models.lora import add_lora, save_kohya

    model = load_model(preset)
    torch.manual_seed(7)
    add_lora(model.unet, rank=4, alpha=2.0, init=False)
    return save_kohya(model.unet, folder / f"{preset}-lora.safetensors", {"eta": 0.75})


def export_tiny(folder: Path, preset: str, guidance: float, **changes):
    from stdtrt.config import ExportConfig
    from stdtrt.export.export import export_bundle

    lora = make_lora(preset, folder)
    cfg = ExportConfig(
        model=preset, lora=str(lora), prompt="an oil painting", width=64, height=64, guidance=guidance,
        out=str(folder / "bundle"), **{"tensorrt": False, "precision": "fp32", **changes},
    )  # fmt: skip
    return cfg, export_bundle(cfg, progress=False)


@pytest.fixture(scope="session")
def sd_bundle(tmp_path_factory):
    """tiny-sd + LoRA, guidance 1 (one UNet branch), 64x64, NFE 4: (ExportConfig, ExportResult)."""
    return export_tiny(tmp_path_factory.mktemp("sd-bundle"), "tiny-sd", 1.0)


@pytest.fixture(scope="session")
def sdxl_bundle(tmp_path_factory):
    """tiny-sdxl + LoRA, guidance 2.5 (both CFG branches baked in), 64x64, NFE 4."""
    return export_tiny(tmp_path_factory.mktemp("sdxl-bundle"), "tiny-sdxl", 2.5)


def copy_bundle(fixture, tmp_path: Path) -> Path:
    """A copy of a session bundle that a test may damage."""
    import shutil

    dst = tmp_path / "bundle"
    shutil.copytree(fixture[1].path, dst)
    return dst


__all__ = ["make_video", "frames_of", "small", "losses", "start_run"]


# -- the training step's oracle -------------------------------------------------------------------------
def hand_step(run, x, n, w, s, eps_units=False):
    """std.md's training step written out with plain UNet calls (the oracle of distill/step.py's tests):
    the LCM-guided teacher DDIM step (adapters off), the stop-gradient student's target from x_next, the
    student's jump, the pseudo-Huber loss, landing on the given s ((B,) timesteps); batch of 2, prompt 0.
    Returns a namespace of x_next, target, pred, loss, cond, uncond, e_c (the teacher's conditional eps)
    and eps (the student's)."""
    from types import SimpleNamespace

    import torch

    from stdtrt.distill.teacher import adapters_off

    abar = run.abar

    def a(t):
        return abar[t].sqrt().view(-1, 1, 1, 1)

    def b(t):
        return (1 - abar[t]).sqrt().view(-1, 1, 1, 1)

    cond, uncond = run.prompts.map(lambda t: t[:1].expand(2, *t.shape[1:])), run.uncond.repeat(2)

    def unet(x, t, c):
        return run.raw_unet(x, t, encoder_hidden_states=c.embeds).sample

    t, tp = 20 * (n + 1) - 1, 20 * n - 1
    with torch.no_grad():
        with adapters_off(run.raw_unet):
            e_c, e_u = unet(x, t, cond), unet(x, t, uncond)
        e_T = e_c + w.view(-1, 1, 1, 1) * (e_c - e_u)
        x_next = a(tp) * (x - b(t) * e_T) / a(t) + b(tp) * e_T
        e_next = unet(x_next, tp, cond)
        target = a(s) * (x_next - b(tp) * e_next) / a(tp) + b(s) * e_next
        eps = unet(x, t, cond)
        pred = a(s) * (x - b(t) * eps) / a(t) + b(s) * eps
        diff = pred - target
        if eps_units:  # divided by |d pred / d eps| = |b_s - a_s b_t / a_t|
            diff = diff / (b(s) - a(s) * b(t) / a(t)).abs()
        loss = ((diff**2 + 1e-6).sqrt() - 1e-3).mean()
    return SimpleNamespace(
        x_next=x_next, target=target, pred=pred, loss=loss, cond=cond, uncond=uncond, e_c=e_c, eps=eps
    )


def perturbed_run(data_dir, out):
    """A training Run on `small` settings whose LoRA is non-zero, so that student and teacher differ."""
    import torch

    run = start_run(small(data_dir, out))
    torch.manual_seed(3)
    for p in run.lora_params.values():
        p.data.normal_(0, 0.05)
    return run


def step_case(run, seed: int, mode: str = "std", **plan_options):
    """One pure training step (distill/step.py) on two random states at grid indices 38 and 20, guidance
    5 and 12, prompt 0, window R = 1: returns (x, n, w, its StepResult)."""
    import torch

    from stdtrt.distill.step import Batch, StepPlan, std_step

    g = torch.Generator().manual_seed(seed)
    x, n, w = torch.randn(2, 4, 4, 4, generator=g), torch.tensor([38, 20]), torch.tensor([5.0, 12.0])
    cond, uncond = run.prompts.map(lambda t: t[:1].expand(2, *t.shape[1:])), run.uncond.repeat(2)
    batch = Batch(x, n, torch.zeros_like(x), w, torch.zeros(2, dtype=torch.long), cond, uncond)
    plan = StepPlan(run.abar, 50, 1, mode, 1e-3, **plan_options)
    return x, n, w, std_step(batch, run._student, run._target_net, run.teacher, plan, g, run.loss_fn)


def run_cli(argv, capsys):
    """`stdtrt ARGV` in this process: (exit code, stdout, stderr); a command that returns exits 0."""
    from stdtrt.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
        raise SystemExit(0)
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err
