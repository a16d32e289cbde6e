"""Cached cross-frame attention (StreamV2V, Liang et al. 2024): every self-attention layer of the UNet also
attends to the keys and values of the last F frames it saw, which ties a frame's features to its
predecessors' without retraining; optionally (feature fusion) output tokens close to one of those frames'
outputs (cosine >= 0.98) are pulled towards it, in the low-resolution blocks only.

The cache is explicit state, not hidden in the processors, so that a traced graph takes it in and gives it
back: one tensor `cache` of shape (rows, size), rows = the UNet call's batch (one per stream slot and
guidance branch), holding for each self-attention layer the keys, values and outputs of F frames
(3, F, tokens, channels), flattened and laid end to end. A row's cache belongs to its slot: it holds the
earlier frames as they were at that slot's timestep. `frame_index` (rows,) says which frame of the video a
row holds (-1: none, its cache is kept as it is): frame 0 fills its cache with its own keys and values (so
it attends exactly as without a cache: duplicated keys with their values leave attention unchanged), every
frame writes its own into the newest place, and every `interval`-th frame advances the ring first (the
oldest leaves), so the newest place always holds the frame just before and the others are spaced by the
interval. Cross-attention (the prompt, a style image) is untouched.

`AttentionCache` is the one object: it installs its processors on a UNet, knows its layout for a latent
size (found by one dry run), runs a UNet call with a cache in and out (`attending`), and describes itself
for the manifest and the cache key (`record`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from stdtrt.config import check_cache_options
from stdtrt.errors import StdtrtError
from stdtrt.models.conditioning import compute_dtype
from stdtrt.models.motion import is_motion_unet

FUSION_THRESHOLD = 0.98  # StreamV2V's: only near-copies of an earlier token are pulled towards it


@dataclass(frozen=True)
class CacheSettings:
    frames: int  # F: earlier frames each self-attention sees (1..4)
    interval: int = 1  # the ring advances every this many frames (it is written every frame)
    fusion: float = 0.0  # feature fusion strength in [0, 1] (0: off)

    def __post_init__(self) -> None:
        check_cache_options(self.frames, self.interval, self.fusion)
        if self.frames < 1:
            raise StdtrtError("an attention cache needs --cache-frames 1 or more")

    @classmethod
    def of(cls, cfg) -> CacheSettings | None:
        """A StylizeConfig's or ExportConfig's cache (None with --cache-frames 0)."""
        return cls(cfg.cache_frames, cfg.cache_interval, cfg.feature_fusion) if cfg.cache_frames else None

    def record(self) -> dict:
        """What the manifest and the cache key say of it."""
        return {"frames": self.frames, "interval": self.interval, "fusion": self.fusion,
                "threshold": FUSION_THRESHOLD}  # fmt: skip

    def key(self) -> dict:
        """What the graphs' cache key holds of it (all of it: the UNet graph takes and gives the cache)."""
        return self.record()


@dataclass(frozen=True)
class _Layer:
    name: str
    tokens: int
    channels: int
    offset: int  # where its (3, F, tokens, channels) block starts in a row of the cache
    fuse: bool  # feature fusion here (the low-resolution blocks)

    def size(self, frames: int) -> int:
        return 3 * frames * self.tokens * self.channels


class _Call:
    """One UNet call's cache: what it reads and what its layers write."""

    def __init__(self, cache: torch.Tensor, index: torch.Tensor):
        self.cache, self.index = cache, index  # (rows, size), (rows,)
        self.written: dict[int, torch.Tensor] = {}


class CachedSelfAttention:
    """A self-attention layer's processor: diffusers' SDPA self-attention, over its own tokens and the
    cached ones of earlier frames (see the module doc)."""

    def __init__(self, owner: AttentionCache, layer: int):
        self.owner, self.layer = owner, layer

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):  # fmt: skip
        if encoder_hidden_states is not None or attention_mask is not None or attn.spatial_norm is not None:
            raise StdtrtError("cached attention is for the UNet's plain self-attention layers")
        call, owner = self.owner.call, self.owner
        residual = hidden_states
        shape4 = hidden_states.shape if hidden_states.ndim == 4 else None
        if shape4 is not None:
            hidden_states = hidden_states.flatten(2).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        rows, tokens, _ = hidden_states.shape
        q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        if call is None:  # a call without a cache (the dry run that finds the layout records its shapes)
            if owner.probing:
                owner.seen[self.layer] = (tokens, k.shape[-1])
            keys, values, cached_out = k, v, None
        else:
            f = owner.settings.frames
            block = owner.read(call, self.layer, rows)  # (rows, 3, F, tokens, C)
            fresh = (call.index == 0).view(-1, 1, 1, 1)
            cached_k = torch.where(fresh, k.unsqueeze(1).expand(-1, f, -1, -1), block[:, 0])
            cached_v = torch.where(fresh, v.unsqueeze(1).expand(-1, f, -1, -1), block[:, 1])
            keys = torch.cat([k, cached_k.flatten(1, 2)], dim=1)
            values = torch.cat([v, cached_v.flatten(1, 2)], dim=1)
            cached_out = block[:, 2]
        out = self._attend(attn, q, keys, values, rows)
        if shape4 is not None:
            out = out.transpose(1, 2).reshape(shape4)
        if attn.residual_connection:
            out = out + residual
        out = out / attn.rescale_output_factor
        if call is not None:
            fresh4 = (call.index == 0).view(-1, 1, 1, 1)
            flat = out if shape4 is None else out.flatten(2).transpose(1, 2)
            cached_out = torch.where(fresh4, flat.unsqueeze(1).expand_as(cached_out), cached_out)
            owner.write(call, self.layer, (cached_k, cached_v, cached_out), (k, v, flat))
            if owner.layers[self.layer].fuse and owner.settings.fusion > 0:
                out = _fuse(flat, cached_out, owner.settings.fusion)
                out = out if shape4 is None else out.transpose(1, 2).reshape(shape4)
        return out

    @staticmethod
    def _attend(attn, q, keys, values, rows: int) -> torch.Tensor:
        heads = attn.heads
        head_dim = keys.shape[-1] // heads
        q = q.view(rows, -1, heads, head_dim).transpose(1, 2)
        keys = keys.view(rows, -1, heads, head_dim).transpose(1, 2)
        values = values.view(rows, -1, heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            keys = attn.norm_k(keys)
        out = F.scaled_dot_product_attention(q, keys, values, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(rows, -1, heads * head_dim).to(q.dtype)
        return attn.to_out[1](attn.to_out[0](out))


def _fuse(out: torch.Tensor, cached: torch.Tensor, strength: float) -> torch.Tensor:
    """Feature fusion: each output token (rows, T, C) whose nearest cached output token (of the F frames,
    (rows, F, T, C)) has cosine >= FUSION_THRESHOLD moves `strength` of the way to it (cosines in float32)."""
    bank = cached.flatten(1, 2)
    sim = F.normalize(out.float(), dim=-1) @ F.normalize(bank.float(), dim=-1).transpose(1, 2)
    best, where = sim.max(dim=-1)  # (rows, T)
    nearest = torch.gather(bank, 1, where.unsqueeze(-1).expand(-1, -1, bank.shape[-1]))
    pull = (best >= FUSION_THRESHOLD).unsqueeze(-1).to(out.dtype) * strength
    return out + pull * (nearest - out)


def _self_attention_names(unet) -> list[str]:
    """The spatial self-attention layers (attn1 of every transformer block), by name (the order of the cache's
    blocks; not the order a forward calls them in); a motion UNet's temporal layers are not among them."""
    return [n for n in unet.attn_processors if n.endswith("attn1.processor") and "motion_modules" not in n]


def _fused_blocks(unet) -> tuple[str, ...]:
    """Where feature fusion applies: the mid block and the first up block with attention (the
    lowest-resolution up path, StreamV2V's choice)."""
    first_up = next(i for i, b in enumerate(unet.up_blocks) if hasattr(b, "attentions"))
    return ("mid_block.", f"up_blocks.{first_up}.")


class AttentionCache:
    """The cache of one UNet for one latent size (see the module doc)."""

    def __init__(self, settings: CacheSettings):
        self.settings = settings
        self.layers: list[_Layer] = []
        self.call: _Call | None = None
        self.probing, self.seen = False, {}

    def record(self) -> dict:
        return self.settings.record()

    @classmethod
    def on(cls, unet, settings: CacheSettings, cond, latent_shape) -> AttentionCache:
        """The cache installed on `unet` for these settings, latent shape and dtype: the one already there
        (the stream form and the sequential student of one model share it), else a new one installed."""
        key = (settings, tuple(latent_shape), compute_dtype(unet))
        found = getattr(unet, "_stdtrt_attention_cache", None)
        processors = unet.attn_processors.values()
        installed = any(isinstance(p, CachedSelfAttention) and p.owner is found for p in processors)
        if found is not None and found.key == key and installed:  # (not replaced since, by an IP-Adapter's)
            return found
        cache = cls(settings)._install(unet, cond, latent_shape)
        cache.key = key
        unet._stdtrt_attention_cache = cache
        return cache

    def _install(self, unet, cond, latent_shape) -> AttentionCache:
        """Put the cached processors on the UNet's self-attention layers and find the layout for latents of
        `latent_shape` (4, h, w) by one dry run of batch 1 (`cond`: a batch-1 models.conditioning.Conditioning)."""
        if is_motion_unet(unet):
            raise StdtrtError(
                "--cache-frames is for the per-frame student: the video student's motion modules already "
                "attend across its window"
            )
        names = _self_attention_names(unet)
        processors = dict(unet.attn_processors)
        for i, name in enumerate(names):
            processors[name] = CachedSelfAttention(self, i)
        unet.set_attn_processor(processors)
        dtype, device = compute_dtype(unet), unet.device
        self.probing, self.seen = True, {}
        try:
            with torch.no_grad():
                x = torch.zeros((1, *latent_shape), dtype=dtype, device=device)
                kwargs = cond.for_latents(x).to(device, dtype).unet_kwargs()
                unet(x, torch.tensor([999], device=device), **kwargs)
        finally:
            self.probing = False
        if len(self.seen) != len(names):
            raise StdtrtError(f"the dry run met {len(self.seen)} self-attention layers, not {len(names)}")
        fused, offset = _fused_blocks(unet), 0
        for i, name in enumerate(names):
            tokens, channels = self.seen[i]
            layer = _Layer(name, tokens, channels, offset, name.startswith(fused))
            self.layers.append(layer)
            offset += layer.size(self.settings.frames)
        self.size = offset
        return self

    def empty(self, rows: int, dtype, device) -> torch.Tensor:
        """A cache no frame has written yet.  # (rows, size)"""
        return torch.zeros((rows, self.size), dtype=dtype, device=device)

    def read(self, call: _Call, layer: int, rows: int) -> torch.Tensor:
        lay, f = self.layers[layer], self.settings.frames
        if call.cache.shape[0] != rows:
            raise StdtrtError(f"the cache has {call.cache.shape[0]} rows, the UNet call {rows}")
        block = call.cache[:, lay.offset : lay.offset + lay.size(f)]
        return block.view(rows, 3, f, lay.tokens, lay.channels)

    def write(self, call: _Call, layer: int, cached: tuple, new: tuple) -> None:
        """The layer's next cache: its own keys, values and outputs in the newest place, the ring advanced
        first on every interval-th frame; rows that hold no frame keep theirs."""
        index = call.index
        advance = ((index % self.settings.interval) == 0).view(-1, 1, 1, 1)
        parts = []
        for old, mine in zip(cached, new, strict=True):  # (rows, F, T, C), (rows, T, C)
            mine = mine.unsqueeze(1).to(old.dtype)
            shifted = torch.cat([old[:, 1:], mine], dim=1)  # the oldest leaves
            kept = torch.cat([old[:, :-1], mine], dim=1)  # the newest place rewritten
            parts.append(torch.where(advance, shifted, kept))
        block = torch.stack(parts, dim=1).flatten(1)
        lay = self.layers[layer]
        old_block = call.cache[:, lay.offset : lay.offset + lay.size(self.settings.frames)]
        call.written[layer] = torch.where((index >= 0).view(-1, 1), block, old_block)

    @contextlib.contextmanager
    def attending(self, cache: torch.Tensor, index: torch.Tensor):
        """Run UNet calls inside this with `cache` (rows, size) and `frame_index` (rows,); the yielded
        list receives the next cache (rows, size) when the block ends."""
        self.call = _Call(cache, index.to(cache.device))
        result: list[torch.Tensor] = []
        try:
            yield result
            missing = [i for i in range(len(self.layers)) if i not in self.call.written]
            if missing:
                raise StdtrtError(f"the UNet call skipped cached layers {missing[:3]}")
            result.append(torch.cat([self.call.written[i] for i in range(len(self.layers))], dim=1))
        finally:
            self.call = None

    # -- in a stream UNet graph (models.conditioning.GraphCall): the cache and each slot's frame in, the next
    # cache out; a cache row per UNet row
    inputs, outputs = ("cache", "frame_index"), ("cache_next",)

    def graph_specs(self, call, width: int, height: int) -> list[tuple[str, tuple, torch.dtype]]:
        return [("cache", (call.rows, self.size), call.dtype), ("frame_index", (call.nfe,), torch.int64)]

    def enter(self, named: dict, call, stack: contextlib.ExitStack):
        index = named["frame_index"].repeat(call.rows // named["frame_index"].shape[0])
        cache_next = stack.enter_context(self.attending(named["cache"], index))
        return {}, lambda: [cache_next[0]]
