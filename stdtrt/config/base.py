"""What every configuration shares: the backends and precisions, the one device parser, the size and
strength rules, `opt` (a field with its help, from which the CLI makes its option), defaults and to_dict.
Imports no torch, so `stdtrt --help` stays fast."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from stdtrt.errors import StdtrtError

BACKENDS = ("auto", "tensorrt", "onnxruntime", "torch")

PRECISIONS = ("auto", "fp32", "fp16", "bf16")  # see models/load.py: the one precision rule
DISTILL_MODES = ("std", "lcm", "tcd", "pcm")  # distill/step.py MODES says what each one trains
# The folder `stdtrt export` writes and `stylize-*` / `bench` read when no --bundle is given.
DEFAULT_BUNDLE = "stdtrt-engine"


@dataclass(frozen=True)
class DeviceName:
    """A --device as written: auto, cpu, cuda or cuda:N (the one parser of device strings; models/load.py
    resolves it against the GPUs torch sees)."""

    kind: str  # "auto", "cpu" or "cuda"
    index: int | None = None  # N of cuda:N

    @property
    def gpu(self) -> int:
        """The GPU it names: N, else 0 ("auto" and "cuda" mean the first)."""
        return self.index or 0


def parse_device(name: str) -> DeviceName:
    kind, _, index = str(name).partition(":")
    if kind in ("auto", "cpu") and not index:
        return DeviceName(kind)
    if kind == "cuda" and (not index or index.isdigit()):
        return DeviceName("cuda", int(index) if index else None)
    raise StdtrtError(f"device {name!r} is not one of auto, cpu, cuda, cuda:N")


def cache_root() -> Path:
    """stdtrt's own cache folder ($STDTRT_CACHE, else ~/.cache/stdtrt)."""
    return Path(os.environ.get("STDTRT_CACHE", Path.home() / ".cache" / "stdtrt"))


def check_strength(strength: float) -> None:
    if not 0.0 < strength <= 1.0:
        raise StdtrtError(
            f"strength must be in (0, 1], got {strength} (0.75 keeps the layout, 1.0 is pure noise)"
        )


# Width and height are multiples of 8, the VAE's downsampling in SD 1.x and SDXL. The UNet takes any latent
# size (diffusers matches its skip connections' sizes), and so do the exported graphs: this is the one size
# rule of every stage.
SIZE_MULTIPLE = 8


def check_size(name: str, value: int | None) -> None:
    if value is not None and (value <= 0 or value % SIZE_MULTIPLE):
        raise StdtrtError(
            f"{name} must be a positive multiple of {SIZE_MULTIPLE} (the VAE downsamples by 8), got {value}"
        )


def round_size(x: float) -> int:
    """The nearest valid width or height."""
    return max(SIZE_MULTIPLE, int(round(x / SIZE_MULTIPLE)) * SIZE_MULTIPLE)


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
    if cfg.precision not in PRECISIONS:
        raise StdtrtError(f"precision must be one of {', '.join(PRECISIONS)}, got {cfg.precision!r}")


def opt(
    default,
    help: str = "",
    *,
    choices=None,
    short: str | None = None,
    flag: str | None = None,
    group=None,
    ablation: bool = False,
):
    """A config field with its help text: the reason for the default lives here, and the CLI generates
    its option from it (cli_options.config_options). `choices` limit the values, `short` adds a one-letter flag,
    `flag` renames the option, `group` ("video") puts it on the commands it belongs to, `ablation` marks a
    switch that exists for comparisons (the benchmarks'): out of the option list, named at the end of
    --help."""
    meta = {
        "help": help,
        "choices": choices,
        "short": short,
        "flag": flag,
        "group": group,
        "ablation": ablation,
    }
    return field(default=default, metadata=meta)


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
