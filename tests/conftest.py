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
    from stdtrt.models import load_model

    return load_model("tiny-sd")


@pytest.fixture(scope="session")
def tiny_sdxl():
    from stdtrt.models import load_model

    return load_model("tiny-sdxl")


def make_video(
    path: Path, frames: int = 8, size=(96, 64), fps=8, audio=True, repeat=False, faststart=False
) -> Path:
    """A short real-content video (a photograph panned), optionally with a tone track."""
    from stdtrt.demo import sample_frames, tone
    from stdtrt.runtime.video import write_video

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

    from stdtrt.demo import sample_frames

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
        lora_alpha=4.0,
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

    from stdtrt.distill.train import Run, prepare_out_dir

    prepare_out_dir(cfg, False, False)
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    return Run(cfg, Accelerator(cpu=True))


__all__ = ["make_video", "frames_of", "small", "losses", "start_run"]
