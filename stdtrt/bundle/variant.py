"""The image student and the video student at export and at run time: one class each, chosen once per run
(`variant_for`: from the options and the LoRA's card, for --model and export; `variant_of`: from a
bundle's manifest). What differs lives here: the frames a stream slot holds, the latent layout the UNet
call takes (frames, or clips of a window), the noise rule a video runs with, what a run of it refuses, and
its record in the manifest. Callers ask the variant; runtime/stylize.load_runner picks the runner by it.
Training's variants (data items, a bank slot, the discriminator's view) are distill/variants.py.

Image: a slot holds B frames (--frames-per-step), each its own trajectory; one noise for the whole video
(a still scene stays still), each frame its own with --fresh-noise.
Video (--motion-adapter): a slot holds one window of W frames, one trajectory; inside the UNet call the
NFE slots are NFE clips (NFE, 4, W, h, w) for the motion modules; the noise follows the rule the student
was distilled with (its card), each frame its own with --fresh-noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from stdtrt.bundle.model import fingerprint, source_of
from stdtrt.config import resolve_window
from stdtrt.errors import StdtrtError
from stdtrt.models.card import UNRECORDED_NOISE_RULE, StudentCard
from stdtrt.models.motion import check_motion_window, is_motion_unet


@dataclass(frozen=True)
class Frames:
    """A slot's latents as the UNet takes them: (NFE * B, 4, h, w) rows, each frame its own sample."""

    batch: int
    clips = False

    def unet_batch(self, nfe: int) -> int:
        return nfe * self.batch

    def to_unet(self, x: torch.Tensor, nfe: int) -> torch.Tensor:
        return x

    def from_unet(self, eps: torch.Tensor) -> torch.Tensor:
        return eps


@dataclass(frozen=True)
class Clips(Frames):
    """A slot is one window of B frames: the NFE slots enter the motion UNet as NFE clips."""

    clips = True

    def unet_batch(self, nfe: int) -> int:
        return nfe

    def to_unet(self, x: torch.Tensor, nfe: int) -> torch.Tensor:
        return x.unflatten(0, (nfe, self.batch)).transpose(1, 2)  # (NFE, 4, B, h, w)

    def from_unet(self, eps: torch.Tensor) -> torch.Tensor:
        return eps.transpose(1, 2).flatten(0, 1)  # (NFE * B, 4, h, w)


def layout_of(unet, batch: int) -> Frames:
    """The layout a UNet takes a stream's slots in: clips for a motion UNet, else frames."""
    return Clips(batch) if is_motion_unet(unet) else Frames(batch)


@dataclass(frozen=True)
class ImageStudent:
    """The per-frame student."""

    slot_frames: int  # B: --frames-per-step
    windows = False

    def noise_rule(self, fresh_noise: bool) -> str:
        return "per-frame" if fresh_noise else "shared"

    def check_run(self, skip_threshold: float | None, image: bool) -> None:
        """What a run of this student refuses (nothing: images, videos and the similarity filter)."""

    def check_model(self, model) -> None:
        """What the loaded model must be for it (nothing more than any model)."""

    def options(self) -> dict:
        """The run options its bundle fixes (a run asking for others is refused)."""
        return {"frames_per_step": self.slot_frames}

    def record(self) -> dict | None:
        """Its entry in the manifest's `motion` (none)."""
        return None

    def key(self) -> None:
        """What the graphs' cache key holds of it beyond the batch (nothing)."""
        return None


@dataclass(frozen=True)
class VideoStudent:
    """The video student: a motion UNet over windows of `window` frames."""

    adapter: str  # as given (--motion-adapter)
    source: str  # where to find it again (bundle.model.source_of)
    window: int
    trained_rule: str  # the noise rule its LoRA was distilled with
    trained_frames: int | None = None  # the clip length it was distilled on (its card), if known
    windows = True

    @property
    def slot_frames(self) -> int:
        return self.window

    def noise_rule(self, fresh_noise: bool) -> str:
        return "per-frame" if fresh_noise else self.trained_rule

    def check_run(self, skip_threshold: float | None, image: bool) -> None:
        if image:
            raise StdtrtError(
                "a video student stylizes videos in windows of frames; for an image use an image student"
            )
        if skip_threshold is not None:
            raise StdtrtError(
                "--skip-threshold belongs to the per-frame student; a window runs all its frames"
            )

    def check_model(self, model) -> None:
        """The window against the loaded model's motion modules (one line if it is not the clip length the
        student was distilled on)."""
        check_motion_window(model, self.window, self.adapter, trained=self.trained_frames)

    def options(self) -> dict:
        return {"window": self.window}

    def key(self) -> dict:
        """What the graphs' cache key holds of it (the motion modules' weights are in the model hash: the
        UNet is a UNetMotionModel)."""
        return {"adapter": self.adapter, "window": self.window, "noise_rule": self.trained_rule}

    def record(self) -> dict:
        return {"adapter": self.adapter, "source": self.source, "fingerprint": fingerprint(self.source),
                "window": self.window, "noise_rule": self.trained_rule}  # fmt: skip


def variant_for(cfg, card: StudentCard | None = None) -> ImageStudent | VideoStudent:
    """The variant --model (or export) runs, before any model is loaded: a video student with
    --motion-adapter, its window --window or else the clip length its card records; else the image
    student with --frames-per-step frames a slot. `check_model` then checks it against the loaded model."""
    if not cfg.motion_adapter:
        return ImageStudent(cfg.frames_per_step)
    card = card or StudentCard.read(cfg.lora)
    window = resolve_window(cfg.window, card.clip_frames)
    return VideoStudent(cfg.motion_adapter, source_of(cfg.motion_adapter), window, card.noise_rule,
                        card.clip_frames)  # fmt: skip


def variant_of(bundle) -> ImageStudent | VideoStudent:
    """The variant a bundle was exported as (its manifest's `motion`)."""
    motion = bundle.motion
    if not motion:
        return ImageStudent(bundle.batch)
    return VideoStudent(motion["adapter"], motion["source"], motion["window"],
                        motion.get("noise_rule", UNRECORDED_NOISE_RULE))  # fmt: skip


def asks_for_video(cfg, bundle) -> bool:
    """Whether a run is the video student's, before any model is loaded: --motion-adapter, or a video
    student's bundle."""
    return bool(cfg.motion_adapter) or (bundle is not None and bool(bundle.motion))
