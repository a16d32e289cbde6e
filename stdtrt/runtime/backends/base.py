"""The one interface every backend implements (see runtime/backends/__init__.py for how one is picked)."""

from __future__ import annotations

import abc

import torch


class Backend(abc.ABC):
    """encode: images in [-1, 1] (1, 3, H, W) -> z0 (1, 4, h, w); step: slots (NFE, 4, h, w) -> slots one
    jump further (slot i at plan.timesteps[i]); decode: latents (1, 4, h, w) -> images in [-1, 1]."""

    name = "?"
    device = torch.device("cpu")
    # Whether VAE encode, UNet and VAE decode run in threads of their own (overlapping) or one after the
    # other in one thread. torch on a CPU: one thread (its intra-op thread pool is per process, and three
    # stages sharing it oversubscribe the cores).
    concurrent_stages = False

    def __init__(self, plan, width: int, height: int, latent_shape):
        self.plan, self.width, self.height = plan, width, height
        self.latent_shape = tuple(latent_shape)  # (4, h, w)

    @abc.abstractmethod
    def encode(self, images: torch.Tensor) -> torch.Tensor: ...

    @abc.abstractmethod
    def step(self, slots: torch.Tensor) -> torch.Tensor: ...

    @abc.abstractmethod
    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...

    def describe(self) -> str:
        return f"{self.name} on {self.device}"
