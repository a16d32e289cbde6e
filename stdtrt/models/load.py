"""Load a teacher: a diffusers folder, a hub id from the local Hugging Face cache (never downloaded), a
single-file checkpoint, or a built-in tiny preset. Everything downstream gets a `LoadedModel`.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from stdtrt import schedule
from stdtrt.errors import StdtrtError
from stdtrt.models import presets

log = logging.getLogger(__name__)

OFFLINE_HINT = "`--model tiny-sd` works offline"


@dataclass
class LoadedModel:
    pipe: object  # diffusers StableDiffusionPipeline or StableDiffusionXLPipeline
    name: str  # what the user passed
    kind: str  # "sd" or "sdxl"
    lora: str | None = None  # the LoRA file loaded onto the UNet, if any

    @property
    def unet(self):
        return self.pipe.unet

    @property
    def vae(self):
        return self.pipe.vae

    @property
    def device(self) -> torch.device:
        return self.pipe.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.pipe.unet.dtype

    @property
    def vae_scale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def native_size(self) -> int:
        """The image side the UNet was trained at (512 for SD 1.5, 1024 for SDXL, 256 for tiny-sd)."""
        return int(self.unet.config.sample_size) * self.vae_scale

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    def alphas_cumprod(self) -> torch.Tensor:
        return schedule.alphas_cumprod(dict(self.pipe.scheduler.config))

    def working_size(
        self, image_w: int, image_h: int, width: int | None, height: int | None
    ) -> tuple[int, int]:
        """The size frames are stylized at: as given, or the input's aspect at about the native area,
        rounded to multiples of 8."""
        if width and height:
            return width, height
        if width:
            return width, _round8(width * image_h / image_w)
        if height:
            return _round8(height * image_w / image_h), height
        scale = math.sqrt(self.native_size**2 / (image_w * image_h))
        return _round8(image_w * scale), _round8(image_h * scale)


def _round8(x: float) -> int:
    return max(8, int(round(x / 8)) * 8)


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
    if name.count("/") != 1 or name.startswith((".", "/")):
        raise StdtrtError(
            f"model {name!r} is neither a folder nor a file nor a hub id (owner/name); {OFFLINE_HINT}"
        )
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, local_files_only=True))
    except Exception as exc:  # LocalEntryNotFoundError, or an incomplete cache entry
        from huggingface_hub.constants import HF_HUB_CACHE

        raise StdtrtError(
            f"model {name!r} is not in the local Hugging Face cache ({HF_HUB_CACHE}) and stdtrt never downloads "
            f"on its own: run `hf download {name}` (or pass a diffusers folder); {OFFLINE_HINT} "
            f"[{type(exc).__name__}]"
        ) from None


def _pipeline_class(path: Path):
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


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise StdtrtError(f"device {name} requested but CUDA is not available (torch {torch.__version__})")
    return device


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if precision == "fp16" and device.type == "cpu":
        raise StdtrtError("fp16 is not supported on the CPU; use --precision fp32")
    return {"fp16": torch.float16, "fp32": torch.float32}[precision]


def place(pipe, device: str | torch.device, dtype: torch.dtype) -> None:
    """Move a pipeline to a device and dtype; under fp16 a VAE whose config asks for it (force_upcast:
    SDXL's overflows in fp16) stays fp32. Every place that moves a loaded model goes through here."""
    pipe.to(device=device, dtype=dtype)
    if dtype == torch.float16 and getattr(pipe.vae.config, "force_upcast", False):
        pipe.vae.to(torch.float32)


def load_model(
    name: str,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    lora: str | None = None,
) -> LoadedModel:
    """Load a teacher by name (folder, hub id in the local cache, single file, or preset)."""
    from diffusers.utils import logging as dlogging

    dlogging.set_verbosity_error()
    if name in presets.PRESETS:
        pipe, kind = presets.build(name), ("sdxl" if "sdxl" in name else "sd")
    else:
        path = resolve(name)
        try:
            if path.is_file():
                pipe, kind = _load_single_file(path, dtype)
            else:
                cls, kind = _pipeline_class(path)
                extra = {"safety_checker": None, "requires_safety_checker": False} if kind == "sd" else {}
                pipe = cls.from_pretrained(path, torch_dtype=dtype, local_files_only=True, **extra)
        except StdtrtError:
            raise
        except Exception as exc:
            raise StdtrtError(f"could not load model from {path}: {exc}") from None
    pipe.set_progress_bar_config(disable=True)
    place(pipe, device, dtype)
    for module in (pipe.unet, pipe.vae, pipe.text_encoder, getattr(pipe, "text_encoder_2", None)):
        if module is not None:
            module.requires_grad_(False).eval()
    model = LoadedModel(pipe=pipe, name=name, kind=kind)
    model.alphas_cumprod()  # fails early for v-prediction models
    if lora:
        from stdtrt.models.lora import load_lora

        load_lora(model, lora)
    return model


def _load_single_file(path: Path, dtype):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    sdxl = _single_file_is_sdxl(path)
    cls, kind = (StableDiffusionXLPipeline, "sdxl") if sdxl else (StableDiffusionPipeline, "sd")
    try:
        return cls.from_single_file(str(path), torch_dtype=dtype, local_files_only=True), kind
    except Exception as exc:
        raise StdtrtError(
            f"could not load single-file checkpoint {path} offline ({exc}); convert it to a diffusers folder "
            f"once (diffusers' from_single_file(...).save_pretrained(DIR)) and pass that folder"
        ) from None


def _single_file_is_sdxl(path: Path) -> bool:
    """SDXL checkpoints carry a second text encoder (conditioner.embedders.1); read from the safetensors
    header. A .ckpt is not unpickled to look: it is taken as SD 1.x."""
    if path.suffix != ".safetensors":
        return False
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            names = list(f.keys())
        return any(k.startswith("conditioner.embedders.1.") for k in names)
    except Exception as exc:
        raise StdtrtError(f"{path} is not a readable safetensors checkpoint ({exc})") from None
