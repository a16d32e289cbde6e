"""The three networks of a bundle as torch modules: the torch backend runs them, `stdtrt export` traces
them to ONNX. There is no second implementation: the exported graphs are these modules traced.

B is the number of frames per stream slot (`--frames-per-step`, 1 by default): every shape is static.

- `VaeEncoder`: uint8 frames (B, H, W, 3) -> scaled content latents z0 (B, 4, H/8, W/8), float32. The pixel
  conversion happens inside the graph, so the host moves bytes only.
- `StreamUNet`: the fixed-timestep student in stream form, the whole per-frame step in one call. Slot i
  (rows i*B .. i*B + B - 1 of `slots`) holds latents at the i-th student timestep; the new frames' x_start
  (schedule.x_start of z0 and their noise) enters slot 0, every slot makes one DDIM jump (schedule.ddim_jump
  on conditioning.predict_eps), the last slot leaves as `done` (clean latents) and the others shift down
  one slot into `slots_next`. Timesteps, jump coefficients, x_start's coefficients and the prompt
  embeddings are buffers: constants once traced.
- `VaeDecoder`: scaled latents (B, 4, h, w) -> uint8 frames (B, H, W, 3), clamped and rounded inside.

A video student's bundle (a UNetMotionModel, `export --motion-adapter`) has the same interface with B = the
window (`--window` frames): a slot holds one window, and inside the UNet graph the NFE slots become NFE
clips (NFE, 4, W, h, w), the motion modules attending across each window's frames; the jumps and the shift
are the image form's, row by row. Overlapping windows are blended outside the graphs (runtime/windows.py).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from stdtrt import schedule
from stdtrt.errors import StdtrtError
from stdtrt.models.attention_cache import AttentionCache
from stdtrt.models.conditioning import Conditioning, compute_dtype, conditionings, predict_eps
from stdtrt.models.motion import is_motion_unet
from stdtrt.models.vae import pixels_to_unit, unit_to_pixels, vae_decode, vae_encode

GRAPHS = ("vae_encoder", "unet", "vae_decoder")  # bundle file stems, in pipeline order


class VaeEncoder(torch.nn.Module):
    """uint8 frames (B, H, W, 3) -> z0 (B, 4, h, w): what the torch backend runs and the export traces."""

    def __init__(self, vae, scaling_factor: float):
        super().__init__()
        self.vae, self.scaling_factor = vae, scaling_factor

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return vae_encode(self.vae, pixels_to_unit(frames), self.scaling_factor)

    @staticmethod
    def io() -> tuple[list[str], list[str]]:
        return ["frames"], ["latent"]


class VaeDecoder(torch.nn.Module):
    """Latents (B, 4, h, w) -> uint8 frames (B, H, W, 3)."""

    def __init__(self, vae, scaling_factor: float):
        super().__init__()
        self.vae, self.scaling_factor = vae, scaling_factor

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return unit_to_pixels(vae_decode(self.vae, latents, self.scaling_factor))

    @staticmethod
    def io() -> tuple[list[str], list[str]]:
        return ["latent"], ["frames"]


def _column(values, batch: int) -> torch.Tensor:
    """Per-slot values repeated for the B frames of each slot.  # (NFE * B, 1, 1, 1)"""
    return torch.tensor(values, dtype=torch.float32).repeat_interleave(batch).view(-1, 1, 1, 1)


class StreamUNet(torch.nn.Module):
    """One call = the new frames enter and every slot makes one DDIM jump (see the module doc)."""

    def __init__(
        self,
        unet,
        plan: schedule.StudentPlan,
        cond: Conditioning,
        uncond: Conditioning | None,
        guidance: float,
        batch: int = 1,
        cache=None,
    ):
        super().__init__()
        if plan.gamma != 0:
            raise StdtrtError(
                f"the stream form needs gamma = 0 (deterministic jumps), got {plan.gamma}; "
                f"gamma > 0 runs on the sequential torch path (--model without a bundle)"
            )
        self.unet, self.nfe, self.batch, self.guidance = unet, plan.nfe, batch, float(guidance)
        self.clips = is_motion_unet(unet)  # a slot is one window: the UNet sees NFE clips of B frames
        self.a_start, self.b_start = plan.a_start, plan.b_start
        calls = plan.nfe if self.clips else plan.nfe * batch  # the UNet's batch
        steps = torch.tensor(plan.timesteps, dtype=torch.long).repeat_interleave(calls // plan.nfe)
        self.register_buffer("timesteps", steps)  # (NFE * B,), or (NFE,) for clips
        for name in ("a_t", "b_t", "a_s", "b_s"):
            self.register_buffer(name, _column(getattr(plan, name), batch))
        self._register_cond("cond", cond.repeat(calls))
        self.has_uncond = uncond is not None and guidance > 1
        self._register_cond("uncond", uncond.repeat(calls) if self.has_uncond else None)
        self.cache = cache  # models.attention_cache.AttentionCache, installed on `unet`, or None
        if cache is not None and (self.clips or batch != 1):
            raise StdtrtError("cached attention runs one frame per slot (no --frames-per-step, no windows)")
        self.cache_rows = calls * (2 if self.has_uncond else 1)  # the UNet call's batch: a cache row each

    def cache_spec(self) -> tuple | None:
        """(rows, size, dtype) of the cache this UNet graph takes and gives back, or None."""
        if self.cache is None:
            return None
        return self.cache_rows, self.cache.size, compute_dtype(self.unet)

    def io(self) -> tuple[list[str], list[str]]:
        """The graph's input and output names, in forward's order."""
        extra_in, extra_out = (
            (["cache", "frame_index"], ["cache_next"]) if self.cache is not None else ([], [])
        )
        return ["slots", "z0", "noise", *extra_in], ["slots_next", "done", *extra_out]

    def _register_cond(self, prefix: str, c: Conditioning | None) -> None:
        for field in ("embeds", "pooled", "time_ids", "image"):
            self.register_buffer(f"{prefix}_{field}", None if c is None else getattr(c, field))

    def _cond(self, prefix: str) -> Conditioning | None:
        embeds = getattr(self, f"{prefix}_embeds")
        if embeds is None:
            return None
        return Conditioning(
            embeds,
            getattr(self, f"{prefix}_pooled"),
            getattr(self, f"{prefix}_time_ids"),
            getattr(self, f"{prefix}_image"),
        )

    def forward(
        self, slots: torch.Tensor, z0: torch.Tensor, noise: torch.Tensor, cache=None, frame_index=None
    ):
        """slots (NFE*B, 4, h, w) (slot 0's rows are overwritten), z0 and noise (B, 4, h, w), all float32 ->
        (slots_next (NFE*B, 4, h, w), done (B, 4, h, w)). The UNet runs in its own dtype inside predict_eps;
        x_start, the jumps and the shift in float32. With cached attention also `cache` (rows, size) in the
        UNet's dtype and `frame_index` (NFE,) int64, the frame each slot holds (-1: none), and the next cache
        comes back third (models/attention_cache.py)."""
        b = self.batch
        x = torch.cat([schedule.x_start(z0, noise, self.a_start, self.b_start), slots[b:]])
        unet_x = x.unflatten(0, (self.nfe, b)).transpose(1, 2) if self.clips else x  # (NFE, 4, B, h, w)
        with contextlib.ExitStack() as stack:
            if self.cache is not None:  # a cache row per UNet row: the guidance branches repeat the slots
                index = frame_index.repeat(self.cache_rows // frame_index.shape[0])
                cache_next = stack.enter_context(self.cache.attending(cache, index))
            eps = predict_eps(
                self.unet, unet_x, self.timesteps, self._cond("cond"), self._cond("uncond"), self.guidance
            )
        if self.clips:
            eps = eps.transpose(1, 2).flatten(0, 1)
        out = schedule.ddim_jump(x, eps, self.a_t, self.b_t, self.a_s, self.b_s)  # slot i now at targets[i]
        shifted, done = torch.cat([torch.zeros_like(out[:b]), out[:-b]]), out[-b:]
        return (shifted, done) if self.cache is None else (shifted, done, cache_next[0])


def example_inputs(
    nfe: int, batch: int, latent_shape, width: int, height: int, device="cpu", cache: tuple | None = None
) -> dict:
    """Zero inputs of the interface's shapes and dtypes per call: "encode" (frames), "step" (slots, z0,
    noise[, cache, frame_index]), "decode" (latents). What export traces with, and backends warm up and
    capture with. `cache`: (rows, size, dtype) of a cached-attention UNet's cache."""
    z = torch.zeros((batch, *latent_shape), device=device)
    step = (torch.zeros((nfe * batch, *latent_shape), device=device), z, z.clone())
    if cache is not None:
        rows, size, dtype = cache
        index = torch.arange(nfe, device=device)  # a full pipe: slot i holds frame i's predecessor
        step += (torch.zeros((rows, size), dtype=dtype, device=device), index)
    return {
        "encode": (torch.zeros((batch, height, width, 3), dtype=torch.uint8, device=device),),
        "step": step,
        "decode": (z.clone(),),
    }


@dataclass
class Networks:
    encoder: VaeEncoder
    unet: StreamUNet
    decoder: VaeDecoder


@torch.no_grad()
def build_networks(
    model,
    plan: schedule.StudentPlan,
    prompt: str,
    negative_prompt: str,
    guidance: float,
    width: int,
    height: int,
    batch: int = 1,
    style=None,
    cache=None,
) -> Networks:
    """The three bundle networks of a loaded (fused) model for one prompt (and style image, and attention
    cache settings), size and B, on its device."""
    cond, uncond = conditionings(model.pipe, prompt, negative_prompt, guidance, height, width, style)
    attention = None
    if cache is not None:
        attention = AttentionCache.on(model.unet, cache, cond, model.latent_shape(width, height))
    unet = StreamUNet(model.unet, plan, cond, uncond, guidance, batch, attention).to(model.device)
    return Networks(
        VaeEncoder(model.vae, model.scaling_factor).eval(),
        unet.eval(),
        VaeDecoder(model.vae, model.scaling_factor).eval(),
    )
