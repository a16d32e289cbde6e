"""The torch reference of the few-step student: VAE encode, x_start, NFE DDIM/TCD jumps, VAE decode.

Every other backend (the exported ONNX graphs, TensorRT engines) is traced from or checked against this.
"""

from __future__ import annotations

import numpy as np
import torch

from stdtrt import schedule
from stdtrt.errors import StdtrtError
from stdtrt.models.attention_cache import AttentionCache, CacheSettings
from stdtrt.models.conditioning import Conditioning, compute_dtype, conditionings, predict_eps
from stdtrt.models.control_maps import ControlMaps, to_unit
from stdtrt.models.vae import pixels_to_unit, unit_to_pixels, vae_decode, vae_encode
from stdtrt.runtime.pipeline import StageTimes


def to_tensor(frames: np.ndarray, device) -> torch.Tensor:
    """uint8 (B, H, W, 3) numpy -> float32 (B, 3, H, W) in [-1, 1] on `device` (models.vae.pixels_to_unit)."""
    return pixels_to_unit(torch.from_numpy(np.ascontiguousarray(frames)).to(device))


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float (B, 3, H, W) in [-1, 1] -> uint8 (B, H, W, 3) numpy (models.vae.unit_to_pixels)."""
    return unit_to_pixels(images).cpu().numpy()


class Student:
    """The few-step img2img student of a loaded model (with its LoRA, if any) for one prompt and size.

    Its state (latents, noise, the jumps) is float32 on the model's device; each network casts at its own
    boundary (predict_eps, vae_encode, vae_decode), so a half-precision placement changes only what runs
    inside the networks.
    """

    def __init__(
        self,
        model,
        plan: schedule.StudentPlan,
        prompt: str,
        width: int,
        height: int,
        negative_prompt: str = "",
        guidance: float = 1.0,
        style=None,
        cache: CacheSettings | None = None,
        control=None,
    ):
        """`control`: a ControlNet (models.controlnet.Control): then sample and __call__ take each frame's
        control map."""
        self.model, self.plan, self.guidance, self.control = model, plan, guidance, control
        self.width, self.height = width, height
        self.cond: Conditioning
        self.uncond: Conditioning | None
        self.cond, self.uncond = conditionings(
            model.pipe, prompt, negative_prompt, guidance, height, width, style
        )
        self.latent_shape = model.latent_shape(width, height)
        # cached attention: each step's own cache, as a stream slot has (models/attention_cache.py)
        self.cache = (
            None if cache is None else AttentionCache.on(model.unet, cache, self.cond, self.latent_shape)
        )
        self.start_video()

    def start_video(self) -> None:
        """Forget the last video: the attention caches, the frame count, the control maps."""
        self.caches: list[torch.Tensor] | None = None
        self.frame = 0  # frames sampled so far (the cache's frame index)
        self.maps: torch.Tensor | None = None  # the frames' control maps in [0, 1] while they are sampled

    @property
    def device(self):
        return self.model.device

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] (B, 3, H, W) -> scaled content latents z0 (B, 4, H/8, W/8) (the posterior mean)."""
        return vae_encode(self.model.vae, images.to(self.device), self.model.scaling_factor)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> images in [-1, 1]."""
        return vae_decode(self.model.vae, z, self.model.scaling_factor)

    @torch.no_grad()
    def eps(self, x: torch.Tensor, t) -> torch.Tensor:
        control = None if self.maps is None else (self.control, self.maps)
        return predict_eps(self.model.unet, x, t, self.cond, self.uncond, self.guidance, control)

    @torch.no_grad()
    def _cached_eps(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """The noise estimate of step i through step i's cache (one frame), which the call then updates."""
        if x.shape[0] != 1:
            raise StdtrtError("cached attention samples one frame at a time, in order")
        rows = 2 if self.uncond is not None and self.guidance > 1 else 1
        if self.caches is None:
            dtype = compute_dtype(self.model.unet)
            self.caches = [self.cache.empty(rows, dtype, self.device) for _ in range(self.plan.nfe)]
        index = torch.full((rows,), self.frame, dtype=torch.long)
        with self.cache.attending(self.caches[i], index) as cache_next:
            e = self.eps(x, self.plan.timesteps[i])
        self.caches[i] = cache_next[0]
        return e

    @torch.no_grad()
    def step(self, x: torch.Tensor, i: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Student step i: UNet at timesteps[i], DDIM jump to landing[i] (re-noised to targets[i] if gamma)."""
        p = self.plan
        x = x.float()
        e = self.eps(x, p.timesteps[i]) if self.cache is None else self._cached_eps(x, i)
        x = schedule.ddim_jump(x, e, p.a_t[i], p.b_t[i], p.a_s[i], p.b_s[i])
        if p.gamma > 0 and i < p.nfe - 1:
            noise = torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x.device)
            x = schedule.renoise(x, noise, p.abar_landing[i], p.abar_target[i])
        return x

    @torch.no_grad()
    def sample(
        self, z0: torch.Tensor, noise: torch.Tensor, generator: torch.Generator | None = None, maps=None
    ):
        """x_start = a z0 + b noise, then the NFE student steps: the clean latent (float32). `maps`: with a
        ControlNet, the frames' control maps, uint8 (B, H, W, 3)."""
        if (maps is None) != (self.control is None):
            raise StdtrtError("a ControlNet student samples with each frame's control map (and only it)")
        self.maps = None if maps is None else to_unit(maps.to(self.device))
        z0 = z0.float()
        x = schedule.x_start(z0, noise.to(z0.device, torch.float32), self.plan.a_start, self.plan.b_start)
        try:
            for i in range(self.plan.nfe):
                x = self.step(x, i, generator)
        finally:
            self.maps = None
        self.frame += 1
        return x

    @torch.no_grad()
    def __call__(self, frames: np.ndarray, noise: torch.Tensor, generator=None, maps=None) -> np.ndarray:
        """uint8 frames (B, H, W, 3) at the working size -> stylized uint8 frames (`maps`: their control
        maps, uint8 (B, H, W, 3), with a ControlNet)."""
        z0 = self.encode(to_tensor(frames, self.device))
        if noise.shape[0] != z0.shape[0]:
            noise = noise.expand(z0.shape[0], *noise.shape[1:])
        maps = None if maps is None else torch.from_numpy(np.ascontiguousarray(maps))
        return to_uint8(self.decode(self.sample(z0, noise, generator, maps)))


class VideoNoise:
    """The noise of a video's frames, in order (`take`) or by index (`at`), on `device`: the rule
    schedule.frame_noise names (config.NOISE_RULES), seeded by `seed`. The image student runs "shared"
    (drawn once: a still scene stays still; `--fresh-noise` makes it "per-frame"); a video student runs
    the rule its LoRA was distilled with. Drawn on the CPU, so that every device and backend sees the same
    numbers."""

    def __init__(self, shape, seed: int, rule: str = "shared", device="cpu"):
        self.shape, self.seed, self.rule, self.device = tuple(shape), seed, rule, torch.device(device)
        self.fixed = None if rule != "shared" else schedule.make_noise(self.shape, seed).to(self.device)
        self.next = 0  # the next frame `take` gives noise for

    def at(self, first: int, count: int) -> torch.Tensor:
        """Noise for frames first .. first + count - 1.  # (count, *shape)"""
        if self.fixed is not None:  # moved to the device once
            return self.fixed.expand(count, *self.shape)
        noise = schedule.frame_noise(self.rule, self.shape, self.seed, first, count)
        if self.device.type != "cuda":
            return noise.to(self.device)
        # from pinned memory: the copy up does not block the host (nor the UNet lane that asks for it); the
        # caching host allocator keeps the buffer until the copy is done
        return noise.pin_memory().to(self.device, non_blocking=True)

    def take(self, n: int = 1) -> torch.Tensor:
        """Noise for the next n frames."""
        out, self.next = self.at(self.next, n), self.next + n
        return out


class StudentRunner:
    """The torch reference (no bundle) as one stage: batches of frames, NFE sequential steps each."""

    skipped = 0  # the similarity filter belongs to the stream form

    def __init__(self, student, cfg, noise_rule: str):
        """`cfg`: the run's config.StylizeConfig (seed, --frames-per-step); `noise_rule`: the variant's
        (bundle/variant.py). A video starts afresh: the student forgets the last one's caches."""
        self.student, self.cfg = student, cfg
        student.start_video()
        self.width, self.height = student.width, student.height
        self.noise = VideoNoise(student.latent_shape, cfg.seed, noise_rule, student.device)
        control = student.control
        self.maps = (
            None if control is None else ControlMaps(control.spec, self.width, self.height, student.device)
        )
        self.step_gen = torch.Generator().manual_seed(cfg.seed + 1)  # gamma > 0 re-noising
        self.times = StageTimes()

    def describe(self) -> str:
        s = self.student
        return f"torch reference on {s.device} ({s.plan.nfe} sequential steps per frame, no bundle)"

    def _run(self, batch: list):
        frames = np.stack([rgb for rgb, _ in batch])
        maps = None if self.maps is None else np.stack([self.maps(rgb) for rgb in frames])
        out = self.times.timed(
            "student", self.student, frames, self.noise.take(len(batch)), self.step_gen, maps
        )
        yield from zip(out, (tag for _, tag in batch), strict=True)

    def stylize(self, items):
        batch = []
        for item in items:
            batch.append(item)
            if len(batch) == self.cfg.frames_per_step:
                yield from self._run(batch)
                batch = []
        if batch:
            yield from self._run(batch)

    def stages(self) -> list:
        return [self.stylize]

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        ((out, _),) = list(self._run([(rgb, 0)]))
        return out
