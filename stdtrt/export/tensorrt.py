"""TensorRT engines (.plan) from the bundle's ONNX graphs, with the TensorRT Python API.

Static shapes (the graphs have no dynamic axes, so no optimization profile), FP16 where the graph is fp16,
a workspace limit, a timing cache shared by builds on this machine (a rebuild takes seconds instead of
minutes), and a progress bar per build phase. Needs CUDA and the `tensorrt` package; without them the
export skips this step with one line, and `--tensorrt` fails instead.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from stdtrt.availability import tensorrt_identity
from stdtrt.errors import StdtrtError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildSpec:
    """One engine build: everything the builder is told."""

    graph: str
    onnx: Path
    plan: Path
    fp16: bool
    workspace_bytes: int
    timing_cache: Path


def decide(requested: bool | None) -> tuple[bool, str]:
    """(build engines?, the line to say): requested None builds when possible, True insists, False skips."""
    from stdtrt.availability import is_tensorrt_available

    if requested is False:
        return False, "TensorRT engines skipped (--no-tensorrt)"
    ok, why = is_tensorrt_available()
    if ok:
        return True, why
    if requested:
        raise StdtrtError(f"--tensorrt: cannot build engines here: {why}")
    return False, f"TensorRT engines skipped: {why}; the ONNX graphs run on onnxruntime"


def timing_cache_path(ident: dict) -> Path:
    from stdtrt.config import cache_root

    return cache_root() / "tensorrt" / f"timing-{ident['arch']}-trt{ident['version']}.cache"


def build_specs(folder: Path, graphs: dict, workspace_gb: float, timing_cache: Path) -> list[BuildSpec]:
    """The builds for a bundle's graphs: fp16 engines for fp16 graphs, fp32 (TF32) for the rest."""
    return [
        BuildSpec(
            graph=name,
            onnx=Path(folder) / entry["onnx"],
            plan=Path(folder) / f"{name}.plan",
            fp16=entry["precision"] == "fp16",
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


def build_engine(spec: BuildSpec, progress: bool = True) -> float:
    """Parse spec.onnx, build and write spec.plan; returns the build seconds."""
    import tensorrt as trt

    from stdtrt.io.atomic import atomic_path

    start = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch: the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(spec.onnx)):  # reads external data beside the file
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise StdtrtError(f"TensorRT cannot parse {spec.onnx.name}: {errors[:400]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, spec.workspace_bytes)
    if spec.fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    cache = config.create_timing_cache(spec.timing_cache.read_bytes() if spec.timing_cache.exists() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    if progress:
        config.progress_monitor = _progress_monitor(trt, spec.graph)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise StdtrtError(
            f"TensorRT failed to build {spec.graph} (see its log above); try a larger --workspace-gb"
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
    return {
        **ident,
        "fp16": any(s.fp16 for s in specs),
        "workspace_gb": workspace_gb,
        "build_seconds": seconds,
    }
