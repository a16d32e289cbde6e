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
from stdtrt.bundle.variant import layout_of
from stdtrt.errors import StdtrtError
from stdtrt.models.attention_cache import AttentionCache
from stdtrt.models.conditioning import (
    Conditioning,
    GraphAddition,
    GraphCall,
    compute_dtype,
    conditionings,
    predict_eps,
)
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
    """One call = the new frames enter and every slot makes one DDIM jump (see the module doc).

    Its inputs and outputs are named (`io`, `specs`): slots, z0 and noise always; with cached attention the
    cache and the frame each slot holds (models/attention_cache.py); with a ControlNet each new frame's
    control map and the maps of the frames in the slots (models/controlnet.py). A name `X` among the inputs
    with `X_next` among the outputs is state the runtime hands back at the next call (runtime/stream.py).
    Each such addition is one object of the protocol models.conditioning.GraphAddition (its inputs, their
    specs, its part of the call, its outputs): a new conditioning is a new object, not a branch here."""

    def __init__(
        self,
        unet,
        plan: schedule.StudentPlan,
        cond: Conditioning,
        uncond: Conditioning | None,
        guidance: float,
        batch: int = 1,
        cache=None,
        control=None,
    ):
        super().__init__()
        if plan.gamma != 0:
            raise StdtrtError(
                f"the stream form needs gamma = 0 (deterministic jumps), got {plan.gamma}; "
                f"gamma > 0 runs on the sequential torch path (--model without a bundle)"
            )
        self.unet, self.nfe, self.batch, self.guidance = unet, plan.nfe, batch, float(guidance)
        self.layout = layout_of(unet, batch)  # frames, or (a motion UNet) NFE clips of a window of B frames
        self.a_start, self.b_start = plan.a_start, plan.b_start
        calls = self.layout.unet_batch(plan.nfe)  # the UNet's batch
        steps = torch.tensor(plan.timesteps, dtype=torch.long).repeat_interleave(calls // plan.nfe)
        self.register_buffer("timesteps", steps)  # (NFE * B,), or (NFE,) for clips
        for name in ("a_t", "b_t", "a_s", "b_s"):
            self.register_buffer(name, _column(getattr(plan, name), batch))
        self._register_cond("cond", cond.repeat(calls))
        self.has_uncond = uncond is not None and guidance > 1
        self._register_cond("uncond", uncond.repeat(calls) if self.has_uncond else None)
        self.cache = cache  # models.attention_cache.AttentionCache, installed on `unet`, or None
        self.control = control  # models.controlnet.Control, or None
        if (cache is not None or control is not None) and self.layout.clips:
            raise StdtrtError(
                "cached attention and ControlNet run with the per-frame student, not in windows"
            )
        if cache is not None and batch != 1:
            raise StdtrtError("cached attention runs one frame per slot (no --frames-per-step)")
        self.rows = calls * (2 if self.has_uncond else 1)  # the UNet call's batch
        self.additions: list[GraphAddition] = [a for a in (cache, control) if a is not None]  # in io's order

    def specs(self, latent_shape, width: int, height: int) -> list[tuple[str, tuple, torch.dtype]]:
        """(name, shape, dtype) of each input, in forward's order."""
        n, b, z = self.nfe * self.batch, self.batch, tuple(latent_shape)
        out = [
            ("slots", (n, *z), torch.float32),
            ("z0", (b, *z), torch.float32),
            ("noise", (b, *z), torch.float32),
        ]
        call = self.graph_call()
        return out + [spec for a in self.additions for spec in a.graph_specs(call, width, height)]

    def graph_call(self) -> GraphCall:
        return GraphCall(self.nfe, self.batch, self.rows, compute_dtype(self.unet))

    def io(self) -> tuple[list[str], list[str]]:
        """The graph's input and output names, in forward's order."""
        inputs = ["slots", "z0", "noise"] + [name for a in self.additions for name in a.inputs]
        return inputs, ["slots_next", "done"] + [name for a in self.additions for name in a.outputs]

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

    def forward(self, slots: torch.Tensor, z0: torch.Tensor, noise: torch.Tensor, *extra: torch.Tensor):
        """slots (NFE*B, 4, h, w) (slot 0's rows are overwritten), z0 and noise (B, 4, h, w), all float32 ->
        (slots_next (NFE*B, 4, h, w), done (B, 4, h, w), then the next state of `extra`, in `io`'s order).
        The UNet runs in its own dtype inside predict_eps; x_start, the jumps and the shift in float32.
        Extra inputs by name: `cache` (rows, size) in the UNet's dtype and `frame_index` (NFE,) int64, the
        frame each slot holds (-1: none); `control` (B, H, W, 3) uint8, the new frames' maps, and
        `control_slots` (NFE*B, H, W, 3), the maps of the frames in the slots."""
        b = self.batch
        named = dict(zip(self.io()[0][3:], extra, strict=True))
        x = torch.cat([schedule.x_start(z0, noise, self.a_start, self.b_start), slots[b:]])
        unet_x = self.layout.to_unet(x, self.nfe)
        call, kwargs, outputs = self.graph_call(), {}, []
        with contextlib.ExitStack() as stack:
            for addition in self.additions:
                extra_kwargs, output = addition.enter(named, call, stack)
                if kwargs.keys() & extra_kwargs.keys():
                    raise StdtrtError(
                        f"two graph additions pass {sorted(kwargs.keys() & extra_kwargs.keys())}"
                    )
                kwargs.update(extra_kwargs)
                outputs.append(output)
            eps = predict_eps(
                self.unet, unet_x, self.timesteps, self._cond("cond"), self._cond("uncond"), self.guidance,
                **kwargs,
            )  # fmt: skip
        eps = self.layout.from_unet(eps)
        out = schedule.ddim_jump(x, eps, self.a_t, self.b_t, self.a_s, self.b_s)  # slot i now at targets[i]
        result = [torch.cat([torch.zeros_like(out[:b]), out[:-b]]), out[-b:]]
        result += [tensor for output in outputs for tensor in output()]  # after the UNet call
        return tuple(result)


def example_inputs(networks, latent_shape, width: int, height: int, device="cpu") -> dict:
    """Zero inputs of the interface's shapes and dtypes per call: "encode" (frames), "step" (the UNet
    graph's named inputs, StreamUNet.specs), "decode" (latents). What export traces with, and backends warm
    up and capture with."""
    b = networks.unet.batch
    z = torch.zeros((b, *latent_shape), device=device)
    step = tuple(torch.zeros(shape, dtype=dtype, device=device) for _, shape, dtype in
                 networks.unet.specs(latent_shape, width, height))  # fmt: skip
    return {
        "encode": (torch.zeros((b, height, width, 3), dtype=torch.uint8, device=device),),
        "step": step,
        "decode": (z,),
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
    control=None,
) -> Networks:
    """The three bundle networks of a loaded (fused) model for one prompt (and style image, attention
    cache settings, ControlNet: a models.controlnet.Control), size and B, on its device."""
    cond, uncond = conditionings(model.pipe, prompt, negative_prompt, guidance, height, width, style)
    attention = None
    if cache is not None:
        attention = AttentionCache.on(model.unet, cache, cond, model.latent_shape(width, height))
    unet = StreamUNet(model.unet, plan, cond, uncond, guidance, batch, attention, control).to(model.device)
    return Networks(
        VaeEncoder(model.vae, model.scaling_factor).eval(),
        unet.eval(),
        VaeDecoder(model.vae, model.scaling_factor).eval(),
    )
