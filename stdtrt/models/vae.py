"""The one way stdtrt calls a VAE, and which VAE it calls.

- `vae_encode` / `vae_decode`: images in [-1, 1] to scaled latents and back, each call casting to the VAE's
  own dtype at its boundary and returning float32 (the precision rule: models/load.py). The full KL VAE
  (AutoencoderKL: the posterior mean times its scaling factor) and the tiny one (AutoencoderTiny, TAESD:
  its encoder already outputs latents on the scaled scale, scaling factor 1) share the one call.
- `pixels_to_unit` / `unit_to_pixels`: uint8 frames (B, H, W, 3) to (B, 3, H, W) in [-1, 1] and back, the
  one pixel convention (the exported VAE graphs take and give uint8, so the host moves bytes only).
- `load_vae`: `--vae full|tiny|PATH_OR_ID`: the model's own VAE, TAESD for the model's family
  (madebyollin/taesd for SD 1.x, madebyollin/taesdxl for SDXL), a folder or hub id from the local Hugging
  Face cache (never downloaded; an AutoencoderKL like sdxl-vae-fp16-fix works too), or a built-in random
  preset (`tiny-taesd` for tests and offline runs, `random-taesd` at TAESD's size for timing). A VAE for the
  other family's latents is refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from stdtrt.errors import StdtrtError
from stdtrt.models.hub import local_folder
from stdtrt.models.presets import OFFLINE_HINT

TINY = {"sd": "madebyollin/taesd", "sdxl": "madebyollin/taesdxl"}  # TAESD per model family
VAE_PRESETS = ("tiny-taesd", "random-taesd")
# The scaling factor an AutoencoderKL's latents are trained with tells its family.
FAMILY_OF_SCALING = {0.18215: "sd", 0.13025: "sdxl"}


def vae_encode(vae, images: torch.Tensor, scaling_factor: float) -> torch.Tensor:
    """Images in [-1, 1] -> scaled content latents z0 (the posterior mean), float32.  # (B, 4, H/8, W/8)
    The VAE runs in its own dtype: the images are cast to it here."""
    out = vae.encode(images.to(vae.dtype))
    latents = out.latent_dist.mean if hasattr(out, "latent_dist") else out.latents  # KL | tiny
    return latents.float() * scaling_factor


def vae_decode(vae, z: torch.Tensor, scaling_factor: float) -> torch.Tensor:
    """Scaled latents -> images in [-1, 1] (not clamped), float32.  # (B, 3, H, W)"""
    return vae.decode((z.float() / scaling_factor).to(vae.dtype), return_dict=False)[0].float()


# uint8 lives only at a graph's edges: the cast is the first op on the way in and the last on the way out,
# the layout permute in float32 between them. TensorRT takes UINT8 only as a network input or output
# converted at once (a uint8 tensor may not feed a Shuffle, the permute's layer), so the graph must cast
# before permuting and permute before casting back.
def pixels_to_unit(frames: torch.Tensor) -> torch.Tensor:
    """uint8 frames (B, H, W, 3) -> float32 (B, 3, H, W) in [-1, 1]: cast, scale, then permute."""
    return (frames.float() / 127.5 - 1.0).permute(0, 3, 1, 2).contiguous()


def unit_to_pixels(images: torch.Tensor) -> torch.Tensor:
    """float (B, 3, H, W) in [-1, 1] -> uint8 (B, H, W, 3), clamped and rounded: permute, then cast."""
    x = ((images.float().clamp(-1, 1) + 1) * 127.5).round()
    return x.permute(0, 2, 3, 1).contiguous().to(torch.uint8)


def vae_scale(vae) -> int:
    """How much the VAE downsamples: 8 for SD's KL VAE and for TAESD."""
    blocks = getattr(vae.config, "block_out_channels", None) or vae.config.encoder_block_out_channels
    return 2 ** (len(blocks) - 1)


def vae_preset(name: str):
    """Built-in AutoencoderTiny presets, random weights from a fixed seed, fitting any 4-channel model:
    `tiny-taesd` (TAESD's layout at toy width: tests and offline runs) and `random-taesd` (TAESD's real
    size, about 1.2 M parameters per side: timing without the download)."""
    from diffusers import AutoencoderTiny

    with torch.random.fork_rng(devices=[]):  # the caller's random state is left as it was
        torch.manual_seed(0)
        if name == "random-taesd":
            return AutoencoderTiny(latent_channels=4).eval()  # diffusers' defaults are TAESD's architecture
        return AutoencoderTiny(
            encoder_block_out_channels=(16, 16, 16, 16),
            decoder_block_out_channels=(16, 16, 16, 16),
            num_encoder_blocks=(1, 1, 1, 1),
            num_decoder_blocks=(1, 1, 1, 1),
            latent_channels=4,
        ).eval()


def _folder(name: str) -> Path:
    """A local folder holding a VAE's config.json (the folder, its vae/ subfolder, or a cached hub id)."""

    path = local_folder(
        name, "VAE", name, f"`--vae tiny-taesd` and `--vae full` work offline, and {OFFLINE_HINT}"
    )
    for folder in (path, path / "vae"):
        if (folder / "config.json").is_file():
            return folder
    raise StdtrtError(f"--vae {name}: no VAE there (no config.json in {path} or {path / 'vae'})")


def family(vae, name: str) -> str | None:
    """The model family whose latents a VAE makes: from an AutoencoderKL's scaling factor; for TAESD (whose
    configs are alike) from its name (a path or hub id with "sdxl" in a part, as madebyollin/taesdxl: SDXL;
    else SD 1.x); None for the built-in preset (it fits both)."""
    if name in VAE_PRESETS:
        return None
    scaling = round(float(vae.config.scaling_factor), 5)
    if type(vae).__name__ == "AutoencoderKL":
        return FAMILY_OF_SCALING.get(scaling)
    return "sdxl" if any("sdxl" in part.lower() for part in Path(name).parts) else "sd"


def load_vae(spec: str, kind: str, model_name: str = "the model"):
    """(the VAE to use instead of the model's own, or None for `full`; what the manifest records of it).
    `kind`: the model's family, "sd" or "sdxl"."""
    if spec == "full":
        return None, {"spec": "full"}
    name = TINY[kind] if spec == "tiny" else spec
    if name in VAE_PRESETS:
        vae = vae_preset(name)
        source = name
    else:
        folder = _folder(name)
        cls_name = json.loads((folder / "config.json").read_text()).get("_class_name", "")
        try:
            import diffusers

            cls = getattr(diffusers, cls_name) if cls_name in ("AutoencoderTiny", "AutoencoderKL") else None
            if cls is None:
                raise StdtrtError(
                    f"--vae {name}: {cls_name or 'this'} is not an AutoencoderTiny or AutoencoderKL"
                )
            vae = cls.from_pretrained(folder, local_files_only=True).eval()
        except StdtrtError:
            raise
        except Exception as exc:
            raise StdtrtError(f"--vae {name}: could not load it ({str(exc).splitlines()[0][:200]})") from None
        source = name if not Path(name).expanduser().exists() else str(Path(name).expanduser().resolve())
    channels = vae.config.latent_channels
    if channels != 4:
        raise StdtrtError(
            f"--vae {name} makes {channels}-channel latents (SD3/FLUX); SD 1.x and SDXL take 4 channels"
        )
    fam = family(vae, name)
    if fam is not None and fam != kind:
        names = {"sd": "SD 1.x", "sdxl": "SDXL"}
        raise StdtrtError(
            f"--vae {name} is made for {names[fam]} latents and {model_name} is {names[kind]}: use --vae tiny "
            f"({TINY[kind]}) or a VAE of its own family"
        )
    vae.requires_grad_(False)
    return vae, {"spec": spec, "source": source, "class": type(vae).__name__}
