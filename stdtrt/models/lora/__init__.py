"""LoRA students: add one to a UNet (peft), save it in the kohya form every tool loads, load one back, and
fuse it into the UNet weights (what export traces and the bundle's torch backend runs).

File format (kohya): `lora_unet_<module_path_with_underscores>.lora_down.weight` (r, in[, k, k]),
`.lora_up.weight` (out, r[, 1, 1]) and `.alpha` (the real alpha; scale = alpha / r). diffusers'
`load_lora_weights`, ComfyUI and A1111 read it. stdtrt's own metadata sits in the safetensors header.
The module path is diffusers' for SD 1.x and motion UNets, and the original (SGM/LDM) UNet's for SDXL, as
kohya's trainer writes it: A1111 maps SD-1.x-shaped diffusers names only (on SDXL it sends
up_blocks.0.upsamplers.0 to the wrong layer), and diffusers drops every SGM key of a file that mixes both.

    adapter.py   the adapter on a UNet (peft): its target modules, add_lora, lora_layers
    names.py     the original UNet's (SGM) module names, for SDXL kohya files
    files.py     the kohya and diffusers files, stdtrt's metadata, kohya names in diffusers' form
    load.py      load_lora, refusing a LoRA of another UNet
    fuse.py      fuse_lora, checked against the unfused UNet
"""

from stdtrt.models.lora.adapter import ADAPTER, TARGET_MODULES, add_lora, lora_layers
from stdtrt.models.lora.files import (
    kohya_state_dict,
    kohya_to_diffusers,
    read_metadata,
    save_diffusers,
    save_kohya,
)
from stdtrt.models.lora.fuse import FUSE_TOLERANCE, FuseReport, fuse_lora
from stdtrt.models.lora.load import load_lora
from stdtrt.models.lora.names import sgm_name

__all__ = [
    "ADAPTER",
    "FUSE_TOLERANCE",
    "FuseReport",
    "TARGET_MODULES",
    "add_lora",
    "fuse_lora",
    "kohya_state_dict",
    "kohya_to_diffusers",
    "load_lora",
    "lora_layers",
    "read_metadata",
    "save_diffusers",
    "save_kohya",
    "sgm_name",
]
