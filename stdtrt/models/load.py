"""Load a teacher and place it: the one precision rule (Placement), and the `LoadedModel` downstream gets.

A diffusers folder, a hub id from the local Hugging Face cache (never downloaded), a single-file checkpoint
(models/files.py finds and checks them), or a built-in tiny preset.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass, field

import torch

from stdtrt import schedule
from stdtrt.config import parse_device, round_size
from stdtrt.errors import StdtrtError
from stdtrt.models import presets
from stdtrt.models.files import check_folder, check_supported, load_single_file, pipeline_class, resolve
from stdtrt.models.lora import fuse_lora, load_lora
from stdtrt.models.vae import load_vae, vae_scale

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    pipe: object  # diffusers StableDiffusionPipeline or StableDiffusionXLPipeline
    name: str  # what the user passed
    kind: str  # "sd" or "sdxl"
    placement: Placement  # the device and dtypes it runs in (models.load.place moves it)
    lora: str | None = None  # the LoRA file loaded onto the UNet, if any
    vae_info: dict = field(default_factory=lambda: {"spec": "full"})  # which VAE runs (use_vae)
    motion: str | None = None  # the motion adapter joined into the UNet (a UNetMotionModel), if any

    @property
    def unet(self):
        return self.pipe.unet

    @property
    def vae(self):
        return self.pipe.vae

    @property
    def device(self) -> torch.device:
        return self.placement.device

    @property
    def dtype(self) -> torch.dtype:
        """The UNet's (and text encoders') dtype."""
        return self.placement.unet

    def place(self, placement: Placement) -> None:
        place(self.pipe, placement)
        self.placement = placement

    def use_vae(self, spec: str) -> None:
        """Run with `--vae spec` (full | tiny | PATH_OR_ID | tiny-taesd) instead of the model's own VAE, placed
        by the same precision rule (TAESD says force_upcast false: it stays in half precision)."""
        vae, self.vae_info = load_vae(spec, self.kind, self.name)
        if vae is not None:
            self.pipe.vae = vae
            self.place(placement_for(self.placement.device, self.placement.unet, self.kind, vae.config))

    @property
    def vae_scale(self) -> int:
        return vae_scale(self.vae)

    def latent_shape(self, width: int, height: int) -> tuple[int, int, int]:
        """The UNet's input for frames of width x height.  # (4, H/8, W/8)"""
        return (4, height // self.vae_scale, width // self.vae_scale)

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
        rounded to the one size rule (config.round_size)."""
        if width and height:
            return width, height
        if width:
            return width, round_size(width * image_h / image_w)
        if height:
            return round_size(height * image_w / image_h), height
        scale = math.sqrt(self.native_size**2 / (image_w * image_h))
        return round_size(image_w * scale), round_size(image_h * scale)


# -- placement: the one precision rule ---------------------------------------------------------------------
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


@dataclass(frozen=True)
class Placement:
    """Where a model runs and in which dtypes: resolved once per run (`resolve_placement`), recorded in the
    manifest and the run config, and passed to every path. The UNet and the text encoders share a dtype;
    the VAE may differ (SDXL's upcast VAE). Latents between the networks are always float32."""

    device: torch.device
    unet: torch.dtype  # the UNet and the text encoders
    vae: torch.dtype

    @property
    def precision(self) -> str:
        """fp32, fp16 or bf16: the UNet's (what --precision named)."""
        return DTYPE_NAMES[self.unet]

    @property
    def half(self) -> bool:
        return self.unet != torch.float32

    def dtypes(self) -> dict:
        """{"unet": "fp16", "vae": "fp32"}: what a manifest and a run config record."""
        return {"unet": DTYPE_NAMES[self.unet], "vae": DTYPE_NAMES[self.vae]}

    def as_dict(self) -> dict:
        return {"device": str(self.device), **self.dtypes()}


def resolve_device(name: str = "auto") -> torch.device:
    """auto (CUDA when torch sees a GPU, else the CPU), cpu, cuda or cuda:N (config.parse_device); a GPU that
    is not there is one clear line."""
    asked = parse_device(name)
    if asked.kind == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if asked.kind == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise StdtrtError(f"device {name} requested but CUDA is not available (torch {torch.__version__})")
    if asked.gpu >= torch.cuda.device_count():
        raise StdtrtError(f"device {name} requested but torch sees {torch.cuda.device_count()} GPU(s)")
    return torch.device("cuda", asked.gpu)


def has_bf16(device: torch.device) -> bool:
    """Native bf16 (Ampere, sm_80, and newer). torch.cuda.is_bf16_supported() also says yes for the
    emulated bf16 of a V100 or T4, which is slower than fp16 there, and asks about the current GPU."""
    return torch.cuda.get_device_capability(device)[0] >= 8


def resolve_dtype(precision: str, device: torch.device, training: bool = False) -> torch.dtype:
    """--precision on a device: auto is fp16 on CUDA for inference (bf16 for training where the GPU has
    it: no loss scaling) and fp32 on the CPU. Half precision on the CPU runs, slowly (it is for tests)."""
    if precision == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if training and has_bf16(device) else torch.float16
    if precision not in DTYPES:
        raise StdtrtError(f"precision must be auto, fp32, fp16 or bf16, got {precision!r}")
    dtype = DTYPES[precision]
    if dtype == torch.bfloat16 and device.type == "cuda" and not has_bf16(device):
        name = torch.cuda.get_device_name(device)
        raise StdtrtError(f"{name} does not support bf16; use --precision fp16")
    if dtype != torch.float32 and device.type == "cpu":
        log.warning("%s on the CPU runs, but slowly (it is there for tests): use --precision fp32", precision)
    return dtype


def vae_dtype(dtype: torch.dtype, kind: str, vae_config) -> torch.dtype:
    """diffusers' rule: SDXL's VAE overflows in fp16, so an SDXL pipeline upcasts it when its config says
    force_upcast (sdxl-vae-fp16-fix says false); SD 1.x pipelines run their VAE in fp16. bf16 has fp32's
    range: nothing is upcast."""
    if dtype == torch.float16 and kind == "sdxl" and getattr(vae_config, "force_upcast", False):
        return torch.float32
    return dtype


def placement_for(device: torch.device, dtype: torch.dtype, kind: str, vae_config) -> Placement:
    """The Placement of a model of `kind` ("sd", "sdxl") with this VAE config, its UNet in `dtype`."""
    return Placement(device, dtype, vae_dtype(dtype, kind, vae_config))


def resolve_placement(device: str | torch.device, precision: str, kind: str, vae_config, training=False):
    """The Placement of a model of `kind` with this VAE config on a device at a --precision."""
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    return placement_for(dev, resolve_dtype(precision, dev, training), kind, vae_config)


def recorded_placement(device: str | torch.device, dtypes: dict) -> Placement:
    """A placement recorded by name ({"unet": "fp16", "vae": "fp32"}: a bundle's) on `device`."""
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    return Placement(dev, resolve_dtype(dtypes["unet"], dev), DTYPES[dtypes["vae"]])


@contextlib.contextmanager
def exact_float32():
    """float32 that is float32 on a GPU: TF32 off for matmuls and convolutions (cudnn allows TF32 by default,
    which keeps 10 bits of mantissa: a reference computed so is off by ~1e-3, a fp32 graph's whole tolerance),
    the previous settings restored after."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def place(pipe, placement: Placement) -> None:
    """Move a pipeline's networks to their device and dtypes. Every place that moves a model goes here."""
    for module in (pipe.unet, pipe.text_encoder, getattr(pipe, "text_encoder_2", None)):
        if module is not None:
            module.to(device=placement.device, dtype=placement.unet)
    pipe.vae.to(device=placement.device, dtype=placement.vae)


def load_model(
    name: str,
    *,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    lora: str | None = None,
    fuse: bool = False,
    training: bool = False,
    motion_adapter: str | None = None,
) -> LoadedModel:
    """Load a teacher by name (folder, hub id in the local cache, single file, or preset) and place it
    (resolve_placement: the device, --precision, the model's kind and VAE config). With `fuse`, the LoRA
    is merged into the UNet weights in float32 on the CPU first, then the model is placed. With
    `motion_adapter` the UNet becomes a UNetMotionModel (models/motion.py) before any LoRA is loaded."""
    from diffusers.utils import logging as dlogging

    dlogging.set_verbosity_error()
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    load_dtype = resolve_dtype(precision, dev, training)
    if fuse and lora:
        model = load_model(name, lora=lora, motion_adapter=motion_adapter)
        fuse_lora(model)
        model.place(placement_for(dev, load_dtype, model.kind, model.vae.config))
        return model
    if name in presets.PRESETS:
        pipe, kind = presets.build(name), ("sdxl" if "sdxl" in name else "sd")
    else:
        path = resolve(name)
        try:
            if path.is_file():
                pipe, kind = load_single_file(path, load_dtype)
            else:
                check_folder(path)
                cls, kind = pipeline_class(path)
                extra = {"safety_checker": None, "requires_safety_checker": False} if kind == "sd" else {}
                pipe = cls.from_pretrained(path, torch_dtype=load_dtype, local_files_only=True, **extra)
        except StdtrtError:
            raise
        except Exception as exc:
            raise StdtrtError(f"could not load model from {path}: {exc}") from None
    check_supported(name, pipe.unet.config, getattr(pipe, "text_encoder", None) is not None)
    if motion_adapter:
        from stdtrt.models.motion import load_adapter, motion_unet

        pipe.unet = motion_unet(pipe.unet, load_adapter(motion_adapter), motion_adapter, name)
    pipe.set_progress_bar_config(disable=True)
    placement = placement_for(dev, load_dtype, kind, pipe.vae.config)
    place(pipe, placement)
    for module in (pipe.unet, pipe.vae, pipe.text_encoder, getattr(pipe, "text_encoder_2", None)):
        if module is not None:
            module.requires_grad_(False).eval()
    model = LoadedModel(pipe=pipe, name=name, kind=kind, placement=placement, motion=motion_adapter or None)
    model.alphas_cumprod()  # fails early for v-prediction models
    if lora:
        load_lora(model, lora)
    return model
