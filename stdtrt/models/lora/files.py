"""LoRA files: the kohya form every tool loads (`lora_unet_<module_path_with_underscores>.lora_down.weight`
(r, in[, k, k]), `.lora_up.weight` (out, r[, 1, 1]) and `.alpha`, the real alpha: scale = alpha / r), the
diffusers form, stdtrt's metadata in the safetensors header, and a kohya file in diffusers' naming."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from stdtrt.io.atomic import atomic_path
from stdtrt.models.lora.adapter import ADAPTER, lora_layers
from stdtrt.models.lora.names import sgm_name, writes_sgm


def kohya_state_dict(unet, adapter: str = ADAPTER) -> dict[str, torch.Tensor]:
    """The adapter's weights under kohya names, with each module's real alpha."""
    out = {}
    sgm = writes_sgm(unet)
    for name, layer in lora_layers(unet, adapter).items():
        key = "lora_unet_" + (sgm_name(name, unet) if sgm else name).replace(".", "_")
        rank = layer.r[adapter]
        out[f"{key}.lora_down.weight"] = layer.lora_A[adapter].weight.detach().float().cpu().contiguous()
        out[f"{key}.lora_up.weight"] = layer.lora_B[adapter].weight.detach().float().cpu().contiguous()
        out[f"{key}.alpha"] = torch.tensor(float(layer.scaling[adapter] * rank))
    if not out:
        raise ValueError(f"the UNet has no LoRA adapter named {adapter!r}")
    return out


def save_kohya(unet, path: str | Path, metadata: dict | None = None, adapter: str = ADAPTER) -> Path:
    """Write the adapter as a kohya LoRA file, atomically. Metadata values become JSON strings."""
    from safetensors.torch import save_file

    state = kohya_state_dict(unet, adapter)
    ranks = {int(v.shape[0]) for k, v in state.items() if k.endswith("lora_down.weight")}
    alphas = {float(v) for k, v in state.items() if k.endswith(".alpha")}
    meta = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(max(ranks)),
        "ss_network_alpha": str(max(alphas)),
        "stdtrt_format": "kohya",
    }
    meta.update(_stdtrt_metadata(metadata))
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return path


def _stdtrt_metadata(metadata: dict | None) -> dict[str, str]:
    """stdtrt's own keys in a safetensors header: `stdtrt_<key>`, values as JSON strings."""
    return {f"stdtrt_{k}": v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}


def save_diffusers(
    unet, pipe_cls, path: str | Path, metadata: dict | None = None, adapter: str = ADAPTER
) -> Path:
    """Write the adapter in diffusers' form (`pipe.load_lora_weights(folder)`), atomically, with the same
    stdtrt metadata as the kohya file (eta, teacher_steps, ...) beside diffusers' own."""
    from peft.utils import get_peft_model_state_dict
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    state = get_peft_model_state_dict(unet, adapter_name=adapter)
    state = {k: v.detach().float().cpu().contiguous() for k, v in state.items()}
    path = Path(path)
    with atomic_path(path) as tmp:
        pipe_cls.save_lora_weights(
            str(tmp.parent), unet_lora_layers=state, weight_name=tmp.name,
            unet_lora_adapter_metadata=unet.peft_config[adapter].to_dict(),
        )  # fmt: skip
        with safe_open(str(tmp), framework="pt") as f:
            meta = {**(f.metadata() or {}), **_stdtrt_metadata(metadata)}
        save_file(load_file(str(tmp)), str(tmp), metadata=meta)
    return path


def read_metadata(path: str | Path) -> dict:
    """stdtrt_* metadata of a LoRA file, JSON-decoded where possible (empty for foreign files)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    out = {}
    for key, value in meta.items():
        if key.startswith("stdtrt_"):
            try:
                out[key[7:]] = json.loads(value)
            except (json.JSONDecodeError, TypeError):
                out[key[7:]] = value
    return out


def kohya_to_diffusers(path: Path, unet) -> dict:
    """A kohya file's LoRA in diffusers' naming for this UNet (`unet.<module>.lora_A/B.weight`), module
    names found by the UNet's own (its dots are the file's underscores), alpha / rank folded into lora_B."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    names = {name.replace(".", "_"): name for name, _ in unet.named_modules()}
    out = {}
    for key, down in state.items():
        if not (key.startswith("lora_unet_") and key.endswith(".lora_down.weight")):
            continue
        stem = key[: -len(".lora_down.weight")]
        module = names.get(stem[len("lora_unet_") :])
        if module is None:
            continue  # counted as a layer that does not fit
        up = state[f"{stem}.lora_up.weight"]
        alpha = float(state.get(f"{stem}.alpha", torch.tensor(float(down.shape[0]))))
        out[f"unet.{module}.lora_A.weight"] = down
        out[f"unet.{module}.lora_B.weight"] = up * (alpha / down.shape[0])
    return out
