"""Frozen, validated configurations: the only home of defaults (the CLI reads its defaults from here).

This module imports no torch, so `stdtrt --help` stays fast.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from stdtrt.errors import StdtrtError

BACKENDS = ("auto", "tensorrt", "onnxruntime", "torch")
PRECISIONS = ("fp32", "fp16")
# The folder `stdtrt export` writes and `stylize-*` / `bench` read when no --bundle is given.
DEFAULT_BUNDLE = "stdtrt-engine"


def check_strength(strength: float) -> None:
    if not 0.0 < strength <= 1.0:
        raise StdtrtError(
            f"strength must be in (0, 1], got {strength} (0.75 keeps the layout, 1.0 is pure noise)"
        )


def check_size(name: str, value: int | None) -> None:
    if value is not None and (value <= 0 or value % 8):
        raise StdtrtError(f"{name} must be a positive multiple of 8 (the VAE downsamples by 8), got {value}")


def check_nfe(nfe: int) -> None:
    if nfe < 1:
        raise StdtrtError(f"nfe (number of student steps) must be at least 1, got {nfe}")


def check_student(cfg) -> None:
    """What StylizeConfig and ExportConfig share: the student's strength, steps, size, guidance, precision."""
    check_strength(cfg.strength)
    check_nfe(cfg.nfe)
    check_size("width", cfg.width)
    check_size("height", cfg.height)
    if cfg.guidance < 0:
        raise StdtrtError(f"guidance must be >= 0, got {cfg.guidance}")
    if cfg.precision not in ("auto", *PRECISIONS):
        raise StdtrtError(f"precision must be auto, fp16 or fp32, got {cfg.precision!r}")


@dataclass(frozen=True)
class StylizeConfig:
    """How to stylize images and videos (the `stylize-image`, `stylize-video` and `demo` commands)."""

    model: str | None = None  # diffusers folder, cached hub id, or a preset (tiny-sd, tiny-sdxl)
    lora: str | None = None  # a distilled student (kohya or diffusers LoRA safetensors)
    bundle: str | None = None  # an exported engine bundle folder (replaces model/lora/prompt)
    prompt: str = ""  # the style prompt
    negative_prompt: str = ""  # only used when guidance > 1
    strength: float = 0.75  # eta: how far into the noise the content goes; 0.75 is what STD trains
    nfe: int = 4  # student steps (UNet evaluations per frame, x2 with guidance > 1)
    guidance: float = 1.0  # classifier-free guidance at inference; a distilled student wants 1
    gamma: float = 0.0  # TCD stochasticity; 0 is deterministic (what the exported engine does)
    seed: int = 0  # seeds the per-video noise
    fresh_noise: bool = False  # new noise for every frame (flickers; only for comparisons)
    width: int | None = None  # working size; None keeps the aspect near the model's native size
    height: int | None = None
    backend: str = "auto"  # auto|tensorrt|onnxruntime|torch (auto = the fastest that works)
    device: str = "auto"  # auto (cuda if available) | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (fp16 on CUDA, fp32 on CPU) | fp16 | fp32
    batch_size: int = 1  # frames per UNet call on the torch path
    queue_size: int = 8  # frames buffered between decode, stylize and encode
    crf: int = 18  # H.264 quality of the output video (lower is better)

    def __post_init__(self) -> None:
        check_student(self)
        if not 0.0 <= self.gamma < 1.0:
            raise StdtrtError(f"gamma must be in [0, 1), got {self.gamma}")
        if self.backend not in BACKENDS:
            raise StdtrtError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.batch_size < 1 or self.queue_size < 1:
            raise StdtrtError("batch size and queue size must be at least 1")
        if not 0 <= self.crf <= 51:
            raise StdtrtError(f"crf must be in [0, 51], got {self.crf}")


@dataclass(frozen=True)
class ExportConfig:
    """What to export (the `export` command): a fused, fixed-timestep student as an engine bundle."""

    model: str | None = None  # required: diffusers folder, cached hub id, or a preset
    lora: str | None = None  # the distilled student; None exports the plain teacher at NFE steps
    prompt: str = ""  # the style prompt: its embeddings become constants of the UNet graph
    negative_prompt: str = ""  # the unconditional branch's prompt (only with guidance > 1)
    strength: float = 0.75  # eta; the start timestep is baked into the graph
    nfe: int = 4  # student steps = slots of the stream-form UNet graph
    guidance: float = 1.0  # > 1 bakes both CFG branches into the graph (UNet batch 2 x NFE)
    width: int | None = None  # working size; None = the model's native size (square)
    height: int | None = None
    precision: str = "auto"  # auto (fp16 where TensorRT builds engines here, else fp32) | fp16 | fp32
    out: str = DEFAULT_BUNDLE  # the bundle folder
    tensorrt: bool | None = None  # None: build .plan engines when CUDA and TensorRT are here; True: must
    overwrite: bool = False  # replace a folder that holds a different bundle
    opset: int = 18  # ONNX opset: 17+ has LayerNormalization; TensorRT 10 parses up to 20
    workspace_gb: float = 8.0  # TensorRT builder workspace limit
    validate: bool = True  # onnxruntime vs torch per graph and for one frame (fails over tolerance)
    seed: int = 0  # seeds the validation inputs

    def __post_init__(self) -> None:
        if not self.model:
            raise StdtrtError(
                "no model given: pass --model PATH_OR_ID (or --model tiny-sd to try it offline)"
            )
        check_student(self)
        if self.opset < 17:
            raise StdtrtError(f"opset must be 17 or newer (LayerNormalization), got {self.opset}")
        if self.workspace_gb <= 0:
            raise StdtrtError(f"workspace must be positive, got {self.workspace_gb} GB")
        if not self.out:
            raise StdtrtError("the bundle folder (--out) must not be empty")


@dataclass(frozen=True)
class BenchConfig:
    """What `stdtrt bench` measures: every usable backend on one bundle, and diffusers' img2img pipeline."""

    bundle: str | None = None  # None = the default bundle folder
    frames: int = 12  # frames of the generated test clip at the bundle's size (> NFE for a steady state)
    backends: tuple[str, ...] = ()  # empty = every backend that loads here
    baseline: bool = True  # also time diffusers' own img2img pipeline (TCD scheduler) on the same frames
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    plot: str | None = None  # write a PNG chart here
    json: str | None = None  # write the results as JSON here

    def __post_init__(self) -> None:
        if self.frames < 2:
            raise StdtrtError(f"bench needs at least 2 frames, got {self.frames}")
        bad = [b for b in self.backends if b not in BACKENDS or b == "auto"]
        if bad:
            raise StdtrtError(f"unknown backend {bad[0]!r}; choose from tensorrt, onnxruntime, torch")
        if self.plot and not self.plot.lower().endswith(".png"):
            raise StdtrtError(f"--plot must name a .png file, got {self.plot}")


def replace(cfg, **changes):
    """dataclasses.replace that re-runs validation (frozen configs are changed only through this)."""
    return dataclasses.replace(cfg, **changes)


def defaults(cls) -> dict:
    """Field name -> default, for click options."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            out[f.name] = f.default_factory()  # type: ignore[misc]
    return out


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


__all__ = [
    "BenchConfig",
    "DEFAULT_BUNDLE",
    "ExportConfig",
    "StylizeConfig",
    "StdtrtError",
    "defaults",
    "field",
    "replace",
    "to_dict",
]
