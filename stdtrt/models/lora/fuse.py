"""Fusing the LoRA into the UNet's weights (what export traces and a bundle's torch backend runs), checked
against the unfused UNet."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import torch

from stdtrt.errors import StdtrtError
from stdtrt.models.conditioning import encode_prompt, predict_eps
from stdtrt.models.lora.adapter import ADAPTER, lora_layers

log = logging.getLogger(__name__)

FUSE_TOLERANCE = 1e-4


@dataclass(frozen=True)
class FuseReport:
    layers: int  # LoRA layers merged
    max_abs: float  # fused vs unfused eps
    mean_abs: float
    tolerance: float

    def as_dict(self) -> dict:
        return asdict(self)


def _probe(model, seed: int):
    """A seeded latent (for a motion UNet a clip of two frames) and the empty-prompt conditioning: enough to
    compare two UNets."""
    g = torch.Generator().manual_seed(seed)
    size = 16 // model.vae_scale * model.vae_scale  # a small latent the UNet can halve twice
    shape = (1, 4, 2, size, size) if model.motion else (1, 4, size, size)
    x = torch.randn(shape, generator=g).to(model.device, model.dtype)
    cond = encode_prompt(model.pipe, "", size * model.vae_scale, size * model.vae_scale)
    return x, cond


@torch.no_grad()
def fuse_lora(model, timestep: int = 500, seed: int = 0) -> FuseReport | None:
    """Merge the model's LoRA (its own alpha, scale 1) into the UNet weights and drop the adapter layers.

    Returns None when the model has no LoRA. Raises StdtrtError when the fused weights are not finite or
    the fused UNet disagrees with the unfused one beyond FUSE_TOLERANCE.
    """
    layers = len(lora_layers(model.unet))
    if layers == 0:
        return None
    x, cond = _probe(model, seed)
    unfused = predict_eps(model.unet, x, timestep, cond).float()
    try:
        model.pipe.fuse_lora(components=["unet"], lora_scale=1.0, safe_fusing=True, adapter_names=[ADAPTER])
    except ValueError as exc:  # diffusers' safe_fusing: NaN in a merged weight
        raise StdtrtError(f"fusing the LoRA {model.lora} gave non-finite weights: {exc}") from None
    model.pipe.unload_lora_weights()  # removes the adapter layers; the merged base weights stay
    if lora_layers(model.unet):
        raise RuntimeError("LoRA layers are still present after fuse + unload")
    bad = [name for name, p in model.unet.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise StdtrtError(
            f"fusing the LoRA {model.lora} gave non-finite weights in {bad[0]} ({len(bad)} tensors)"
        )
    fused = predict_eps(model.unet, x, timestep, cond).float()
    diff = (fused - unfused).abs()
    scale = max(1.0, float(unfused.abs().max()))
    report = FuseReport(layers, float(diff.max()), float(diff.mean()), FUSE_TOLERANCE)
    log.info(
        "fused %d LoRA layers: fused vs unfused eps max %.2e, mean %.2e",
        layers,
        report.max_abs,
        report.mean_abs,
    )
    if report.max_abs > FUSE_TOLERANCE * scale:
        raise StdtrtError(
            f"the fused UNet differs from the LoRA model by {report.max_abs:.3g} (tolerance "
            f"{FUSE_TOLERANCE * scale:.3g}); the LoRA {model.lora} does not merge cleanly"
        )
    return report
