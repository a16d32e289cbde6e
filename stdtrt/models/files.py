"""What a teacher's name or file is: a diffusers folder, a hub id's local snapshot, a single-file checkpoint.

Which pipeline class reads it (SD 1.x or SDXL), and the UNets refused before any weight is read.
"""

from __future__ import annotations

import json
from pathlib import Path

from stdtrt.errors import StdtrtError
from stdtrt.models.hub import local_folder
from stdtrt.models.presets import OFFLINE_HINT


def resolve(name: str) -> Path:
    """A local diffusers folder for `name`: the folder itself, or the hub id's snapshot in the HF cache."""
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").exists():
            raise StdtrtError(f"{path} is not a diffusers pipeline folder (no model_index.json)")
        return path
    if path.suffix in (".safetensors", ".ckpt") or path.exists():
        if not path.exists():
            raise StdtrtError(f"model file {path} does not exist")
        return path
    return local_folder(name, "model", name, OFFLINE_HINT)


def pipeline_class(path: Path):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    index = json.loads((path / "model_index.json").read_text())
    cls = str(index.get("_class_name", ""))
    if "StableDiffusionXL" in cls:
        return StableDiffusionXLPipeline, "sdxl"
    if cls.startswith("StableDiffusion") and "3" not in cls:
        return StableDiffusionPipeline, "sd"
    raise StdtrtError(
        f"{path}: {cls or 'this pipeline'} is not an SD 1.x or SDXL pipeline, which stdtrt supports"
    )


def check_supported(name: str, unet_config, has_text_encoder: bool) -> None:
    """Refuse the UNets stdtrt cannot stylize with: other input channels (inpainting: 9, InstructPix2Pix:
    8, upscalers: 7, depth-to-image: 5) and the SDXL refiner (no first text encoder, 5 time ids)."""
    channels = unet_config.get("in_channels", 4) if isinstance(unet_config, dict) else unet_config.in_channels
    if channels != 4:
        raise StdtrtError(
            f"{name}: its UNet takes {channels} input channels (an inpainting, InstructPix2Pix, depth-to-image "
            f"or upscaler model); stdtrt stylizes with a 4-channel text-to-image UNet (SD 1.x, SDXL base)"
        )
    if not has_text_encoder:
        raise StdtrtError(
            f"{name} has no first text encoder: it is the SDXL refiner, which works on the base model's "
            f"latents only; pass an SDXL base model (e.g. stabilityai/stable-diffusion-xl-base-1.0)"
        )


def check_folder(path: Path) -> None:
    """check_supported from the folder's files alone, before any weight is read."""
    index = json.loads((path / "model_index.json").read_text())
    unet = path / "unet" / "config.json"
    unet_config = json.loads(unet.read_text()) if unet.is_file() else {}
    text = index.get("text_encoder")
    check_supported(str(path), unet_config, bool(text and text[0]))


def load_single_file(path: Path, dtype):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    kind = single_file_kind(path)
    cls = StableDiffusionXLPipeline if kind == "sdxl" else StableDiffusionPipeline
    try:
        return cls.from_single_file(str(path), torch_dtype=dtype, local_files_only=True), kind
    except Exception as exc:
        raise StdtrtError(
            f"could not load single-file checkpoint {path} offline ({exc}); convert it to a diffusers folder "
            f"once (diffusers' from_single_file(...).save_pretrained(DIR)) and pass that folder"
        ) from None


def single_file_kind(path: Path) -> str:
    """ "sd" or "sdxl" from a safetensors checkpoint's key names (its header; nothing is unpickled): SDXL's
    base carries two text encoders (conditioner.embedders.0 and .1); the refiner only OpenCLIP's
    (conditioner.embedders.0), and is refused as a folder is (check_supported). A .ckpt is taken as SD 1.x."""
    if path.suffix != ".safetensors":
        return "sd"
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            names = list(f.keys())
    except Exception as exc:
        raise StdtrtError(f"{path} is not a readable safetensors checkpoint ({exc})") from None
    if any(k.startswith("conditioner.embedders.1.") for k in names):
        return "sdxl"
    if any(k.startswith("conditioner.embedders.") for k in names):
        check_supported(str(path), {"in_channels": 4}, has_text_encoder=False)  # the refiner: refused
    return "sd"
