"""The one interface every backend implements (see runtime/backends/__init__.py for how one is picked).

All tensors are on `backend.device`; B = `backend.batch` frames per stream slot (the bundle's):
- `encode(frames)`: uint8 frames (B, H, W, 3) -> content latents z0 (B, 4, h, w), float32;
- `step(slots, z0, noise[, cache, frame_index])`: slots (NFE*B, 4, h, w), z0 and noise (B, 4, h, w),
  float32 -> (slots_next, done (B, 4, h, w)[, cache_next]): the new frames enter, every slot makes one
  jump, the last slot leaves clean (bundle/networks.py, StreamUNet); with cached attention
  (`cache_spec`: (rows, size, dtype)) the cache goes in with the frame each slot holds and comes back;
- `decode(latents)`: (B, 4, h, w) -> uint8 frames (B, H, W, 3).
A backend runs on the caller's current CUDA stream, never synchronises the host, and hands out tensors
the caller owns (never a buffer it will overwrite).
"""

from __future__ import annotations

import abc

import torch

from stdtrt.bundle.networks import example_inputs

# a manifest's dtype names -> torch's
TORCH_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "uint8": torch.uint8,
    "int64": torch.int64,
}


def bundle_cache_spec(bundle) -> tuple | None:
    """(rows, size, torch dtype) of a bundle's attention cache (the UNet graph's `cache` input), or None."""
    spec = bundle.cache_input
    return None if spec is None else (*spec["shape"], TORCH_DTYPES[spec["dtype"]])


class Backend(abc.ABC):
    name = "?"
    device = torch.device("cpu")
    # Whether VAE encode, UNet and VAE decode run in threads of their own (overlapping) or one after the
    # other in one thread. torch on a CPU: one thread (its intra-op thread pool is per process, and three
    # stages sharing it oversubscribe the cores).
    concurrent_stages = False

    def __init__(self, plan, width: int, height: int, latent_shape, batch: int = 1, cache_spec=None):
        self.plan, self.width, self.height, self.batch = plan, width, height, batch
        self.latent_shape = tuple(latent_shape)  # (4, h, w)
        self.cache_spec = cache_spec  # (rows, size, torch dtype) of the attention cache, or None

    def empty_cache(self) -> torch.Tensor | None:
        """The attention cache before any frame (None without one), on the backend's device."""
        if self.cache_spec is None:
            return None
        rows, size, dtype = self.cache_spec
        return torch.zeros((rows, size), dtype=dtype, device=self.device)

    @abc.abstractmethod
    def encode(self, frames: torch.Tensor) -> torch.Tensor: ...

    @abc.abstractmethod
    def step(self, slots: torch.Tensor, z0: torch.Tensor, noise: torch.Tensor, *cache) -> tuple: ...

    @abc.abstractmethod
    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...

    def describe(self) -> str:
        return f"{self.name} on {self.device}"

    def example_inputs(self) -> dict[str, tuple[torch.Tensor, ...]]:
        """Zero inputs of the right shapes and dtypes for each call (warm-up, capture, timing)."""

        return example_inputs(
            self.plan.nfe,
            self.batch,
            self.latent_shape,
            self.width,
            self.height,
            self.device,
            self.cache_spec,
        )
