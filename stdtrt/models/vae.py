"""The one way stdtrt calls a VAE: images in [-1, 1] to scaled latents and back, each call casting to the
VAE's own dtype at its boundary and returning float32 (the precision rule: models/load.py)."""

from __future__ import annotations

import torch


def vae_encode(vae, images: torch.Tensor, scaling_factor: float) -> torch.Tensor:
    """Images in [-1, 1] -> scaled content latents z0 (the posterior mean), float32.  # (B, 4, H/8, W/8)
    The VAE runs in its own dtype: the images are cast to it here."""
    return vae.encode(images.to(vae.dtype)).latent_dist.mean.float() * scaling_factor


def vae_decode(vae, z: torch.Tensor, scaling_factor: float) -> torch.Tensor:
    """Scaled latents -> images in [-1, 1] (not clamped), float32.  # (B, 3, H, W)"""
    return vae.decode((z.float() / scaling_factor).to(vae.dtype), return_dict=False)[0].float()
