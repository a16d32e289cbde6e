"""The frozen teacher's noise estimate with classifier-free guidance in the LCM form e_T = e_c + w (e_c - e_u),
i.e. the usual e_u + (1 + w)(e_c - e_u); the STD step (distill/step.py) takes its DDIM step with it. Both
branches run as one batched call.

The teacher either shares the student's UNet with the LoRA switched off ("shared": one copy of the base
weights in memory) or is a separate frozen copy ("copy").
"""

from __future__ import annotations

import contextlib

import torch

from stdtrt.models.conditioning import Conditioning, predict_eps


@contextlib.contextmanager
def adapters_off(unet):
    unet.disable_adapters()
    try:
        yield
    finally:
        unet.enable_adapters()


class Teacher:
    """The guided noise estimate of the frozen teacher, both guidance branches in one batched call."""

    def __init__(self, unet, shared: bool):
        self.unet, self.shared = unet, shared
        self.calls = 0  # UNet calls made (each holds both guidance branches)

    @torch.no_grad()
    def __call__(self, x, t, cond: Conditioning, uncond: Conditioning, w: torch.Tensor) -> torch.Tensor:
        """e_c + w (e_c - e_u) at (x, t) for each element's own w (B,), float32."""
        guidance = (1 + w).view(-1, *([1] * (x.ndim - 1))).to(x.device, torch.float32)  # combined in fp32
        context = adapters_off(self.unet) if self.shared else contextlib.nullcontext()
        with context:
            self.calls += 1
            return predict_eps(self.unet, x, t, cond, uncond, guidance)
