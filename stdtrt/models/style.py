"""Style from an image (`--style-image`): an IP-Adapter in the model's cross-attention, injected only
into the style block InstantStyle identified (`--style-blocks instantstyle`, the default) or into every
IP-Adapter layer (`all`), scaled by `--style-scale`.

The adapter comes in the h94/IP-Adapter layout, from a folder or the local Hugging Face cache (never
downloaded): `models/ip-adapter_sd15.safetensors` with the ViT-H encoder `models/image_encoder` for SD 1.x,
`sdxl_models/ip-adapter_sdxl_vit-h.safetensors` with the same encoder for SDXL (or, without it, the ViT-bigG
`sdxl_models/ip-adapter_sdxl` with `sdxl_models/image_encoder`, which InstantStyle's examples use), or
the built-in random `tiny-ip-adapter`, which fits `tiny-sd`. diffusers' own `load_ip_adapter` loads it.

The style image is encoded once per run: its CLIP image embedding (1, 1, D) joins the prompt in the
`Conditioning`; the unconditional branch gets zeros, as diffusers' pipelines give a plain IP-Adapter.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from stdtrt.config import STYLE_BLOCKS, cache_root, check_style_scale
from stdtrt.errors import StdtrtError
from stdtrt.io.hashing import file_hash
from stdtrt.io.images import open_image
from stdtrt.models.card import StudentCard
from stdtrt.models.hub import local_folder, quiet_transformers

log = logging.getLogger(__name__)

STYLE_PRESETS = ("tiny-ip-adapter",)
DEFAULT_ADAPTER = "h94/IP-Adapter"
# (subfolder, weight file, image encoder folder) in the h94/IP-Adapter layout, by model family
LAYOUT = {
    "sd": ("models", "ip-adapter_sd15.safetensors", "models/image_encoder"),
    "sdxl": ("sdxl_models", "ip-adapter_sdxl_vit-h.safetensors", "models/image_encoder"),
}
# SDXL's other plain adapter in the same repository, the one InstantStyle's examples use: ViT-bigG encoder.
# Read when the ViT-H one is not there.
SDXL_BIGG = ("sdxl_models", "ip-adapter_sdxl.safetensors", "sdxl_models/image_encoder")


@dataclass(frozen=True)
class Style:
    """A style image as the UNet sees it, and what made it (recorded in a bundle's manifest)."""

    embeds: torch.Tensor  # (1, 1, D) the image encoder's projected embedding
    image: str  # the style image's resolved path
    image_sha256: str
    adapter: str  # as named (--ip-adapter)
    adapter_sha256: str  # its weight file's
    scale: float
    blocks: str
    weight_file: Path  # the IP-Adapter's weights (SUBFOLDER/FILE in the adapter's folder)

    def record(self) -> dict:
        """What a bundle's manifest records of the style (and its cache key holds)."""
        return {
            "image": self.image,
            "image_sha256": self.image_sha256,
            "adapter": self.adapter,
            "adapter_sha256": self.adapter_sha256,
            "embeds_sha256": hashlib.sha256(self.embeds.float().numpy().tobytes()).hexdigest(),
            "scale": self.scale,
            "blocks": self.blocks,
        }

    def key(self) -> dict:
        """What the graphs' cache key holds of it: the image by content, not by where it lies; not its
        embedding, which follows from the image and the adapter (its float output may differ in the last
        bits between CPUs)."""
        return {k: v for k, v in self.record().items() if k not in ("image", "embeds_sha256")}


def check_style_options(scale: float, blocks: str) -> None:
    check_style_scale(scale)
    if blocks not in STYLE_BLOCKS:
        raise StdtrtError(f"--style-blocks must be one of {', '.join(STYLE_BLOCKS)}, got {blocks!r}")


def _tiny_folder(cross_attention_dim: int, unet) -> Path:
    """The `tiny-ip-adapter` preset for tiny-sd, written once into stdtrt's cache: a random ViT image encoder
    (32 px, 2 layers, 16-dim projection) and random IP-Adapter weights, seed 0, in the h94 layout."""
    folder = cache_root() / f"tiny-ip-adapter-{cross_attention_dim}"
    sub, weight, encoder = LAYOUT["sd"]
    if (folder / sub / weight).is_file() and (folder / encoder / "config.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):  # the run's own random state is left as it was
        torch.manual_seed(0)
        _write_tiny(folder, cross_attention_dim, unet, sub, weight, encoder)
    return folder


def _write_tiny(folder: Path, cross_attention_dim: int, unet, sub: str, weight: str, encoder: str) -> None:
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=8, projection_dim=16)  # fmt: skip
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        root = Path(tmp) / "tiny-ip-adapter"
        with quiet_transformers():
            CLIPVisionModelWithProjection(config).save_pretrained(root / encoder)
        state = {
            "image_proj.proj.weight": torch.randn(4 * cross_attention_dim, 16) * 0.1,
            "image_proj.proj.bias": torch.zeros(4 * cross_attention_dim),
            "image_proj.norm.weight": torch.ones(cross_attention_dim),
            "image_proj.norm.bias": torch.zeros(cross_attention_dim),
        }
        key = 1  # diffusers' numbering: every attention processor counts, the cross-attention ones carry keys
        for _, module in _attn2_modules(unet):
            hidden = module.to_q.out_features
            state[f"ip_adapter.{key}.to_k_ip.weight"] = torch.randn(hidden, cross_attention_dim) * 0.1
            state[f"ip_adapter.{key}.to_v_ip.weight"] = torch.randn(hidden, cross_attention_dim) * 0.1
            key += 2
        (root / sub).mkdir(parents=True, exist_ok=True)
        save_file(state, str(root / sub / weight))
        with contextlib.suppress(OSError):  # another process wrote it first
            os.replace(root, folder)


def _attn2_modules(unet):
    """The cross-attention modules in attn_processors order (where an IP-Adapter adds its keys)."""
    modules = dict(unet.named_modules())
    for name in unet.attn_processors:
        if name.endswith("attn2.processor") and "motion_modules" not in name:
            yield name, modules[name[: -len(".processor")]]


def resolve_adapter(name: str, model) -> tuple[Path, tuple[str, str, str]]:
    """(folder, (subfolder, weight file, image encoder folder)) for an IP-Adapter name: for SDXL the ViT-H
    adapter, else the ViT-bigG one (SDXL_BIGG), whichever of them the folder holds."""
    layouts = [LAYOUT["sdxl"], SDXL_BIGG] if model.kind == "sdxl" else [LAYOUT["sd"]]
    if name in STYLE_PRESETS:
        if model.kind == "sdxl":
            raise StdtrtError("tiny-ip-adapter fits tiny-sd (SD 1.x); for SDXL pass an SDXL IP-Adapter")
        return _tiny_folder(model.unet.config.cross_attention_dim, model.unet), LAYOUT["sd"]
    sub, weight, encoder = layouts[0]
    download = f"{name} --include '{sub}/{weight}' '{encoder}/*'"
    path = local_folder(
        name, "IP-Adapter", download, "`--ip-adapter tiny-ip-adapter` (with `--model tiny-sd`) works offline"
    )
    for layout in layouts:
        if all(
            (path / need).is_file() for need in (Path(layout[0]) / layout[1], Path(layout[2]) / "config.json")
        ):
            return path, layout
    wanted = " or ".join(f"{sub}/{weight} with {encoder}/" for sub, weight, encoder in layouts)
    raise StdtrtError(f"IP-Adapter folder {path} has no {wanted} (the h94/IP-Adapter layout)")


def _adapter_width(file: Path) -> int:
    """The cross-attention width an IP-Adapter file was made for, from its image projection."""
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as f:
        names = f.keys()  # a safetensors handle is not iterable itself
        keys = [k for k in names if k.startswith("image_proj.") and k.endswith("proj.weight")]
        if not keys:
            raise StdtrtError(f"{file} is not a plain IP-Adapter (no image_proj.proj.weight)")
        return f.get_slice(keys[0]).get_shape()[0] // 4


def style_processors(unet, blocks: str) -> list[str]:
    """The attention processors the style goes into. `instantstyle`: InstantStyle's own style blocks, in the
    first up block with cross-attention: on SDXL only its middle attention, `up_blocks.0.attentions.1`
    (InstantStyle's `target_blocks=["up_blocks.0.attentions.1"]`); on SD 1.x the whole block,
    `up_blocks.1` (its infer_style_sd15.py: `target_blocks=["up_blocks.1"]`); `all`: every IP-Adapter
    layer."""
    names = [n for n, _ in _attn2_modules(unet)]
    if blocks == "all":
        return names
    first = next(n.split(".attentions.")[0] for n in names if n.startswith("up_blocks."))
    sdxl = unet.config.get("addition_embed_type") == "text_time"
    block = f"{first}.attentions.1." if sdxl else f"{first}.attentions."
    return [n for n in names if n.startswith(block)]


def encode_style(model, image: str, adapter: str, scale: float, blocks: str) -> Style:
    """One style image encoded (encode_styles)."""
    return encode_styles(model, [image], adapter, scale, blocks)[0]


def encode_styles(model, images: list[str], adapter: str, scale: float, blocks: str) -> list[Style]:
    """Style images encoded once each, by the IP-Adapter's own image encoder (loaded once) in float32 on
    the CPU (the encoder, 0.6 B parameters for ViT-H, never takes GPU memory), its preprocessing diffusers'
    (CLIPImageProcessor at the encoder's size). Nothing is attached to the model yet (attach_style)."""
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    check_style_options(scale, blocks)
    pictures = [read_style_image(image) for image in images]  # every unreadable one refused before loading
    folder, (sub, weight, encoder) = resolve_adapter(adapter, model)
    width, ours = _adapter_width(folder / sub / weight), model.unet.config.cross_attention_dim
    if width != ours:
        raise StdtrtError(
            f"IP-Adapter {adapter} is made for cross-attention of width {width}; {model.name}'s is {ours} "
            f"(an SD 1.5 adapter on SDXL, or the other way round?)"
        )
    try:
        with quiet_transformers():
            enc = CLIPVisionModelWithProjection.from_pretrained(
                folder / encoder, local_files_only=True
            ).eval()
    except Exception as exc:
        raise StdtrtError(
            f"could not load the image encoder of {adapter}: {str(exc).splitlines()[0][:200]}"
        ) from None
    size = enc.config.image_size
    processor = CLIPImageProcessor(size=size, crop_size=size)
    adapter_sha = file_hash(folder / sub / weight)
    styles = []
    for image, rgb in zip(images, pictures, strict=True):
        pixels = processor(rgb, return_tensors="pt").pixel_values
        with torch.no_grad():
            embeds = enc(pixels.float()).image_embeds  # (1, D)
        styles.append(Style(
            embeds.float()[None], str(Path(image).resolve()), file_hash(image), adapter, adapter_sha,
            float(scale), blocks, folder / sub / weight,
        ))  # fmt: skip
    return styles


def warn_if_trained_with_styles(lora: str | None, style_image: str | None) -> None:
    """A student distilled with --style-images learned trajectories that see a style image: running it
    without one is said in one line (it still runs)."""
    if not lora or style_image:
        return
    folder = StudentCard.read(lora).style_images
    if folder:
        log.warning("%s was distilled with style images (%s): without --style-image it walks trajectories it "
                    "did not learn", Path(lora).name, folder)  # fmt: skip


def attach_style(model, style: Style) -> None:
    """Load the IP-Adapter's layers into the model's UNet (diffusers' `load_ip_adapter`, without its
    image encoder) and set each layer's scale: `style.scale` in the chosen blocks, 0 elsewhere. After any
    LoRA fusion (the fused model's check runs without an image)."""
    from diffusers.models.attention_processor import IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0

    file = style.weight_file
    try:
        model.pipe.load_ip_adapter(str(file.parents[1]), subfolder=file.parent.name, weight_name=file.name,
                                   image_encoder_folder=None, local_files_only=True)  # fmt: skip
    except Exception as exc:
        raise StdtrtError(
            f"could not load IP-Adapter {style.adapter}: {str(exc).splitlines()[0][:200]}"
        ) from None
    chosen = set(style_processors(model.unet, style.blocks))
    for name, proc in model.unet.attn_processors.items():
        if isinstance(proc, (IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0)):
            proc.scale = [style.scale if name in chosen else 0.0]


def load_style(model, image: str, adapter: str, scale: float, blocks: str) -> Style:
    """encode_style, then attach_style: the style ready for the model's UNet calls."""
    style = encode_style(model, image, adapter, scale, blocks)
    attach_style(model, style)
    return style


def read_style_image(path: str):
    """The style image as upright RGB (PIL), or one line saying why not (io/images.open_image)."""
    return open_image(Path(path), "style image").convert("RGB")
