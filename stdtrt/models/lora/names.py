"""Module paths in the original (SGM/LDM) UNet's naming, which SDXL checkpoints, kohya's SDXL LoRAs, A1111
and ComfyUI use, and which UNets stdtrt writes in them."""

from __future__ import annotations

import re

from stdtrt.models.motion import is_motion_unet

_RESNET_SGM = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_TOP_SGM = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}


def sgm_name(name: str, unet) -> str:
    """A diffusers UNet2DConditionModel module path in the original (SGM/LDM) UNet's naming, the names
    SDXL checkpoints, kohya's SDXL LoRAs, A1111 and ComfyUI use. Block i of diffusers' down path is SGM
    input blocks 1 + (L+1)i .. (its resnet j with its attention j share one), the downsampler the block
    after them; the up path likewise from output block 0, its upsampler after the attention if any."""
    per = unet.config.layers_per_block + 1
    if name in _TOP_SGM:
        return _TOP_SGM[name]
    m = re.fullmatch(r"(down_blocks|up_blocks|mid_block)\.(?:(\d+)\.)?(resnets|attentions|downsamplers|upsamplers)"
                     r"\.(\d+)(?:\.(.+))?", name)  # fmt: skip
    if m is None:
        raise ValueError(f"no SGM name for UNet module {name!r}")
    path, block, kind, index, rest = m.group(1), int(m.group(2) or 0), m.group(3), int(m.group(4)), m.group(5)
    if kind == "resnets" and rest is not None:
        head = rest.split(".")[0]
        rest = _RESNET_SGM.get(head, head) + rest[len(head) :]
    if path == "mid_block":
        layer = f"middle_block.{2 * index if kind == 'resnets' else 1}"
    elif path == "down_blocks":
        slot = {"resnets": 0, "attentions": 1, "downsamplers": 0}[kind]
        number = per * (block + 1) if kind == "downsamplers" else 1 + per * block + index
        layer = f"input_blocks.{number}.{slot}"
        rest = "op" if kind == "downsamplers" else rest
    else:
        has_attention = hasattr(unet.up_blocks[block], "attentions")
        slot = {"resnets": 0, "attentions": 1, "upsamplers": 2 if has_attention else 1}[kind]
        number = per * block + (per - 1 if kind == "upsamplers" else index)
        layer = f"output_blocks.{number}.{slot}"
    return layer if rest is None else f"{layer}.{rest}"


def writes_sgm(unet) -> bool:
    """An SDXL image UNet's kohya file is written in SGM names (see the module's docstring), where
    diffusers reads them back: one layers_per_block, and an attention in every up block that upsamples
    (diffusers' SGM reader takes an upsampler at slot 1 for an attention; SDXL's base has one, its refiner
    not: the refiner's file keeps diffusers' names)."""
    sdxl = unet.config.get("addition_embed_type") == "text_time" and not is_motion_unet(unet)
    readable = isinstance(unet.config.layers_per_block, int) and all(
        hasattr(block, "attentions") for block in unet.up_blocks if getattr(block, "upsamplers", None)
    )
    return sdxl and readable
