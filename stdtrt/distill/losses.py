"""The STD loss: the student's DDIM jump and the pseudo-Huber distance to the target, as one elementwise
expression that torch.compile fuses into a single kernel (forward and backward), with an eager fallback."""

from __future__ import annotations

import logging

import torch

from stdtrt import schedule

log = logging.getLogger(__name__)


def pseudo_huber(pred: torch.Tensor, target: torch.Tensor, c: float) -> torch.Tensor:
    """mean( sqrt((pred - target)^2 + c^2) - c )"""
    return (torch.sqrt((pred.float() - target.float()) ** 2 + c * c) - c).mean()


def std_loss(x, eps, target, a_t, b_t, a_s, b_s, c: float) -> tuple[torch.Tensor, torch.Tensor]:
    """L_std: jump the student's estimate from (x, t) to s and compare it with the target at s.
    Returns (loss, pred): the jump is computed once, and the adversarial branch decodes the same pred."""
    pred = schedule.ddim_jump(x.float(), eps.float(), a_t, b_t, a_s, b_s)  # (B, 4, h, w)
    return pseudo_huber(pred, target, c), pred


class FusedSTDLoss:
    """std_loss compiled once; falls back to eager (with one warning) when compilation is unavailable."""

    def __init__(self, compile: bool = True):
        self.compiled = None
        if compile:
            try:
                self.compiled = torch.compile(std_loss, fullgraph=True, dynamic=False)
            except Exception as exc:  # no compiler backend on this platform
                log.warning("torch.compile unavailable (%s); using the eager STD loss", exc)

    @property
    def fused(self) -> bool:
        return self.compiled is not None

    def __call__(self, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        if self.compiled is not None:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as exc:  # e.g. no C++ compiler for the CPU backend
                log.warning(
                    "compiled STD loss failed (%s); using the eager version", str(exc).splitlines()[0]
                )
                self.compiled = None
        return std_loss(*args, **kwargs)
