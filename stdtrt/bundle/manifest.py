"""The bundle's `manifest.json`: everything the runtime needs and nothing it must guess, the sha256 of every
file, and the cache key that decides whether an existing bundle can be reused.

Layout of a bundle folder:
    manifest.json
    vae_encoder.onnx  unet.onnx [unet.onnx.data]  vae_decoder.onnx    (ONNX graphs, opset >= 17)
    vae_encoder.plan  unet.plan  vae_decoder.plan                     (TensorRT engines, when built)
    validation.txt                                                    (onnxruntime vs torch table)
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import platform
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stdtrt.errors import StdtrtError
from stdtrt.io.atomic import atomic_path
from stdtrt.io.hashing import file_hash
from stdtrt.schedule import StudentPlan

FORMAT = "stdtrt-bundle"
FORMAT_VERSION = 3  # 2: the placement (graph dtypes) and the teacher grid are recorded; 3: manifest_sha256
MANIFEST = "manifest.json"
# Bump when the graphs' meaning changes (inputs, outputs, what is baked in): old bundles stop matching.
GRAPH_VERSION = 3  # 2: fp16 graphs are the fp16 modules traced, with float32 islands; 3: uint8 only at the
# VAE graphs' edges, SD 1.x's instantstyle block is the whole up block, the prompt keyed by its token ids


# What export writes into a bundle folder, and nothing else: the manifest, the validation table, and per graph
# its ONNX file, the ONNX weights beside it and its TensorRT engine.
_BUNDLE_FILE = re.compile(r"^(manifest\.json|validation\.txt|[a-z0-9_]+\.(onnx|onnx\.data|plan))$")


def foreign_entries(folder: Path) -> list[str]:
    """The entries of `folder` that no bundle holds (every one of them when it has no manifest):
    `stdtrt export` replaces a bundle, never a folder of anything else."""
    names = sorted(p.name for p in Path(folder).iterdir())
    if MANIFEST not in names:
        return names
    return [n for n in names if not _BUNDLE_FILE.match(n) or not (Path(folder) / n).is_file()]


@dataclass
class Manifest:
    """The one schema of `manifest.json`: export builds it, `read_bundle` checks and returns it, the runtime
    reads its attributes. The nested records (model, schedule, graphs, files, ...) are the JSON objects that
    their writers define (the StudentPlan, models.style.Style.record, ...)."""

    key: str  # cache_key(key_fields): decides whether a bundle can be reused
    key_fields: dict  # onnx_key_fields: what the graphs depend on
    config: dict  # the export settings, as given (ExportConfig)
    created: str
    model: dict  # name, source, kind, hash, fingerprint, scaling_factor, vae_scale, native_size
    lora: dict | None  # path, hash, fingerprint, fused
    prompt: str
    negative_prompt: str
    guidance: float
    schedule: dict  # StudentPlan.as_dict() and num_train_timesteps
    width: int
    height: int
    batch: int  # frames per stream slot
    precision: str
    placement: dict  # the graphs' dtypes: {"unet": "fp16", "vae": "fp16"}
    vae: dict
    graphs: dict  # per graph: its onnx file, inputs and outputs (names, shapes, dtypes)
    versions: dict  # the libraries that made it
    files: dict  # name -> file_entry (the files written so far, while export runs)
    validation: dict | None = None  # the table against torch (rows, seed, reference); None: --no-validate
    tensorrt: dict | None = None  # the engines: version, arch, gpu, key
    style: dict | None = None  # models.style.Style.record()
    cache: dict | None = None  # cached attention: frames, interval, fusion, threshold
    control: dict | None = None  # models.controlnet record
    motion: dict | None = None  # a video student's: adapter, source, fingerprint, window, noise_rule
    export_seconds: dict | None = None
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], file: Path) -> Manifest:
        schema = dataclasses.fields(cls)
        names = {f.name for f in schema}
        unset = dataclasses.MISSING
        required = [f.name for f in schema if f.default is unset and f.default_factory is unset]
        missing = [k for k in required if k not in data]
        if missing:
            raise StdtrtError(f"{file} lacks {', '.join(missing)}; export the bundle again")
        unknown = sorted(set(data) - names - {"manifest_sha256"})
        if unknown:
            raise StdtrtError(
                f"{file} has fields this stdtrt does not know ({', '.join(unknown)}); it was written by "
                f"another version: export the bundle again"
            )
        return cls(**{k: v for k, v in data.items() if k in names})


def cache_key(fields: dict) -> str:
    """sha256 of the canonical JSON of the fields a bundle's files depend on."""
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def onnx_key_fields(
    *,
    model_hash: str,
    lora_hash: str | None,
    prompt: str,
    negative_prompt: str,
    eta: float,
    nfe: int,
    guidance: float,
    width: int,
    height: int,
    batch: int,
    precision: str,
    placement: dict,
    vae: dict,
    opset: int,
    plan: dict | None = None,
    conditioning_hash: str | None = None,
    style: dict | None = None,
    motion: dict | None = None,
    cache: dict | None = None,
    control: dict | None = None,
) -> dict:
    """What the ONNX graphs depend on (the negative prompt only when guidance bakes it in). The baked plan
    covers the scheduler config (timesteps and coefficients); the conditioning hash covers the prompts
    by their token ids (the text encoders' weights are in the model hash; their float output may differ in
    the last bits between CPUs, so it is no key). `style`, `motion`, `cache` and `control`: the `key()` of
    what the graphs were made with (models.style.Style, bundle.variant.VideoStudent,
    models.attention_cache.CacheSettings, models.controlnet.Control), each saying what of it counts."""
    fields = {
        "plan": plan,
        "conditioning_hash": conditioning_hash,
        "graph_version": GRAPH_VERSION,
        "model_hash": model_hash,
        "lora_hash": lora_hash,
        "prompt": prompt,
        "negative_prompt": negative_prompt if guidance > 1 else None,
        "eta": float(eta),
        "nfe": int(nfe),
        "guidance": float(guidance),
        "width": int(width),
        "height": int(height),
        "batch": int(batch),
        "precision": precision,
        "placement": placement,
        "vae": vae,
        "opset": int(opset),
    }
    additions = {"style": style, "motion": motion, "cache": cache, "control": control}
    fields.update({name: key for name, key in additions.items() if key is not None})
    return fields


def tensorrt_key(onnx_key: str, trt_version: str, arch: str) -> str:
    """A .plan is valid for one set of graphs, one TensorRT version and one GPU architecture."""
    return cache_key({"onnx_key": onnx_key, "tensorrt": trt_version, "arch": arch})


def file_entry(path: Path) -> dict:
    """What the manifest records of a file: its sha256 (taken once, at export), size and modification time
    (the cheap check at every load)."""
    stat = path.stat()
    return {"sha256": file_hash(path), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def file_entries(folder: Path, names) -> dict:
    return {name: file_entry(folder / name) for name in names}


def library_versions() -> dict:
    out = {"python": platform.python_version()}
    for dist in ("stdtrt", "torch", "diffusers", "transformers", "peft", "onnx", "onnxscript", "onnxruntime"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def manifest_digest(manifest: dict) -> str:
    """sha256 of the manifest's contents (canonical JSON, without the digest itself): recorded in it at
    every write, so a hand edit of the numbers it carries (a_start, width, ...) is refused at read."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_manifest(folder: Path, manifest: Manifest) -> Path:
    path = Path(folder) / MANIFEST
    body = manifest.to_dict()
    sealed = {**body, "manifest_sha256": manifest_digest(body)}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(sealed, indent=2, sort_keys=False) + "\n")
    return path


@dataclass
class Bundle:
    """A read (and, unless told otherwise, verified) bundle folder."""

    path: Path
    manifest: Manifest

    @property
    def key(self) -> str:
        return self.manifest.key

    @property
    def width(self) -> int:
        return int(self.manifest.width)

    @property
    def height(self) -> int:
        return int(self.manifest.height)

    @property
    def nfe(self) -> int:
        return int(self.manifest.schedule["nfe"])

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return tuple(self.manifest.graphs["vae_encoder"]["outputs"][0]["shape"][1:])  # (4, h, w)

    @property
    def batch(self) -> int:
        """B: frames per stream slot (the UNet graph runs NFE * B latents per call)."""
        return int(self.manifest.batch)

    @property
    def motion(self) -> dict | None:
        """A video student's bundle: {"adapter", "source", "fingerprint", "window"} (a slot is one window
        of `window` frames, = batch); None for a per-frame student's."""
        return self.manifest.motion

    @property
    def cache(self) -> dict | None:
        """Cached attention baked into the UNet graph ({"frames", "interval", "fusion", "threshold"}), or None."""
        return self.manifest.cache

    @property
    def placement(self) -> dict:
        """The graphs' dtypes: {"unet": "fp16", "vae": "fp16"} (the torch backend runs the same)."""
        return self.manifest.placement

    @property
    def tensorrt(self) -> dict | None:
        return self.manifest.tensorrt

    def plan(self):
        """The StudentPlan baked into the graphs, as recorded (never recomputed)."""

        fields = dict(self.manifest.schedule)
        fields.pop("num_train_timesteps", None)
        return StudentPlan(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})

    def graph_file(self, graph: str, kind: str = "onnx") -> Path:
        name = self.manifest.graphs[graph].get(kind)
        if not name:
            raise StdtrtError(f"bundle {self.path} has no {kind} file for {graph}")
        return self.path / name

    @property
    def validated(self) -> bool:
        """Whether export compared its graphs with torch (not with --no-validate, or validated since)."""
        return bool((self.manifest.validation or {}).get("rows"))

    def verify(self, full: bool = False) -> int:
        """Every listed file exists as exported: the same size and modification time as recorded, or as
        this machine verified it before (bundle/verified.py: a copied bundle is hashed at its first start
        only), else (or with `full`, --verify) the same sha256; a changed file is refused. Returns how many
        were hashed (a large SDXL bundle takes minutes to hash on a slow disk: a normal start hashes none)."""
        from stdtrt.bundle import verified

        hashed = 0
        for name, entry in self.manifest.files.items():
            path = self.path / name
            if not path.is_file():
                raise StdtrtError(f"bundle {self.path} is missing {name}; export it again (`stdtrt export`)")
            stat = path.stat()
            if stat.st_size != entry["bytes"]:
                raise StdtrtError(
                    f"bundle {self.path}: {name} has {stat.st_size} bytes, its manifest {entry['bytes']} (changed "
                    f"or truncated after export); export the bundle again"
                )
            if not full and stat.st_mtime_ns == entry.get("mtime_ns"):  # as exported
                continue
            key, stamp = verified.file_key(path), [stat.st_size, stat.st_mtime_ns]
            if not full and verified.known(key, stamp, entry["sha256"]):  # copied, and hashed here before
                continue
            hashed += 1
            if file_hash(path) != entry["sha256"]:
                raise StdtrtError(
                    f"bundle {self.path}: {name} does not match the sha256 in its manifest (changed or "
                    f"corrupted after export); export the bundle again"
                )
            verified.remember(key, stamp, entry["sha256"])
        return hashed


def read_bundle(path: str | Path, verify: bool = True, full: bool = False) -> Bundle:
    """Read a bundle folder's manifest; with verify, check its files (Bundle.verify: sizes and times, the
    sha256 of any that changed, of all with `full`)."""
    path = Path(path)
    if not path.is_dir():
        raise StdtrtError(f"bundle {path} does not exist (make one with `stdtrt export --out {path} ...`)")
    file = path / MANIFEST
    if not file.is_file():
        raise StdtrtError(f"{path} is not an stdtrt bundle (no {MANIFEST}); make one with `stdtrt export`")
    try:
        manifest = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StdtrtError(f"{file} is not valid JSON ({exc}); export the bundle again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise StdtrtError(f"{file} is not an stdtrt bundle manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise StdtrtError(
            f"{file} has format version {manifest.get('format_version')}; this stdtrt reads version "
            f"{FORMAT_VERSION}: export the bundle again"
        )
    record = Manifest.from_dict(manifest, file)
    if manifest.get("manifest_sha256") != manifest_digest(manifest):
        raise StdtrtError(
            f"{file} was changed after export (its contents do not match the digest recorded in it): the "
            f"graphs were built for what it said then; export the bundle again"
        )
    bundle = Bundle(path, record)
    if verify:
        bundle.verify(full)
    return bundle
