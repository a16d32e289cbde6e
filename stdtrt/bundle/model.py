"""The model a bundle was made from: its content hash, the hash of the prompt embeddings baked into the
graphs, where to find it again, and the fused model rebuilt from it (what the torch backend runs and
export traces)."""

from __future__ import annotations

from pathlib import Path

from stdtrt.errors import StdtrtError
from stdtrt.io.hashing import file_hash, module_hash
from stdtrt.models.conditioning import encode_prompt
from stdtrt.models.load import load_model, recorded_placement
from stdtrt.models.lora import fuse_lora, load_lora


def model_hash(model) -> str:
    """Content hash of the base model (UNet, VAE, text encoders), taken before any LoRA is loaded."""

    pipe = model.pipe
    modules = [pipe.unet, pipe.vae, pipe.text_encoder, getattr(pipe, "text_encoder_2", None)]
    return module_hash(*[m for m in modules if m is not None])


def conditioning_hash(model, cfg, width: int, height: int) -> str:
    """sha256 of the prompt embeddings the graph bakes in (tokenizer + text encoders + prompts)."""
    import hashlib

    h = hashlib.sha256()
    prompts = [cfg.prompt, cfg.negative_prompt] if cfg.guidance > 1 else [cfg.prompt]
    for prompt in prompts:
        c = encode_prompt(model.pipe, prompt, height, width)
        for t in (c.embeds, c.pooled, c.time_ids):
            if t is not None:
                h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def source_of(name: str) -> str:
    """How to find the model again: an absolute path for a folder or file, else the preset or hub id."""
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name


def load_fused_model(bundle, device: str = "auto"):
    """The bundle's model with its LoRA fused, refused when either hashes differently from the manifest,
    placed in the bundle's own dtypes (its graphs') on `device`."""

    m = bundle.manifest
    model = load_model(m["model"]["source"])  # float32 on the CPU: fused there, then placed
    if model_hash(model) != m["model"]["hash"]:
        raise StdtrtError(
            f"{m['model']['source']} is not the model bundle {bundle.path} was exported from (hash differs)"
        )
    vae = m["vae"]
    if vae["spec"] != "full":
        model.use_vae(vae["source"])
        if module_hash(model.vae) != vae["hash"]:
            raise StdtrtError(
                f"the VAE {vae['source']} is not the one bundle {bundle.path} was exported with (hash differs)"
            )
    lora = m.get("lora")
    if lora:
        if not Path(lora["path"]).is_file():
            raise StdtrtError(
                f"the bundle's LoRA {lora['path']} is not here (the torch backend rebuilds from it)"
            )
        if file_hash(lora["path"]) != lora["hash"]:
            raise StdtrtError(
                f"LoRA {lora['path']} changed since bundle {bundle.path} was exported (hash differs)"
            )
        load_lora(model, lora["path"])
        fuse_lora(model)
    model.place(recorded_placement(device, bundle.placement))
    return model
