"""Loading a student LoRA onto a model's UNet, refusing one made for another UNet (or a video student's
without its motion adapter, and the reverse)."""

from __future__ import annotations

import contextlib
from pathlib import Path

from stdtrt.errors import StdtrtError
from stdtrt.models.lora.adapter import ADAPTER, lora_layers
from stdtrt.models.lora.files import kohya_to_diffusers, read_metadata


def _unet_pairs(keys) -> int:
    """How many UNet LoRA layers a file holds (kohya or diffusers/peft naming)."""
    kohya = sum(1 for k in keys if k.startswith("lora_unet_") and k.endswith(".lora_down.weight"))
    peft = sum(
        1 for k in keys if k.startswith("unet.") and k.endswith((".lora_A.weight", ".lora.down.weight"))
    )
    return kohya + peft


def load_lora(model, path: str | Path, scale: float = 1.0) -> None:
    """Load a LoRA file onto model.unet (adapter `stdtrt`), refusing one made for another UNet."""
    from safetensors import safe_open

    path = Path(path).expanduser()
    if not path.is_file():
        raise StdtrtError(f"LoRA file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
    except Exception as exc:
        raise StdtrtError(f"LoRA file {path} is not a readable safetensors file ({exc})") from None
    expected = _unet_pairs(keys)
    if expected == 0:
        raise StdtrtError(f"LoRA file {path} holds no UNet LoRA weights (no lora_unet_* or unet.* keys)")
    _check_motion(model, path, keys)
    from diffusers.utils import logging as dlogging

    verbosity = dlogging.get_verbosity()
    dlogging.set_verbosity(dlogging.CRITICAL)  # diffusers logs the whole failure; we say it in one line
    try:
        kohya = any(k.startswith("lora_unet_") for k in keys)
        if model.motion and kohya:  # diffusers' kohya names know no motion modules: map them here
            model.pipe.load_lora_weights(kohya_to_diffusers(path, model.unet), adapter_name=ADAPTER)
        else:
            # the folder and the file's name: diffusers 0.34 refuses a bare file path offline
            model.pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=ADAPTER)
    except Exception as exc:
        _unload(model)
        lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
        reason = next((ln for ln in lines if "mismatch" in ln), lines[0] if lines else type(exc).__name__)
        raise StdtrtError(f"LoRA {path.name} does not fit the UNet of {model.name}: {reason[:300]}") from None
    finally:
        dlogging.set_verbosity(verbosity)
    loaded = len(lora_layers(model.unet))
    if loaded != expected:
        _unload(model)
        raise StdtrtError(
            f"LoRA {path.name} does not fit the UNet of {model.name}: only {loaded} of its {expected} layers "
            f"match a module of this UNet (was it trained on another base model?)"
        )
    model.pipe.set_adapters([ADAPTER], adapter_weights=[scale])
    model.unet.requires_grad_(False)
    model.lora = str(path)


def _check_motion(model, path: Path, keys) -> None:
    """A video student's LoRA (it adapts motion modules) runs with its motion adapter, and an image
    student's without one: each learned the trajectory of its own network."""
    meta = read_metadata(path)
    motion = meta.get("motion_adapter") or any("motion_modules" in k for k in keys)
    if motion and not model.motion:
        raise StdtrtError(
            f"LoRA {path.name} is a video student (it adapts motion modules"
            f"{', distilled with ' + meta['motion_adapter'] if meta.get('motion_adapter') else ''}): pass "
            f"--motion-adapter {meta.get('motion_adapter') or 'ADAPTER'}"
        )
    if model.motion and not motion:
        raise StdtrtError(
            f"LoRA {path.name} is an image student (no motion modules): drop --motion-adapter to run it per "
            f"frame, or distill a video student with --motion-adapter {model.motion}"
        )


def _unload(model) -> None:
    with contextlib.suppress(Exception):  # nothing was loaded
        model.pipe.unload_lora_weights()


# -- fusing: the exported graph is one plain UNet ----------------------------------------------------------
