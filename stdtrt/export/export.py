"""`stdtrt export`: model (+ LoRA, fused) -> ONNX graphs -> validation -> TensorRT engines -> manifest.

The bundle is written into a temporary folder beside `--out` and renamed only when complete, so an
interrupted or failed export never leaves a half bundle that looks finished. An existing bundle whose
cache key matches is reused (only the missing TensorRT engines are built); another bundle is replaced with
--overwrite; a folder holding anything else is refused, flag or not (export/folder.py).

Over 350 lines on purpose: the one export pipeline (load, fuse, trace, validate, build, record), a
function per stage; the folder rules are in folder.py, the validating backends in validate.py.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from stdtrt import schedule
from stdtrt.bundle import manifest as mf
from stdtrt.bundle.model import conditioning_hash, fingerprint, model_hash, source_of
from stdtrt.bundle.networks import build_networks, example_inputs
from stdtrt.bundle.variant import variant_for
from stdtrt.config import ExportConfig, to_dict
from stdtrt.errors import StdtrtError
from stdtrt.export import tensorrt
from stdtrt.export.folder import check_out, engines_fit, existing_bundle, file_records, link_or_copy
from stdtrt.export.onnx import export_networks
from stdtrt.export.validate import (
    Row,
    check,
    format_table,
    onnxruntime_rows,
    ort_has_cuda,
    reference,
    tensorrt_rows,
    timed_stage,
    validation_backends,
)
from stdtrt.io.atomic import atomic_dir
from stdtrt.io.hashing import file_hash, module_hash
from stdtrt.models.attention_cache import CacheSettings
from stdtrt.models.card import StudentCard
from stdtrt.models.controlnet import setup_control
from stdtrt.models.load import DTYPES, exact_float32, load_model, placement_for, resolve_device
from stdtrt.models.lora import fuse_lora, load_lora
from stdtrt.models.style import attach_style, encode_style, warn_if_trained_with_styles

log = logging.getLogger(__name__)


@dataclass
class ExportResult:
    path: Path
    reused: bool  # the ONNX graphs of an existing bundle with the same key were kept
    seconds: float
    sizes: dict[str, int]  # file -> bytes
    table: str | None  # the validation table (None when validation was skipped or reused)
    tensorrt: str  # what happened to the engines, in one line
    stages: dict[str, float] = field(default_factory=dict)  # seconds per export stage


def export_precision(requested: str, build_trt: bool, device=None) -> str:
    """The graphs' precision: auto is fp16 for a GPU (the export's device is one, or TensorRT builds engines
    here), as the one precision rule gives a GPU, else fp32; bf16 bundles are not made (onnxruntime on a CPU
    cannot run, hence cannot validate, bf16 convolutions)."""
    if requested == "bf16":
        raise StdtrtError(
            "export makes fp32 or fp16 bundles (bf16 graphs cannot be validated by onnxruntime here); "
            "use --precision fp16 for TensorRT, or run bf16 with --model on the torch path"
        )
    if requested == "auto":
        return "fp16" if build_trt or (device is not None and device.type == "cuda") else "fp32"
    return requested


def export_bundle(cfg: ExportConfig, progress: bool = True) -> ExportResult:
    """Export (or reuse) the bundle cfg describes; see the module doc."""
    import torch

    start, stages = time.perf_counter(), {}
    out = Path(cfg.out).expanduser().absolute()  # `--out .` names the current folder
    check_out(out)
    device = resolve_device(cfg.device)
    build_trt, trt_line = tensorrt.decide(cfg.tensorrt)
    precision = export_precision(cfg.precision, build_trt, device)
    backends = validation_backends(device, build_trt, ort_has_cuda())
    card = StudentCard.read(cfg.lora)
    grid = card.grid(cfg.strength)
    # float32 on the CPU (hashed, fused and traced there); the validation reference runs on `device`
    with timed_stage(f"loading {cfg.model}"):
        model = load_model(cfg.model, motion_adapter=cfg.motion_adapter)
    variant = variant_for(cfg, card)  # a video student's slot is one window
    variant.check_model(model)
    motion, batch = variant.record(), variant.slot_frames
    width = cfg.width or cfg.height or model.native_size
    height = cfg.height or cfg.width or model.native_size
    plan = schedule.student_plan(model.alphas_cumprod(), cfg.strength, cfg.nfe, 0.0, grid)
    dtype = DTYPES[precision]
    base_hash = model_hash(model)  # the model as published, before its VAE is swapped or a LoRA loaded
    model.use_vae(cfg.vae)
    vae = {**model.vae_info, "hash": None if cfg.vae == "full" else module_hash(model.vae)}
    graphs_at = placement_for(torch.device("cpu"), dtype, model.kind, model.vae.config)
    lora_hash = None
    if cfg.lora:
        load_lora(model, cfg.lora)  # refuses a LoRA of another UNet
        lora_hash = file_hash(cfg.lora)
    style, cache = None, CacheSettings.of(cfg)
    control = setup_control(cfg, model)  # float32 on the CPU, as the model: placed with it for the graphs
    warn_if_trained_with_styles(cfg.lora, cfg.style_image)
    if cfg.style_image:  # its embedding becomes a constant of the UNet graph, like the prompt's
        style = encode_style(model, cfg.style_image, cfg.ip_adapter, cfg.style_scale, cfg.style_blocks)
    fields = mf.onnx_key_fields(
        model_hash=base_hash, lora_hash=lora_hash, prompt=cfg.prompt, negative_prompt=cfg.negative_prompt,
        eta=cfg.strength, nfe=cfg.nfe, guidance=cfg.guidance, width=width, height=height,
        batch=batch,
        precision=precision, placement=graphs_at.dtypes(), vae=vae, opset=cfg.opset, plan=plan.as_dict(),
        conditioning_hash=conditioning_hash(model, cfg, width, height),
        style=None if style is None else style.key(), motion=variant.key(),
        cache=None if cache is None else cache.key(),
        control=None if control is None else control.key(),
    )  # fmt: skip
    key = mf.cache_key(fields)
    existing = existing_bundle(out, key, cfg.overwrite)
    stages["load"] = time.perf_counter() - start
    if existing is not None and cfg.validate and not existing.validated:  # exported with --no-validate
        what = (model, plan, width, height, style, batch, cache, control)
        return _validate_in_place(cfg, existing, what, device, key, start, stages)
    if existing is not None and (not build_trt or engines_fit(existing, key)):
        log.info("%s already holds this bundle (key %s): reused", out, key[:12])
        sizes = {n: e["bytes"] for n, e in existing.manifest.files.items()}
        trt_line = "TensorRT engines reused" if build_trt else trt_line
        return ExportResult(out, True, time.perf_counter() - start, sizes, None, trt_line)
    with atomic_dir(out) as tmp:
        t = time.perf_counter()
        networks, ref, fused = _reference(
            cfg, model, plan, width, height, style, batch, cache, control, device
        )
        stages["reference"] = time.perf_counter() - t
        if existing is None:
            manifest, rows = _export_onnx(
                cfg,
                model,
                networks,
                ref,
                fused,
                plan,
                fields,
                key,
                graphs_at,
                tmp,
                stages,
                style,
                cache,
                control,
                (backends, device),
            )
            manifest.motion = motion
        else:
            manifest = dataclasses.replace(existing.manifest)
            rows = list((manifest.validation or {}).get("rows", []))
            for name in existing.manifest.files:
                if not name.endswith(".plan"):
                    link_or_copy(existing.path / name, tmp / name)
            # engines are built anew: their old entries must not stand for the new files
            manifest.files = {n: e for n, e in manifest.files.items() if not n.endswith(".plan")}
        if build_trt:
            t = time.perf_counter()
            built = tensorrt.build_engines(tmp, manifest.graphs, cfg.workspace_gb, progress)
            built["key"] = mf.tensorrt_key(key, built["version"], built["arch"])
            manifest.tensorrt = built
            stages["tensorrt"] = time.perf_counter() - t
            trt_line = (
                f"TensorRT engines built (TensorRT {built['version']}, {built['arch']}, {built['gpu']})"
            )
            if ref is not None:
                trt_device = str(device) if device.type == "cuda" else "cuda"
                rows = _validate_engines(tmp, manifest, rows, ref, trt_device, stages)
        table = _finish_validation(tmp, manifest, rows, cfg, ref)
        manifest.files = file_records(tmp, manifest.files)
        manifest.export_seconds = {k: round(v, 1) for k, v in stages.items()}
        mf.write_manifest(tmp, manifest)
    sizes = {n: e["bytes"] for n, e in manifest.files.items()}
    return ExportResult(
        out, existing is not None, time.perf_counter() - start, sizes, table, trt_line, stages
    )


def _validate_in_place(cfg, existing, what, device, key, start, stages) -> ExportResult:
    """A bundle exported with --no-validate, validated now as an export would have: its graphs (and its
    engines, where they fit this TensorRT and GPU) against the torch reference, the table recorded in its
    manifest; its files are kept as they are (linked into the new folder)."""
    import torch

    engines = engines_fit(existing, key) and torch.cuda.is_available()
    backends = validation_backends(device, engines, ort_has_cuda())
    with atomic_dir(existing.path) as tmp:
        t = time.perf_counter()
        _, ref, _ = _reference(cfg, *what, device)
        stages["reference"] = time.perf_counter() - t
        for name in existing.manifest.files:
            link_or_copy(existing.path / name, tmp / name)
        manifest = dataclasses.replace(existing.manifest)
        bundle = mf.Bundle(tmp, manifest)
        t = time.perf_counter()
        rows = onnxruntime_rows(bundle, ref, backends, device)
        if engines:
            rows += tensorrt_rows(bundle, ref, str(device) if device.type == "cuda" else "cuda")
        stages["validate"] = time.perf_counter() - t
        table = _finish_validation(tmp, manifest, rows, cfg, ref)
        manifest.files = file_records(tmp, manifest.files)
        mf.write_manifest(tmp, manifest)
    sizes = {n: e["bytes"] for n, e in manifest.files.items()}
    line = "TensorRT engines validated" if engines else "TensorRT engines: none validated here"
    return ExportResult(existing.path, True, time.perf_counter() - start, sizes, table, line, stages)


def validate_bundle(path: str, device: str = "auto") -> ExportResult:
    """`stdtrt validate`: a bundle exported with --no-validate, validated in place with the options it was
    exported with (its manifest's), its model and LoRA found where the manifest says."""
    from dataclasses import fields

    bundle = mf.read_bundle(path)
    m = bundle.manifest
    if bundle.validated:
        sizes = {n: e["bytes"] for n, e in m.files.items()}
        table = format_table([Row(**{k: v for k, v in r.items() if k != "ok"}) for r in m.validation["rows"]])
        return ExportResult(bundle.path, True, 0.0, sizes, table, "validated at export: nothing to do")
    names = {f.name for f in fields(ExportConfig)}
    given = {k: v for k, v in (m.config or {}).items() if k in names}
    style = m.style
    given.update(
        model=m.model["source"], lora=(m.lora or {}).get("path"), out=str(bundle.path),
        validate=True, overwrite=False, device=device, tensorrt=None if bundle.tensorrt else False,
        style_image=style["image"] if style else None,
    )  # fmt: skip
    return export_bundle(
        ExportConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in given.items()})
    )


def _reference(cfg, model, plan, width, height, style, batch, cache, control, device):
    """Fuse the LoRA and build the float32 networks on the CPU (what is traced); with validation on, run
    the reference on `device` first, in float32 with TF32 off (the model, and a ControlNet, moved there and
    back). Returns (networks, reference (its tensors on the CPU) or None, the fuse report or None)."""
    import torch

    fused = fuse_lora(model)
    if style is not None:
        attach_style(model, style)

    def networks():
        return build_networks(
            model, plan, cfg.prompt, cfg.negative_prompt, cfg.guidance, width, height, batch, style, cache,
            control,
        )  # fmt: skip

    if not cfg.validate:
        return networks(), None, fused
    cpu = model.placement
    with timed_stage(f"validation reference (float32 on {device}, TF32 off)"), exact_float32():
        model.place(placement_for(device, torch.float32, model.kind, model.vae.config))
        if control is not None:
            control.place(device, torch.float32)
        try:
            ref = reference(networks(), model, plan, cfg, width, height, style, cache, control)
        finally:
            model.place(cpu)
            if control is not None:
                control.place(cpu.device, torch.float32)
    return networks(), ref, fused


def _export_onnx(
    cfg, model, networks, ref, fused, plan, fields, key, graphs_at, tmp: Path, stages, style, cache, control,
    validation,
):  # fmt: skip
    """Trace the three graphs in the graphs' placement, write a first manifest, validate them on the
    onnxruntime backends of `validation` ((backends, device)); return (manifest, rows)."""

    t = time.perf_counter()
    if graphs_at.half:  # trace the modules as they will run: half-precision weights and compute
        model.place(graphs_at)
        if control is not None:
            control.place(graphs_at.device, graphs_at.unet)
        networks = build_networks(
            model, plan, cfg.prompt, cfg.negative_prompt, cfg.guidance, fields["width"], fields["height"],
            fields["batch"], style, cache, control,
        )  # fmt: skip
    dtypes = graphs_at.dtypes()
    precision = {"vae_encoder": dtypes["vae"], "unet": dtypes["unet"], "vae_decoder": dtypes["vae"]}
    latent = model.latent_shape(fields["width"], fields["height"])
    examples = example_inputs(networks, latent, fields["width"], fields["height"])
    graphs = export_networks(networks, tmp, examples, cfg.opset, precision)
    stages["onnx"] = time.perf_counter() - t
    manifest = _manifest(cfg, model, fused, plan, fields, key, graphs)
    manifest.style = None if style is None else style.record()
    manifest.cache = None if cache is None else cache.record()
    manifest.control = None if control is None else control.record()
    manifest.files = file_records(tmp, {})
    mf.write_manifest(tmp, manifest)
    if ref is None:
        log.warning("validation skipped (--no-validate): the graphs were not compared with torch")
        return manifest, []
    t = time.perf_counter()
    rows = onnxruntime_rows(mf.read_bundle(tmp, verify=False), ref, *validation)  # hashed just now
    stages["validate"] = time.perf_counter() - t
    return manifest, rows


def _validate_engines(tmp: Path, manifest: mf.Manifest, rows: list, ref, device: str, stages) -> list:
    """Run the fresh .plan engines on the GPU against the same reference; their rows join the table."""

    t = time.perf_counter()
    manifest.files = file_records(tmp, manifest.files)
    mf.write_manifest(tmp, manifest)
    rows = [r for r in rows if (r["backend"] if isinstance(r, dict) else r.backend) != "tensorrt"]
    rows += tensorrt_rows(mf.read_bundle(tmp, verify=False), ref, device)
    stages["validate_tensorrt"] = time.perf_counter() - t
    return rows


def _finish_validation(tmp: Path, manifest: mf.Manifest, rows: list, cfg, ref=None) -> str | None:
    """Print, check and save the validation table; a row over its tolerance fails the export."""

    if not rows:
        return None
    rows = [r if isinstance(r, Row) else Row(**{k: v for k, v in r.items() if k != "ok"}) for r in rows]
    table = format_table(rows)
    log.debug("%s", table)
    if not all(r.ok for r in rows):
        log.error("export validation, against torch:\n%s", table)
    check(rows)
    (tmp / "validation.txt").write_text(table + "\n")
    manifest.validation = {
        "rows": [r.as_dict() for r in rows],
        "seed": cfg.seed,
        "reference": ref.describe() if ref is not None else (manifest.validation or {}).get("reference"),
    }
    return table


def _manifest(cfg, model, fused, plan, fields, key, graphs) -> mf.Manifest:
    return mf.Manifest(
        key=key,
        key_fields=fields,
        config=to_dict(cfg),  # the resolved export settings, as given
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        model={
            "name": cfg.model,
            "source": source_of(cfg.model),
            "kind": model.kind,
            "hash": fields["model_hash"],
            "fingerprint": fingerprint(source_of(cfg.model)),
            "scaling_factor": model.scaling_factor,
            "vae_scale": model.vae_scale,
            "native_size": model.native_size,
        },
        lora=None
        if not cfg.lora
        else {
            "path": str(Path(cfg.lora).expanduser().resolve()),
            "hash": fields["lora_hash"],
            "fingerprint": fingerprint(str(Path(cfg.lora).expanduser().resolve())),
            "fused": fused.as_dict() if fused else None,
        },
        prompt=cfg.prompt,
        negative_prompt=cfg.negative_prompt,
        guidance=cfg.guidance,
        schedule={**plan.as_dict(), "num_train_timesteps": int(model.alphas_cumprod().shape[0])},
        width=fields["width"],
        height=fields["height"],
        batch=fields["batch"],
        precision=fields["precision"],
        placement=fields["placement"],
        vae={
            **fields["vae"],
            "fingerprint": None if cfg.vae == "full" else fingerprint(fields["vae"]["source"]),
        },
        graphs=graphs,
        versions=mf.library_versions(),
        files={},
    )
