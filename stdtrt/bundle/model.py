"""The model a bundle was made from: its content hash, the hash of the prompt embeddings baked into the
graphs, where to find it again, and the fused model rebuilt from it (what the torch backend runs and
export traces)."""

from __future__ import annotations

from pathlib import Path

from stdtrt.errors import StdtrtError
from stdtrt.io.hashing import file_hash, module_hash
from stdtrt.models.control_maps import DEFAULT_DEPTH_MODEL, MapSpec
from stdtrt.models.controlnet import Control, load_controlnet
from stdtrt.models.load import load_model, recorded_placement
from stdtrt.models.lora import fuse_lora, load_lora
from stdtrt.models.style import load_style


def model_hash(model) -> str:
    """Content hash of the base model (UNet, VAE, text encoders), taken before any LoRA is loaded."""

    pipe = model.pipe
    modules = [pipe.unet, pipe.vae, pipe.text_encoder, getattr(pipe, "text_encoder_2", None)]
    return module_hash(*[m for m in modules if m is not None])


def conditioning_hash(model, cfg, width: int, height: int) -> str:
    """sha256 of what the prompt embeddings baked into the graphs are computed from, besides the text
    encoders' weights (in the model hash): each prompt's token ids from each of the pipeline's tokenizers
    (SDXL's time ids follow from the size, in the key). Not the embeddings themselves: their floats differ
    in the last bits between CPUs (and a bundle's key must hold on another machine)."""
    import hashlib
    import json

    h = hashlib.sha256()
    prompts = [cfg.prompt, cfg.negative_prompt] if cfg.guidance > 1 else [cfg.prompt]
    tokenizers = [model.pipe.tokenizer, getattr(model.pipe, "tokenizer_2", None)]
    for prompt in prompts:
        for tok in filter(None, tokenizers):
            ids = tok(
                prompt, padding="max_length", max_length=tok.model_max_length, truncation=True
            ).input_ids
            h.update(json.dumps([type(tok).__name__, ids]).encode())
    return h.hexdigest()


def source_of(name: str) -> str:
    """How to find the model again: an absolute path for a folder or file, else the preset or hub id."""
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name


def fingerprint(source: str) -> dict | None:
    """Size and modification time of every file a model, VAE or LoRA is read from ({relative path: [bytes,
    mtime_ns]}): the cheap check at load, instead of hashing gigabytes of weights at every start. None for
    a built-in preset (built from code: its weights are hashed, cheaply)."""
    from stdtrt.models.motion import MOTION_PRESETS
    from stdtrt.models.presets import PRESETS
    from stdtrt.models.vae import VAE_PRESETS

    if source in PRESETS or source in VAE_PRESETS or source in MOTION_PRESETS:
        return None
    path = Path(source)
    if not path.exists():  # a hub id: its snapshot in the local cache
        from stdtrt.models.files import resolve

        path = resolve(source)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {
        str(f.relative_to(path) if f != path else f.name): [f.stat().st_size, f.stat().st_mtime_ns]
        for f in files
    }


def _unchanged(what: str, source: str, recorded: dict, digest, full: bool, bundle) -> None:
    """Refuse `source` unless it is what the bundle recorded: by its fingerprint when that matches, or
    when this machine verified it with this fingerprint before (bundle/verified.py; not with `full`),
    else by its content hash (`digest()`)."""
    from stdtrt.bundle import verified

    stamp = recorded.get("fingerprint") and fingerprint(source)
    if not full and stamp is not None and stamp == recorded["fingerprint"]:
        return
    key = f"{what}:{source}"
    if not full and stamp is not None and verified.known(key, stamp, recorded["hash"]):
        return
    if digest() != recorded["hash"]:
        raise StdtrtError(
            f"{what} {source} is not the one bundle {bundle.path} was exported with (hash differs)"
        )
    if stamp is not None:
        verified.remember(key, stamp, recorded["hash"])


def load_fused_model(bundle, device: str = "auto", full: bool = False):
    """The bundle's model with its LoRA fused, refused when the model, its VAE or the LoRA is not what the
    manifest records (files unchanged since export, else the same content hash; `full`: always hashed),
    placed in the bundle's own dtypes (its graphs') on `device`."""
    m, motion = bundle.manifest, bundle.motion
    # float32 on the CPU: fused there, then placed; a video student's UNet with its motion adapter, whose
    # weights the model hash covers (checked by hash when the adapter's files changed)
    model = load_model(m.model["source"], motion_adapter=motion and motion["source"])
    moved = bool(motion) and fingerprint(motion["source"]) != motion["fingerprint"]
    _unchanged("the model", m.model["source"], m.model, lambda: model_hash(model), full or moved, bundle)
    vae = m.vae
    if vae["spec"] != "full":
        model.use_vae(vae["source"])
        _unchanged("the VAE", vae["source"], vae, lambda: module_hash(model.vae), full, bundle)
    lora = m.lora
    if lora:
        if not Path(lora["path"]).is_file():
            raise StdtrtError(
                f"the bundle's LoRA {lora['path']} is not here (the torch backend rebuilds from it)"
            )
        _unchanged("the LoRA", lora["path"], lora, lambda: file_hash(lora["path"]), full, bundle)
        load_lora(model, lora["path"])
        fuse_lora(model)
    model.place(recorded_placement(device, bundle.placement))
    return model


def load_bundle_style(bundle, model, image: str | None = None):
    """The style image a bundle baked in (None without one), loaded again onto `model` for the torch
    backend, from `image` (where it is now) or the path recorded at export: refused when the image or the
    IP-Adapter file is not there or not what the manifest records."""
    recorded = bundle.manifest.style
    if not recorded:
        return None
    image = image or recorded["image"]
    if not Path(image).is_file():
        raise StdtrtError(
            f"the bundle's style image {image} is not here (the torch backend rebuilds from it): pass "
            f"--style-image where it is now"
        )
    style = load_style(model, image, recorded["adapter"], recorded["scale"], recorded["blocks"])
    mine = style.record()
    for field in (
        "image_sha256",
        "adapter_sha256",
    ):  # the embedding follows from them (its last bits may not)
        if mine[field] != recorded[field]:
            what = "style image" if field == "image_sha256" else "IP-Adapter"
            raise StdtrtError(
                f"the {what} of bundle {bundle.path} changed since it was exported (hash differs)"
            )
    return style


def load_bundle_control(bundle, model):
    """The ControlNet a bundle baked in (None without one), loaded again onto `model` for the torch backend
    and placed as its UNet: refused when it is not what the manifest records (its weights' hash)."""
    recorded = bundle.manifest.control
    if not recorded:
        return None
    maps = recorded["maps"]
    spec = MapSpec(
        maps["kind"], maps.get("low", 100), maps.get("high", 200), maps.get("model", DEFAULT_DEPTH_MODEL)
    )
    control = Control(load_controlnet(recorded["source"], model), recorded["controlnet"], recorded["scale"], spec,
                      model.kind == "sdxl")  # fmt: skip
    if module_hash(control.net) != recorded["hash"]:
        raise StdtrtError(
            f"the ControlNet {recorded['source']} changed since bundle {bundle.path} was exported"
        )
    control.place(model.device, model.dtype)
    return control
