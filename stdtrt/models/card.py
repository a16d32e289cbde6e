"""A student LoRA's card: what the file says of the student (its stdtrt metadata), read once, and what
inference must match to walk the trajectory the student learned: the strength (eta), the teacher grid, a
video student's motion adapter, clip length and noise rule, the style images it was distilled with."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from stdtrt.config import NOISE_RULES
from stdtrt.errors import StdtrtError
from stdtrt.models.lora import read_metadata
from stdtrt.schedule import TEACHER_STEPS

log = logging.getLogger(__name__)

# A video student distilled before the rule was recorded drew independent noise for every frame of a clip.
UNRECORDED_NOISE_RULE = "per-frame"


@dataclass(frozen=True)
class StudentCard:
    path: str | None = None  # the LoRA file (None: the plain teacher)
    eta: float | None = None  # the strength it was distilled for
    teacher_steps: int = TEACHER_STEPS  # the grid whose x_start inference starts from
    motion_adapter: str | None = None  # a video student's adapter
    clip_frames: int | None = None  # the clip length a video student was distilled on
    noise_rule: str = UNRECORDED_NOISE_RULE  # how a video student's clip was noised (config.NOISE_RULES)
    style_images: str | None = None  # the folder of style images it was distilled with
    config: dict = field(default_factory=dict)  # the whole distill config it records

    @classmethod
    def read(cls, path: str | Path | None) -> StudentCard:
        """The card of a LoRA file (the defaults for none, or for a file without stdtrt's metadata)."""
        if path is None:
            return cls()
        meta = read_metadata(path)
        config = meta.get("config") or {}
        steps = meta.get("teacher_steps", TEACHER_STEPS)
        if not isinstance(steps, int) or steps < 2 or 1000 % steps:
            raise StdtrtError(f"LoRA {path} records teacher_steps {steps!r}, which is not a divisor of 1000")
        rule = meta.get("noise_rule") or config.get("clip_noise") or UNRECORDED_NOISE_RULE
        if rule not in NOISE_RULES:
            raise StdtrtError(
                f"LoRA {path} records noise rule {rule!r}; stdtrt knows {', '.join(NOISE_RULES)}"
            )
        eta = meta.get("eta")
        return cls(
            path=str(path),
            eta=float(eta) if isinstance(eta, int | float) else None,
            teacher_steps=steps,
            motion_adapter=meta.get("motion_adapter") or None,
            clip_frames=config.get("clip_frames") if meta.get("motion_adapter") else None,
            noise_rule=rule,
            style_images=config.get("style_images") or None,
            config=config,
        )

    def grid(self, strength: float) -> int:
        """The teacher grid to start from, warning when the student was distilled for another strength: STD
        trains one LoRA per eta, and another start state is outside what it learned."""
        if self.eta is not None and abs(self.eta - strength) > 1e-6:
            log.warning("%s was distilled for strength %g; running it at %g leaves the trajectory it learned",
                        Path(self.path).name, self.eta, strength)  # fmt: skip
        return self.teacher_steps
