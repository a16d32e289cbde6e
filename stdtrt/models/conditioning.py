"""Text conditioning and the one way stdtrt calls a UNet (with classifier-free guidance when asked).

A `Conditioning` carries what a UNet call needs besides the latent and the timestep: the text hidden
states, for SDXL the pooled text embedding and the six micro-conditioning time ids, and with a style image
(models/style.py) its IP-Adapter image embedding.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

log = logging.getLogger(__name__)


@dataclass
class Conditioning:
    embeds: torch.Tensor  # (B, L, D) text hidden states
    pooled: torch.Tensor | None = None  # (B, P) SDXL pooled text embedding
    time_ids: torch.Tensor | None = None  # (B, 6) SDXL (orig h, orig w, crop top, crop left, h, w)
    image: torch.Tensor | None = None  # (B, 1, D) IP-Adapter image embedding (zeros: the unconditional one)

    @property
    def batch(self) -> int:
        return self.embeds.shape[0]

    def unet_kwargs(self) -> dict:
        kwargs = {"encoder_hidden_states": self.embeds}
        added = {}
        if self.pooled is not None:
            added.update(text_embeds=self.pooled, time_ids=self.time_ids)
        if self.image is not None:
            added["image_embeds"] = [self.image]
        if added:
            kwargs["added_cond_kwargs"] = added
        return kwargs

    def with_image(self, image: torch.Tensor | None) -> Conditioning:
        """This conditioning with an image embedding (1, 1, D) for every row (None: without one)."""
        rows = None if image is None else image.to(self.embeds.device).expand(self.batch, *image.shape[1:])
        return Conditioning(self.embeds, self.pooled, self.time_ids, rows)

    def map(self, fn) -> Conditioning:
        """Apply fn to every tensor (to(), expand, index, ...)."""
        return Conditioning(
            fn(self.embeds),
            None if self.pooled is None else fn(self.pooled),
            None if self.time_ids is None else fn(self.time_ids),
            None if self.image is None else fn(self.image),
        )

    def to(self, device=None, dtype=None) -> Conditioning:
        return self.map(lambda t: t.to(device=device, dtype=dtype))

    def repeat(self, n: int) -> Conditioning:
        """Repeat a batch-1 conditioning n times along the batch."""
        return self.map(lambda t: t.expand(n, *t.shape[1:]).contiguous())

    def for_latents(self, x: torch.Tensor) -> Conditioning:
        """This conditioning for a UNet call on `x`: batch-1 repeated to x's batch, and for clips (B, 4, F, h,
        w) the text hidden states once per frame, clip by clip: a UNetMotionModel runs its spatial layers on
        B*F frames and takes encoder_hidden_states so, while it repeats the time embedding, the SDXL
        added conditioning and the IP-Adapter image embedding per frame itself (batch B)."""
        cond = self.repeat(x.shape[0]) if self.batch != x.shape[0] else self
        if x.ndim == 5:
            frames = x.shape[2]
            embeds = cond.embeds.repeat_interleave(frames, dim=0)
            cond = Conditioning(embeds, cond.pooled, cond.time_ids, cond.image)
        return cond

    @staticmethod
    def cat(items: list[Conditioning]) -> Conditioning:
        first = items[0]
        return Conditioning(
            torch.cat([c.embeds for c in items]),
            None if first.pooled is None else torch.cat([c.pooled for c in items]),
            None if first.time_ids is None else torch.cat([c.time_ids for c in items]),
            None if first.image is None else torch.cat([c.image for c in items]),
        )


def sdxl_time_ids(height: int, width: int) -> torch.Tensor:
    """SDXL micro-conditioning for an uncropped image at its own size.  # (1, 6)"""
    return torch.tensor([[height, width, 0, 0, height, width]], dtype=torch.float32)


def truncated_tokens(tokenizer, prompt: str) -> list[int]:
    """The token ids of `prompt` that CLIP does not read: past model_max_length (77: 75 and the start and
    end tokens); stdtrt, like diffusers' pipelines, encodes one window and cuts the rest."""
    ids = tokenizer(prompt, truncation=False, add_special_tokens=True, verbose=False).input_ids
    keep = tokenizer.model_max_length - 1  # the end token takes the last place
    return ids[keep:-1] if len(ids) > tokenizer.model_max_length else []


_SAID: set[str] = set()


def say_truncated(pipe, prompts: list[str]) -> None:
    """One line per prompt (once per process) that is longer than the text encoder reads, with how many
    tokens and which words are dropped."""
    tokenizer = pipe.tokenizer if pipe.tokenizer is not None else pipe.tokenizer_2
    for prompt in dict.fromkeys(prompts):
        cut = truncated_tokens(tokenizer, prompt) if prompt not in _SAID else []
        if cut:
            _SAID.add(prompt)
            words = tokenizer.decode(cut).strip()
            shown = words if len(words) <= 60 else words[:57] + "..."
            log.warning(
                "the prompt has %d tokens more than the %d the text encoder reads: they are dropped, from "
                "%r on; shorten the prompt", len(cut), tokenizer.model_max_length - 2, shown,
            )  # fmt: skip


@torch.no_grad()
def encode_prompt(pipe, prompt: str | list[str], height: int, width: int) -> Conditioning:
    """Encode prompt(s) with a diffusers SD or SDXL pipeline's own text encoders (no guidance branch).

    An empty prompt gives the real empty-prompt embeddings (what the teacher's unconditional branch uses).
    """
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    say_truncated(pipe, prompts)
    device = pipe.unet.device
    if hasattr(pipe, "text_encoder_2"):  # SDXL
        embeds, _, pooled, _ = pipe.encode_prompt(
            prompts, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False
        )
        time_ids = sdxl_time_ids(height, width).expand(len(prompts), 6)
        return Conditioning(embeds, pooled, time_ids.to(device=device, dtype=embeds.dtype))
    embeds, _ = pipe.encode_prompt(
        prompts, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False
    )
    return Conditioning(embeds)


@torch.no_grad()
def pooled_text(pipe, prompts: list[str]) -> torch.Tensor:
    """The pipeline's own pooled text embedding per prompt (SDXL: text_encoder_2's projection; SD 1.x: the
    CLIP text encoder's pooled output).  # (P, D)"""
    if hasattr(pipe, "text_encoder_2"):
        return encode_prompt(pipe, prompts, 8, 8).pooled
    tok = pipe.tokenizer(
        prompts,
        padding="max_length",
        max_length=pipe.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    return pipe.text_encoder(tok.input_ids.to(pipe.text_encoder.device)).pooler_output


def conditionings(
    pipe, prompt: str, negative_prompt: str, guidance: float, height: int, width: int, style=None
) -> tuple[Conditioning, Conditioning | None]:
    """The run's (cond, uncond) for a prompt, computed once: uncond only with guidance > 1; a style (a
    models.style.Style) adds its image embedding to cond and zeros of its shape to uncond."""
    cond = encode_prompt(pipe, prompt, height, width)
    uncond = encode_prompt(pipe, negative_prompt, height, width) if guidance > 1 else None
    if style is not None:
        cond = cond.with_image(style.embeds.to(cond.embeds.dtype))
        if uncond is not None:
            uncond = uncond.with_image(torch.zeros_like(style.embeds, dtype=uncond.embeds.dtype))
    return cond, uncond


def compute_dtype(unet) -> torch.dtype:
    """The dtype a UNet computes in: its base weights' (a LoRA may keep its own weights in float32)."""
    return unet.conv_in.weight.dtype


@dataclass(frozen=True)
class GraphCall:
    """The shapes of one stream UNet call (bundle/networks.StreamUNet): NFE slots of `batch` frames, `rows`
    rows in the UNet call (the guidance branches repeat the slots), the UNet's dtype."""

    nfe: int
    batch: int
    rows: int
    dtype: torch.dtype


class GraphAddition(Protocol):
    """What a conditioning adds to the stream UNet graph (models.attention_cache.AttentionCache,
    models.controlnet.Control): named inputs and outputs (an input X with an output X_next is state the
    runtime hands back at the next call), the inputs' (name, shape, dtype) for frames of width x height, and
    its part of one call: `enter` returns the UNet call's extra keyword arguments and a function that gives
    its outputs once the call is done (`stack` holds what must stay open around the call)."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    def graph_specs(
        self, call: GraphCall, width: int, height: int
    ) -> list[tuple[str, tuple, torch.dtype]]: ...

    def enter(self, named: dict, call: GraphCall, stack) -> tuple[dict, Callable[[], list]]: ...


def predict_eps(
    unet, x, t, cond: Conditioning, uncond: Conditioning | None = None, guidance=1.0, control=None
):
    """The UNet's noise estimate, with classifier-free guidance e_u + g (e_c - e_u) when uncond is given.

    x: (B, 4, h, w), or clips (B, 4, F, h, w) for a motion UNet, any float dtype: cast to the UNet's dtype
    here (so are the conditionings); t: scalar or (B,) timesteps; cond/uncond: batch B (or 1, broadcast
    here); guidance: a float or a tensor shaped (B, 1, ...) like x; control: (models.controlnet.Control,
    each row's map (B, 3, H, W) in [0, 1]), whose residuals join the call (both guidance branches, as
    diffusers' ControlNet pipelines run it).
    The estimate comes back float32, and the guidance combine runs in float32.
    """
    dtype = compute_dtype(unet)
    cond = cond.for_latents(x).to(dtype=dtype)
    x = x.to(dtype)
    t = torch.as_tensor(t, device=x.device)
    if uncond is None:
        kwargs = cond.unet_kwargs()
        if control is not None:
            kwargs.update(control[0].residuals(x, t, kwargs, control[1]))
        return unet(x, t, **kwargs, return_dict=False)[0].float()
    uncond = uncond.for_latents(x).to(dtype=dtype)
    t2 = t.repeat(2) if t.ndim else t
    both = Conditioning.cat([uncond, cond])
    kwargs, x2 = both.unet_kwargs(), torch.cat([x, x])
    if control is not None:
        kwargs.update(control[0].residuals(x2, t2, kwargs, torch.cat([control[1], control[1]])))
    e_u, e_c = unet(x2, t2, **kwargs, return_dict=False)[0].float().chunk(2)
    if isinstance(guidance, torch.Tensor):
        guidance = guidance.float()
    return e_u + guidance * (e_c - e_u)
