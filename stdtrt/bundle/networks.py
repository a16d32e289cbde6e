"""The three networks of a bundle as torch modules: the torch backend runs them, `stdtrt export` traces
them to ONNX. There is no second implementation: the exported graphs are these modules traced.

- `VaeGraph(vae_encode)`: image in [-1, 1] (1, 3, H, W) -> scaled content latent z0 (1, 4, H/8, W/8).
- `StreamUNet`: the fixed-timestep student in stream form. Slot i of its input holds a latent at the
  i-th student timestep; one call advances every slot by one DDIM jump (schedule.ddim_jump on
  conditioning.predict_eps), so the last slot leaves as a clean latent. Timesteps, jump coefficients and
  prompt embeddings are buffers: constants once traced.
- `VaeGraph(vae_decode)`: scaled latent -> image in [-1, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from stdtrt import schedule
from stdtrt.errors import StdtrtError
from stdtrt.models.conditioning import Conditioning, encode_prompt, predict_eps
from stdtrt.models.vae import vae_decode, vae_encode

GRAPHS = ("vae_encoder", "unet", "vae_decoder")  # bundle file stems, in pipeline order


class VaeGraph(torch.nn.Module):
    """vae_encode or vae_decode as a module: what the torch backend runs and the export traces."""

    def __init__(self, fn, vae, scaling_factor: float):
        super().__init__()
        self.fn, self.vae, self.scaling_factor = fn, vae, scaling_factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.vae, x, self.scaling_factor)


def _column(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).view(-1, 1, 1, 1)  # (NFE, 1, 1, 1)


class StreamUNet(torch.nn.Module):
    """One call = one DDIM jump for each of the NFE slots: slot i at plan.timesteps[i] -> plan.targets[i]."""

    def __init__(
        self,
        unet,
        plan: schedule.StudentPlan,
        cond: Conditioning,
        uncond: Conditioning | None,
        guidance: float,
    ):
        super().__init__()
        if plan.gamma != 0:
            raise StdtrtError(
                f"the stream form needs gamma = 0 (deterministic jumps), got {plan.gamma}; "
                f"gamma > 0 runs on the sequential torch path (--model without a bundle)"
            )
        self.unet, self.nfe, self.guidance = unet, plan.nfe, float(guidance)
        self.register_buffer("timesteps", torch.tensor(plan.timesteps, dtype=torch.long))  # (NFE,)
        for name in ("a_t", "b_t", "a_s", "b_s"):
            self.register_buffer(name, _column(getattr(plan, name)))
        self._register_cond("cond", cond.repeat(plan.nfe))
        self.has_uncond = uncond is not None and guidance > 1
        self._register_cond("uncond", uncond.repeat(plan.nfe) if self.has_uncond else None)

    def _register_cond(self, prefix: str, c: Conditioning | None) -> None:
        for field in ("embeds", "pooled", "time_ids"):
            self.register_buffer(f"{prefix}_{field}", None if c is None else getattr(c, field))

    def _cond(self, prefix: str) -> Conditioning | None:
        embeds = getattr(self, f"{prefix}_embeds")
        if embeds is None:
            return None
        return Conditioning(embeds, getattr(self, f"{prefix}_pooled"), getattr(self, f"{prefix}_time_ids"))

    def forward(self, slots: torch.Tensor) -> torch.Tensor:
        """slots (NFE, 4, h, w) float32, slot i at timesteps[i] -> every slot one jump further (float32:
        the UNet runs in its dtype inside predict_eps, the jump in float32)."""
        eps = predict_eps(
            self.unet, slots, self.timesteps, self._cond("cond"), self._cond("uncond"), self.guidance
        )
        return schedule.ddim_jump(slots, eps, self.a_t, self.b_t, self.a_s, self.b_s)


@dataclass
class Networks:
    encoder: VaeGraph  # image (1, 3, H, W) -> z0
    unet: StreamUNet
    decoder: VaeGraph  # latent -> image


@torch.no_grad()
def build_networks(
    model,
    plan: schedule.StudentPlan,
    prompt: str,
    negative_prompt: str,
    guidance: float,
    width: int,
    height: int,
) -> Networks:
    """The three bundle networks of a loaded (fused) model for one prompt and size, on its device/dtype."""
    cond = encode_prompt(model.pipe, prompt, height, width)
    uncond = encode_prompt(model.pipe, negative_prompt, height, width) if guidance > 1 else None
    unet = StreamUNet(model.unet, plan, cond, uncond, guidance).to(model.device)  # coefficients: float32
    return Networks(
        VaeGraph(vae_encode, model.vae, model.scaling_factor).eval(),
        unet.eval(),
        VaeGraph(vae_decode, model.vae, model.scaling_factor).eval(),
    )
