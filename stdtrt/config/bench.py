"""BenchConfig: `stdtrt bench`."""

from __future__ import annotations

from dataclasses import dataclass

from stdtrt.config.base import BACKENDS, DEFAULT_BUNDLE, opt, parse_device
from stdtrt.errors import StdtrtError


@dataclass(frozen=True)
class BenchConfig:
    """What `stdtrt bench` measures: every usable backend on one bundle, and diffusers' img2img pipeline."""

    bundles: tuple[str, ...] = opt(
        (),
        f"the bundle(s) to time, side by side (e.g. one with each --vae) [./{DEFAULT_BUNDLE}]",
        flag="--bundle",
    )
    frames: int = opt(12, "frames of the generated test clip at the bundle's size (> NFE for a steady state)")
    backends: tuple[str, ...] = opt(
        (),
        "backends to time (comma-separated: tensorrt, onnxruntime, torch) [every one that loads]",
        flag="--backend",
    )
    baseline: bool = opt(True, "also time diffusers' own img2img pipeline (TCD scheduler) on the same frames")
    verify: bool = opt(False, "hash every file of each bundle at load")
    device: str = opt("auto", "auto, cpu, cuda or cuda:N")
    plot: str | None = opt(None, "write a PNG chart here")
    json: str | None = opt(None, "write the results as JSON here")

    def __post_init__(self) -> None:
        parse_device(self.device)
        if self.frames < 2:
            raise StdtrtError(f"bench needs at least 2 frames, got {self.frames}")
        bad = [b for b in self.backends if b not in BACKENDS or b == "auto"]
        if bad:
            raise StdtrtError(f"unknown backend {bad[0]!r}; choose from tensorrt, onnxruntime, torch")
        if self.plot and not self.plot.lower().endswith(".png"):
            raise StdtrtError(f"--plot must name a .png file, got {self.plot}")
