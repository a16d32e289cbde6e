"""Validation at export: the backends that will run the bundle run it against the torch reference.

The reference is computed once, in float32 (TF32 off) on the export's device (the GPU when there is one),
from the fused model before any graph is made half precision: each network on seeded inputs (a sample
photograph for the VAE, seeded slots for the UNet), and one whole stylized frame as NFE sequential torch
student steps (runtime/student.py). Then each validating backend runs the same inputs: each graph, and the
frame through the stream pipe (fill and flush). On a GPU export those are the GPU backends (onnxruntime's
CUDA provider where onnxruntime-gpu is installed, the TensorRT engines once they are built); onnxruntime on
the CPU validates only where no GPU backend does (a CPU export, or a GPU with neither), so that an SDXL
export never spends tens of minutes running its graphs on the CPU beside a GPU.
The largest absolute difference is held to a tolerance relative to the reference's root mean square (at
least 1; frames: 0..255 levels plus one of rounding): fp32 rounding stays near 1e-5 and fp16 (weights and
compute) near 1e-2, while a timestep one grid step off, or another prompt, moves the UNet's output by 3 to
5 times the fp16 bound even on the random tiny test model (tests/test_export.py checks that validation
catches both).
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from stdtrt.errors import StdtrtError
from stdtrt.io.samples import sample_frames
from stdtrt.runtime.backends.onnxruntime import OnnxRuntimeBackend
from stdtrt.runtime.backends.tensorrt import TensorRTBackend
from stdtrt.runtime.pipeline import compose
from stdtrt.runtime.stream import StreamRunner
from stdtrt.runtime.student import Student, to_uint8
from stdtrt.schedule import make_noise

log = logging.getLogger(__name__)

# (per graph, whole frame) tolerance by the graph's precision.
TOLERANCES = {"fp32": (1e-3, 1e-2), "fp16": (3e-2, 6e-2)}


@dataclass(frozen=True)
class Row:
    backend: str  # what ran the graph ("onnxruntime CPU", "tensorrt", ...)
    name: str
    max_abs: float
    mean_abs: float
    scale: float  # the reference's typical magnitude: its RMS (latents), 255 (frames)
    tolerance: float  # absolute: relative tolerance x max(1, scale)

    @property
    def ok(self) -> bool:
        return self.max_abs <= self.tolerance

    def as_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


@dataclass
class Reference:
    """Seeded inputs (B frames per slot, as the bundle runs) and what the float32 torch modules make of them."""

    seed: int
    frames: np.ndarray  # (B, H, W, 3) uint8: sample photographs at the bundle's size
    z0: torch.Tensor  # encoder(frames)
    step_in: dict  # the UNet graph's inputs by name: seeded slots and noise, z0, seeded extra state
    step_out: dict  # what the UNet module gives for them, by output name
    decoded: torch.Tensor  # decoder(z0), uint8 (B, H, W, 3)
    stylized: torch.Tensor  # each frame of `sequence` through NFE sequential student steps, decoded
    sequence: np.ndarray  # `frames`, or with cached attention or a ControlNet several frames in order
    maps: object = None  # the control maps `stylized` was made with (models.control_maps.MapSpec), if any
    device: str = "cpu"  # where the torch modules ran
    tf32: bool = False  # whether TF32 was allowed there (never: models.load.exact_float32)

    def cpu(self) -> Reference:
        """The same reference with its tensors on the host (what the validating backends are fed from)."""

        def host(v):
            if isinstance(v, torch.Tensor):
                return v.cpu()
            if isinstance(v, dict):
                return {k: host(x) for k, x in v.items()}
            return tuple(host(x) for x in v) if isinstance(v, tuple) else v

        return Reference(**{k: host(v) for k, v in self.__dict__.items()})

    def describe(self) -> str:
        return f"the fused model's torch modules in float32 on {self.device} (TF32 {'on' if self.tf32 else 'off'})"


SEQUENCE_FRAMES = 4  # frames a cached or controlled bundle is checked on, one after the other


def _seeded(name: str, shape, dtype, g: torch.Generator, nfe: int) -> torch.Tensor:
    if name == "frame_index":  # every slot holding a frame past the first: the cache is read
        return torch.arange(1, nfe + 1)
    if dtype == torch.uint8:
        return torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
    return torch.randn(shape, generator=g).to(dtype)


def validation_maps(control):
    """The maps a ControlNet bundle is checked with: its own preprocessor's, or edges for one whose maps
    come from a video (any maps check that the graph computes what torch does)."""
    from stdtrt.models.control_maps import MapSpec

    if control is None:
        return None
    return control.spec if control.spec.kind != "video" else MapSpec("canny")


@torch.no_grad()
def reference(
    networks, model, plan, cfg, width: int, height: int, style=None, cache=None, control=None
) -> Reference:
    """Run the float32 torch modules (the bundle's networks, and the sequential student of the same fused
    model, plan, prompt, style, guidance, attention cache and ControlNet, with the video noise of cfg.seed)
    on inputs seeded by cfg.seed."""
    from stdtrt.models.control_maps import ControlMaps

    student = Student(model, plan, cfg.prompt, width, height, cfg.negative_prompt, cfg.guidance, style, cache,
                      control)  # fmt: skip
    unet, b = networks.unet, networks.unet.batch
    frames = np.stack(list(sample_frames(b, width, height)))
    z0 = networks.encoder(torch.from_numpy(frames).to(model.device))
    g = torch.Generator().manual_seed(cfg.seed)  # drawn on the CPU: the same inputs on every device
    specs = unet.specs(z0.shape[1:], width, height)
    step_in = {name: _seeded(name, shape, dtype, g, plan.nfe).to(z0.device) for name, shape, dtype in specs}
    step_in["z0"] = z0
    step_out = dict(zip(unet.io()[1], unet(*(step_in[n] for n, _, _ in specs)), strict=True))
    video_noise = make_noise(tuple(z0.shape[1:]), cfg.seed).expand(b, -1, -1, -1)  # what a stream enters with
    sequence, spec = frames, validation_maps(control)
    if unet.layout.clips:  # a video student's slot is one window: its frames as one clip
        window = student.sample(z0.transpose(0, 1)[None], video_noise.transpose(0, 1)[None])
        latents = window[0].transpose(0, 1)
    elif unet.cache is not None or control is not None:  # frame by frame, in order
        sequence = np.stack(list(sample_frames(SEQUENCE_FRAMES, width, height)))
        maps = ControlMaps(spec, width, height) if spec is not None else None
        encoded = networks.encoder(torch.from_numpy(sequence).to(model.device))
        latents = torch.cat([
            student.sample(z[None], video_noise, None, None if maps is None else torch.from_numpy(maps(f)[None]))
            for z, f in zip(encoded, sequence, strict=True)
        ])  # fmt: skip
    else:
        latents = student.sample(z0, video_noise)
    stylized = torch.from_numpy(to_uint8(student.decode(latents)))
    tf32 = bool(torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32)
    return Reference(cfg.seed, frames, z0, step_in, step_out, networks.decoder(z0), stylized, sequence, spec,
                     str(model.device), tf32).cpu()  # fmt: skip


def compare(backend: str, name: str, ours: torch.Tensor, ref: torch.Tensor, relative: float) -> Row:
    """The largest absolute difference against a tolerance relative to the reference's typical magnitude:
    max(1, its root mean square) for latents; for uint8 frames the 0..255 range, plus one level of rounding
    (a value at .5 may round either way)."""
    pixels = ref.dtype == torch.uint8
    ours, ref = ours.detach().float().cpu(), ref.detach().float().cpu()
    if ours.shape != ref.shape:
        raise StdtrtError(f"validation: {name} gives shape {tuple(ours.shape)}, torch {tuple(ref.shape)}")
    scale = 255.0 if pixels else float(ref.pow(2).mean().sqrt())
    tolerance = relative * max(1.0, scale) + (1.0 if pixels else 0.0)
    if not torch.isfinite(ours).all():  # NaN compares false everywhere: say it plainly
        return Row(backend, name, float("inf"), float("inf"), scale, tolerance)
    diff = (ours - ref).abs()
    return Row(backend, name, float(diff.max()), float(diff.mean()), scale, tolerance)


@torch.no_grad()
def check_backend(backend, ref: Reference, graphs: dict, label: str) -> list[Row]:
    """The rows of one loaded backend against the reference: each graph, then whole frames."""

    from stdtrt.models.control_maps import ControlMaps

    tol = {g: TOLERANCES[graphs[g]["precision"]][0] for g in graphs}
    dev = backend.device
    outputs = backend.step(*(ref.step_in[name].to(dev) for name in backend.step_inputs))
    got, want = dict(zip(backend.step_outputs, outputs, strict=True)), ref.step_out
    slots = ref.step_in["slots"].shape[0]
    rows = [
        compare(label, "vae_encoder", backend.encode(torch.from_numpy(ref.frames).to(dev)), ref.z0, tol["vae_encoder"]),
        compare(label, f"unet (stream step, {slots} slots)", got["slots_next"], want["slots_next"], tol["unet"]),
        compare(label, "unet (finished latents)", got["done"], want["done"], tol["unet"]),
    ]  # fmt: skip
    if "cache_next" in got:
        rows.append(
            compare(label, "unet (attention cache)", got["cache_next"], want["cache_next"], tol["unet"])
        )
    if "control_slots_next" in got:  # the maps move with the frames, exactly
        rows.append(compare(label, "unet (control maps' shift)", got["control_slots_next"],
                            want["control_slots_next"], 0.0))  # fmt: skip
    rows.append(
        compare(label, "vae_decoder", backend.decode(ref.z0.to(dev)), ref.decoded, tol["vae_decoder"])
    )
    maps = None if ref.maps is None else ControlMaps(ref.maps, backend.width, backend.height)
    runner = StreamRunner(backend, seed=ref.seed, maps=maps)
    out = [frame for frame, _ in compose_all(runner, ref.sequence)]
    frame_tol = TOLERANCES["fp16" if "fp16" in {e["precision"] for e in graphs.values()} else "fp32"][1]
    rows.append(
        compare(
            label,
            "frames (stream vs sequential torch)",
            torch.from_numpy(np.stack(out)),
            ref.stylized,
            frame_tol,
        )
    )
    return rows


def compose_all(runner, frames: np.ndarray):
    """Frames through a runner's network stages in the calling thread: (frame, tag) in order."""

    return compose([runner.encode, runner.unet, runner.decode])(iter((f, i) for i, f in enumerate(frames)))


def ort_has_cuda() -> bool:
    """Whether this onnxruntime has the CUDA provider (onnxruntime-gpu) and torch sees a GPU."""
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers() and torch.cuda.is_available()


def validation_backends(device: torch.device, build_trt: bool, ort_cuda: bool) -> list[str]:
    """Which backends validate a bundle exported on `device`: on a GPU its GPU backends (onnxruntime's CUDA
    provider where `ort_cuda`, the TensorRT engines where they are built), onnxruntime on the CPU only
    where none of them is there; on the CPU onnxruntime there (and TensorRT's engines, which run only on
    the GPU they were built for)."""
    gpu = (["onnxruntime CUDA"] if ort_cuda and device.type == "cuda" else []) + (
        ["tensorrt"] if build_trt else []
    )
    if device.type == "cuda" and gpu:
        return gpu
    return ["onnxruntime CPU", *gpu]


def onnxruntime_rows(bundle, ref: Reference, backends: list[str], device: torch.device) -> list[Row]:
    """The rows of the onnxruntime backends among `backends` (validation_backends): its CPU provider, its
    CUDA provider on `device`."""
    graphs = bundle.manifest.graphs
    rows = []
    if "onnxruntime CPU" in backends:
        with timed_stage("validation on onnxruntime CPU"):
            cpu = OnnxRuntimeBackend(bundle, device="cpu", threads=torch.get_num_threads(), concurrent=False)
            rows += check_backend(cpu, ref, graphs, "onnxruntime CPU")
    if "onnxruntime CUDA" in backends:
        with timed_stage(f"validation on onnxruntime CUDA ({device})"):
            gpu = OnnxRuntimeBackend(bundle, device=str(device), providers=("CUDAExecutionProvider",))
            rows += check_backend(gpu, ref, graphs, "onnxruntime CUDA")
    return rows


@contextlib.contextmanager
def timed_stage(what: str):
    """A long export stage said when it starts and when it ends, with its time (the log at INFO level)."""
    log.info("%s ...", what)
    start = time.perf_counter()
    yield
    log.info("%s: done in %.1f s", what, time.perf_counter() - start)


def tensorrt_rows(bundle, ref: Reference, device: str) -> list[Row]:
    """The bundle's .plan engines, on the GPU they were built for."""

    with timed_stage("validation on the TensorRT engines"):
        return check_backend(TensorRTBackend(bundle, device), ref, bundle.manifest.graphs, "tensorrt")


def format_table(rows: list[Row], title: str = "validation against torch (float32)") -> str:
    lines = [
        title,
        f"{'backend':<17} {'network':<34} {'max |diff|':>11} {'mean |diff|':>12} {'ref scale':>10} "
        f"{'tolerance':>10}  ok",
    ]
    for r in rows:
        lines.append(
            f"{r.backend:<17} {r.name:<34} {r.max_abs:>11.3e} {r.mean_abs:>12.3e} {r.scale:>10.3g} "
            f"{r.tolerance:>10.2e}  {'yes' if r.ok else 'NO'}"
        )
    return "\n".join(lines)


def check(rows: list[Row]) -> None:
    bad = [r for r in rows if not r.ok]
    if bad:
        r = bad[0]
        raise StdtrtError(
            f"export validation failed: {r.name} on {r.backend} differs from torch by {r.max_abs:.3g} "
            f"(tolerance {r.tolerance:.3g}); the table is logged above and nothing was written"
        )
