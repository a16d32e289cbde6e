"""LoRA students: add one to a UNet (peft), save it in the kohya form every tool loads, load one back, and
fuse it into the UNet weights (what export traces and the bundle's torch backend runs).

File format (kohya): `lora_unet_<module_path_with_underscores>.lora_down.weight` (r, in[, k, k]),
`.lora_up.weight` (out, r[, 1, 1]) and `.alpha` (the real alpha; scale = alpha / r). diffusers'
`load_lora_weights`, ComfyUI and A1111 read it. stdtrt's own metadata sits in the safetensors header.
The module path is diffusers' for SD 1.x and motion UNets, and the original (SGM/LDM) UNet's for SDXL, as
kohya's trainer writes it: A1111 maps SD-1.x-shaped diffusers names only (on SDXL it sends
up_blocks.0.upsamplers.0 to the wrong layer), and diffusers drops every SGM key of a file that mixes both.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from stdtrt.errors import StdtrtError
from stdtrt.io.atomic import atomic_path
from stdtrt.models.conditioning import encode_prompt, predict_eps

log = logging.getLogger(__name__)

ADAPTER = "stdtrt"
# The module types the STD authors adapt (std.md, "Training defaults").
TARGET_MODULES = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "proj_in",
    "proj_out",
    "ff.net.0.proj",
    "ff.net.2",
    "conv1",
    "conv2",
    "conv_shortcut",
    "downsamplers.0.conv",
    "upsamplers.0.conv",
    "time_emb_proj",
)


def add_lora(unet, rank: int = 64, alpha: float = 64.0, targets=TARGET_MODULES, init: bool | str = True):
    """Attach a trainable LoRA adapter named `stdtrt` to the UNet (base weights frozen).

    init=True is peft's default (B = 0: the student starts as the teacher); init=False gives a random
    non-zero adapter (for tests that must see the LoRA act).
    """
    from peft import LoraConfig

    unet.requires_grad_(False)
    config = LoraConfig(
        r=rank, lora_alpha=alpha, target_modules=_target_names(unet, targets), init_lora_weights=init
    )
    unet.add_adapter(config, adapter_name=ADAPTER)
    unet.set_adapter(ADAPTER)
    return unet


def _target_names(unet, targets) -> list[str]:
    """peft's target list: the suffixes themselves for an image UNet; for a motion UNet every matching
    module by full name except the motion modules' proj_in and proj_out, which diffusers calls with a
    keyword argument (`proj_in(input=...)`) that a peft LoRA layer does not take."""
    from stdtrt.models.motion import is_motion_unet

    targets = list(targets)
    if not is_motion_unet(unet):
        return targets
    return [
        name
        for name, _ in unet.named_modules()
        if any(name == t or name.endswith("." + t) for t in targets)
        and not ("motion_modules" in name and name.endswith((".proj_in", ".proj_out")))
    ]


def lora_layers(unet, adapter: str = ADAPTER) -> dict[str, object]:
    """module path -> peft LoraLayer holding `adapter`."""
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in unet.named_modules() if isinstance(m, LoraLayer) and adapter in m.lora_A}


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


def _writes_sgm(unet) -> bool:
    """An SDXL image UNet's kohya file is written in SGM names (see the module's docstring), where
    diffusers reads them back: one layers_per_block, and an attention in every up block that upsamples
    (diffusers' SGM reader takes an upsampler at slot 1 for an attention; SDXL's base has one, its refiner
    not: the refiner's file keeps diffusers' names)."""
    from stdtrt.models.motion import is_motion_unet

    sdxl = unet.config.get("addition_embed_type") == "text_time" and not is_motion_unet(unet)
    readable = isinstance(unet.config.layers_per_block, int) and all(
        hasattr(block, "attentions") for block in unet.up_blocks if getattr(block, "upsamplers", None)
    )
    return sdxl and readable


def kohya_state_dict(unet, adapter: str = ADAPTER) -> dict[str, torch.Tensor]:
    """The adapter's weights under kohya names, with each module's real alpha."""
    out = {}
    sgm = _writes_sgm(unet)
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
            model.pipe.load_lora_weights(str(path), adapter_name=ADAPTER)
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


def _unload(model) -> None:
    with contextlib.suppress(Exception):  # nothing was loaded
        model.pipe.unload_lora_weights()


# -- fusing: the exported graph is one plain UNet ----------------------------------------------------------
# Fused vs unfused noise estimates, relative to max(1, max |eps|): fp32 merging is exact up to rounding.
FUSE_TOLERANCE = 1e-4


@dataclass(frozen=True)
class FuseReport:
    layers: int  # LoRA layers merged
    max_abs: float  # fused vs unfused eps
    mean_abs: float
    tolerance: float

    def as_dict(self) -> dict:
        return asdict(self)


def _probe(model, seed: int):
    """A seeded latent (for a motion UNet a clip of two frames) and the empty-prompt conditioning: enough to
    compare two UNets."""
    g = torch.Generator().manual_seed(seed)
    size = 16 // model.vae_scale * model.vae_scale  # a small latent the UNet can halve twice
    shape = (1, 4, 2, size, size) if model.motion else (1, 4, size, size)
    x = torch.randn(shape, generator=g).to(model.device, model.dtype)
    cond = encode_prompt(model.pipe, "", size * model.vae_scale, size * model.vae_scale)
    return x, cond


@torch.no_grad()
def fuse_lora(model, timestep: int = 500, seed: int = 0) -> FuseReport | None:
    """Merge the model's LoRA (its own alpha, scale 1) into the UNet weights and drop the adapter layers.

    Returns None when the model has no LoRA. Raises StdtrtError when the fused weights are not finite or
    the fused UNet disagrees with the unfused one beyond FUSE_TOLERANCE.
    """
    layers = len(lora_layers(model.unet))
    if layers == 0:
        return None
    x, cond = _probe(model, seed)
    unfused = predict_eps(model.unet, x, timestep, cond).float()
    try:
        model.pipe.fuse_lora(components=["unet"], lora_scale=1.0, safe_fusing=True, adapter_names=[ADAPTER])
    except ValueError as exc:  # diffusers' safe_fusing: NaN in a merged weight
        raise StdtrtError(f"fusing the LoRA {model.lora} gave non-finite weights: {exc}") from None
    model.pipe.unload_lora_weights()  # removes the adapter layers; the merged base weights stay
    if lora_layers(model.unet):
        raise RuntimeError("LoRA layers are still present after fuse + unload")
    bad = [name for name, p in model.unet.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise StdtrtError(
            f"fusing the LoRA {model.lora} gave non-finite weights in {bad[0]} ({len(bad)} tensors)"
        )
    fused = predict_eps(model.unet, x, timestep, cond).float()
    diff = (fused - unfused).abs()
    scale = max(1.0, float(unfused.abs().max()))
    report = FuseReport(layers, float(diff.max()), float(diff.mean()), FUSE_TOLERANCE)
    log.info(
        "fused %d LoRA layers: fused vs unfused eps max %.2e, mean %.2e",
        layers,
        report.max_abs,
        report.mean_abs,
    )
    if report.max_abs > FUSE_TOLERANCE * scale:
        raise StdtrtError(
            f"the fused UNet differs from the LoRA model by {report.max_abs:.3g} (tolerance "
            f"{FUSE_TOLERANCE * scale:.3g}); the LoRA {model.lora} does not merge cleanly"
        )
    return report
