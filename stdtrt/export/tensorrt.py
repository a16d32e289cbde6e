"""TensorRT engines (.plan) from the bundle's ONNX graphs, with the TensorRT Python API (10.x and 11.x).

Every network is strongly typed: each layer runs in the types the ONNX graph gives it (fp16 weights and
compute in an fp16 graph, with the float32 islands export/fp16.py kept; float32 inputs and outputs), never
in a precision a builder flag picks. TensorRT 11 has nothing else (BuilderFlag.FP16 and every weak-typing
API are gone); TensorRT 10 is asked for it with the STRONGLY_TYPED creation flag, read from its enum (its
bit differs between 10.x and 11.x). TF32 is switched off, so a float32 graph computes in float32.

Static shapes (the graphs have no dynamic axes, so no optimization profile), a workspace limit, a timing
cache shared by builds on this machine (a rebuild takes seconds instead of minutes), and a progress bar
per build phase. Needs CUDA and the `tensorrt` package; without them the export skips this step with one
line, and `--tensorrt` fails instead. Any TensorRT failure is one line; the bundle folder is only renamed
into place when everything, the engines' validation included, succeeded.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from stdtrt.availability import is_tensorrt_available, tensorrt_identity
from stdtrt.config import cache_root
from stdtrt.errors import StdtrtError
from stdtrt.io.atomic import atomic_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NetworkPlan:
    """How a graph becomes a TensorRT network: the create_network flags and whether TF32 is allowed."""

    creation_flags: int
    tf32: bool


def network_plan(version: str, creation_flag_enum) -> NetworkPlan:
    """The builder settings for TensorRT `version` (its NetworkDefinitionCreationFlag enum passed in): a
    strongly typed network, whatever the graph's precision (the precision is the graph's own).

    - 10.x: weak typing is the default, so the STRONGLY_TYPED creation flag is set (1 << its value; the
      value is read from the enum, never hard-coded: 1 in 10.x, where 0 is EXPLICIT_BATCH, and 0 in 11.x).
    - 11.x: every network is strongly typed and the flag is deprecated and ignored: no flag is passed.
    - TF32 stays off in both: a float32 graph computes in float32, as validated.
    """
    try:
        major = int(version.split(".")[0])
    except ValueError:
        raise StdtrtError(f"cannot read the TensorRT version {version!r}") from None
    if major >= 11:
        return NetworkPlan(creation_flags=0, tf32=False)
    flag = getattr(creation_flag_enum, "STRONGLY_TYPED", None)
    if flag is None:
        raise StdtrtError(
            f"TensorRT {version} cannot build strongly typed networks; stdtrt needs TensorRT 10 or 11"
        )
    return NetworkPlan(creation_flags=1 << int(flag), tf32=False)


@dataclass(frozen=True)
class BuildSpec:
    """One engine build: everything the builder is told."""

    graph: str
    onnx: Path
    plan: Path
    workspace_bytes: int
    timing_cache: Path


def decide(requested: bool | None) -> tuple[bool, str]:
    """(build engines?, the line to say): requested None builds when possible, True insists, False skips."""

    if requested is False:
        return False, "TensorRT engines skipped (--no-tensorrt)"
    ok, why = is_tensorrt_available()
    if ok:
        return True, why
    if requested:
        raise StdtrtError(f"--tensorrt: cannot build engines here: {why}")
    return False, f"TensorRT engines skipped: {why}; the ONNX graphs run on onnxruntime"


def timing_cache_path(ident: dict) -> Path:
    return cache_root() / "tensorrt" / f"timing-{ident['arch']}-trt{ident['version']}.cache"


def build_specs(folder: Path, graphs: dict, workspace_gb: float, timing_cache: Path) -> list[BuildSpec]:
    """The builds for a bundle's graphs (each graph's precision is its own: nothing to tell the builder)."""
    return [
        BuildSpec(
            graph=name,
            onnx=Path(folder) / entry["onnx"],
            plan=Path(folder) / f"{name}.plan",
            workspace_bytes=int(workspace_gb * 2**30),
            timing_cache=timing_cache,
        )
        for name, entry in graphs.items()
    ]


def _progress_monitor(trt, title: str):
    """A trt.IProgressMonitor drawing one tqdm bar per build phase."""
    from tqdm import tqdm

    class Monitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self.bars = {}

        def phase_start(self, phase_name, parent_phase, num_steps):
            self.bars[phase_name] = tqdm(total=num_steps, desc=f"{title}: {phase_name}", leave=False)

        def step_complete(self, phase_name, step):
            bar = self.bars.get(phase_name)
            if bar is not None:
                bar.update(step + 1 - bar.n)
            return True  # False would cancel the build

        def phase_finish(self, phase_name):
            bar = self.bars.pop(phase_name, None)
            if bar is not None:
                bar.close()

    return Monitor()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


def build_engine(spec: BuildSpec, progress: bool = True) -> float:
    """Parse spec.onnx, build and write spec.plan; returns the build seconds. Failures are one line."""
    import tensorrt as trt

    start = time.perf_counter()
    plan = network_plan(trt.__version__, trt.NetworkDefinitionCreationFlag)
    try:
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        network = builder.create_network(plan.creation_flags)
        parser = trt.OnnxParser(network, logger)
    except Exception as exc:  # no driver, a CUDA mismatch, a broken install
        raise StdtrtError(
            f"TensorRT {trt.__version__} could not start a builder: {_first_line(exc)}"
        ) from None
    if not parser.parse_from_file(str(spec.onnx)):  # reads external data beside the file
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise StdtrtError(f"TensorRT {trt.__version__} cannot parse {spec.onnx.name}: {errors[:400]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, spec.workspace_bytes)
    if not plan.tf32:
        config.clear_flag(trt.BuilderFlag.TF32)
    cache = config.create_timing_cache(spec.timing_cache.read_bytes() if spec.timing_cache.exists() else b"")
    config.set_timing_cache(cache, ignore_mismatch=True)  # a stale cache is rebuilt, never an error
    if progress:
        config.progress_monitor = _progress_monitor(trt, spec.graph)
    try:
        serialized = builder.build_serialized_network(network, config)
    except Exception as exc:
        raise StdtrtError(f"TensorRT failed to build {spec.graph}: {_first_line(exc)}") from None
    if serialized is None:
        raise StdtrtError(
            f"TensorRT failed to build {spec.graph} (its log is above); try a larger --workspace-gb"
        )
    with atomic_path(spec.plan) as tmp:
        tmp.write_bytes(bytes(serialized))
    spec.timing_cache.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(spec.timing_cache) as tmp:
        tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    seconds = time.perf_counter() - start
    log.info("built %s (%.0f MB) in %.0f s", spec.plan.name, spec.plan.stat().st_size / 1e6, seconds)
    return seconds


def build_engines(folder: Path, graphs: dict, workspace_gb: float, progress: bool = True) -> dict:
    """Build every graph's engine into `folder`, record its file in `graphs`; return the manifest section."""
    ident = tensorrt_identity()
    specs = build_specs(folder, graphs, workspace_gb, timing_cache_path(ident))
    seconds = {s.graph: round(build_engine(s, progress), 1) for s in specs}
    for spec in specs:
        graphs[spec.graph]["plan"] = spec.plan.name
    return {**ident, "strongly_typed": True, "workspace_gb": workspace_gb, "build_seconds": seconds}
