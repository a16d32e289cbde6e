"""The frozen teacher: one DDIM step on the N-step grid with classifier-free guidance in the LCM form
e_T = e_c + w (e_c - e_u), i.e. the usual e_u + (1 + w)(e_c - e_u). Both branches run as one batched call.

The teacher either shares the student's UNet with the LoRA switched off ("shared": one copy of the base
weights in memory) or is a separate frozen copy ("copy").
"""

from __future__ import annotations

import contextlib

import torch

from stdtrt import schedule
from stdtrt.models.conditioning import Conditioning, predict_eps


@contextlib.contextmanager
def adapters_off(unet):
    unet.disable_adapters()
    try:
        yield
    finally:
        unet.enable_adapters()


class Teacher:
    def __init__(self, unet, abar: torch.Tensor, shared: bool, num_steps: int = schedule.TEACHER_STEPS):
        self.unet, self.abar, self.shared, self.num_steps = unet, abar, shared, num_steps
        self.calls = 0  # UNet calls made (each holds both guidance branches)

    @torch.no_grad()
    def eps(self, x, t, cond: Conditioning, uncond: Conditioning, w: torch.Tensor) -> torch.Tensor:
        guidance = (1 + w).view(-1, 1, 1, 1).to(x.device, torch.float32)  # the combine runs in float32
        context = adapters_off(self.unet) if self.shared else contextlib.nullcontext()
        with context:
            self.calls += 1
            return predict_eps(self.unet, x, t, cond, uncond, guidance).float()

    @torch.no_grad()
    def step(self, x, n, cond, uncond, w, dtype) -> torch.Tensor:
        """x at grid index n (B,) -> x at n - 1: one guided DDIM step.  # (B, 4, h, w), float32"""
        T = self.abar.shape[0]
        t = schedule.grid_time_tensor(n, T, self.num_steps)
        t_prev = schedule.grid_time_tensor(n - 1, T, self.num_steps)
        a_t, b_t = schedule.coefficients_tensor(self.abar, t)
        a_p, b_p = schedule.coefficients_tensor(self.abar, t_prev)
        e = self.eps(x.to(dtype), t, cond, uncond, w)
        return schedule.ddim_jump(x.float(), e, a_t, b_t, a_p, b_p)
