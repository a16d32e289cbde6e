"""What the image student and the video student train on, one class each, chosen once per run
(`variant_for`): the data items, a bank slot's shape, the content latents of new trajectories, the noise
they start from, and what the discriminator sees. The run (distill/run.py) asks its variant and never
branches on which one it has.

Images: items are images, a slot is one latent (4, h, w), noise is drawn per image.
Clips (--motion-adapter): items are clips of a video, a slot is a whole clip (4, F, h, w), the noise follows
--clip-noise as inference builds a video's x_start (schedule.frame_noise), and the discriminator sees
--adv-frames frames of each clip as images.
"""

from __future__ import annotations

from pathlib import Path

import torch

from stdtrt import schedule
from stdtrt.config import DistillConfig
from stdtrt.distill import data as data_mod
from stdtrt.models.motion import check_motion_window
from stdtrt.models.vae import vae_encode


class Images:
    """The per-frame (image) student."""

    def __init__(self, cfg: DistillConfig):
        self.cfg = cfg

    def check(self, model) -> None:
        """What the loaded model must be for this variant (nothing for images)."""

    def scan(self, cache: Path) -> list:
        cfg = self.cfg
        return data_mod.scan(cfg.data, cfg.prompt, cfg.prompt_template, cfg.frames_per_video, cache)

    def slot_shape(self, latent: tuple[int, int, int]) -> tuple[int, ...]:
        return latent

    def content(self, model, items: list, generator: torch.Generator, device) -> torch.Tensor:
        """The content latents z0 (count, 4, h, w) of `items`: one random crop each, VAE-encoded."""
        cfg = self.cfg
        images = torch.stack(
            [data_mod.random_crop(item.image, cfg.resolution, generator, cfg.crop_zoom) for item in items]
        )
        return vae_encode(model.vae, images.to(device), model.scaling_factor)  # float32

    def noise(self, z0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return torch.randn(z0.shape, generator=generator)

    def adversarial_view(self, pred, s, z0, prompt, generator) -> dict:
        """What the discriminator sees: the images as they are."""
        return {"pred": pred, "s": s, "z0": z0, "prompt": prompt}


class Clips(Images):
    """The video student (--motion-adapter): clips (B, 4, F, h, w) through a motion UNet."""

    def check(self, model) -> None:
        check_motion_window(model, self.cfg.clip_frames, self.cfg.motion_adapter, "--clip-frames")

    def scan(self, cache: Path) -> list:
        cfg = self.cfg
        side = int(cfg.resolution * cfg.crop_zoom + 0.999)  # the largest any crop of a clip needs
        return data_mod.scan_clips(
            cfg.data, cfg.prompt, cfg.prompt_template, cfg.clip_frames, cfg.frame_stride,
            cfg.clips_per_video, side, cache,
        )  # fmt: skip

    def slot_shape(self, latent: tuple[int, int, int]) -> tuple[int, ...]:
        return (latent[0], self.cfg.clip_frames, *latent[1:])  # a slot holds a whole clip's state

    def content(self, model, items: list, generator: torch.Generator, device) -> torch.Tensor:
        """(count, 4, F, h, w): one crop per clip; the VAE sees frames, the UNet clips."""
        cfg = self.cfg
        images = torch.stack(
            [
                data_mod.random_crop_clip(item.frames, cfg.resolution, generator, cfg.crop_zoom)
                for item in items
            ]
        )  # (count, F, 3, H, W)
        frames = vae_encode(model.vae, images.flatten(0, 1).to(device), model.scaling_factor)
        return frames.unflatten(0, images.shape[:2]).transpose(1, 2)

    def noise(self, z0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The video student's noise rule, the one inference builds x_start by (its LoRA records it)."""
        seeds = torch.randint(2**31 - 1, (len(z0),), generator=generator).tolist()
        return self.clip_noise(seeds, z0.shape[1:])

    def clip_noise(self, seeds: list[int], shape) -> torch.Tensor:
        """The noise of new clips (4, F, h, w) by --clip-noise, each seeded as a video of that seed is at
        inference (runtime/student.VideoNoise over its first window): (len(seeds), 4, F, h, w)."""
        c, frames, h, w = shape
        return torch.stack(
            [
                schedule.frame_noise(self.cfg.clip_noise, (c, h, w), s, 0, frames).transpose(0, 1)
                for s in seeds
            ]
        )

    def adversarial_view(self, pred, s, z0, prompt, generator) -> dict:
        """Of each clip, --adv-frames frames drawn at random (the same frames of pred and of z0), as a batch
        of images."""
        frames = pred.shape[2]
        pick = (
            torch.randperm(frames, generator=generator)[: self.cfg.adv_frames].sort().values.to(pred.device)
        )
        k = len(pick)

        def flat(x):  # (B, 4, F, h, w) -> (B * k, 4, h, w)
            return x.index_select(2, pick).transpose(1, 2).flatten(0, 1)

        return {
            "pred": flat(pred),
            "s": s.repeat_interleave(k),
            "z0": flat(z0),
            "prompt": prompt.repeat_interleave(k),
        }


def variant_for(cfg: DistillConfig) -> Images:
    """The student a run trains: clips with --motion-adapter, else images."""
    return Clips(cfg) if cfg.motion_adapter else Images(cfg)
