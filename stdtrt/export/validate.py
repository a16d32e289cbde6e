"""Validation at export: every backend that can run the bundle here runs it against the torch reference.

The reference is computed once, in float32 on the CPU, from the fused model before any graph is made half
precision: each network on seeded inputs (a sample photograph for the VAE, seeded slots for the UNet), and
one whole stylized frame as NFE sequential torch student steps (runtime/student.py). Then each backend
(onnxruntime on the CPU; onnxruntime's CUDA provider where it is installed; the TensorRT engines once they
are built) runs the same inputs: each graph, and the frame through the stream pipe (fill and flush).
The largest absolute difference is held to a tolerance relative to the reference's root mean square (at
least 1; frames: 0..255 levels plus one of rounding): fp32 rounding stays near 1e-5 and fp16 (weights and
compute) near 1e-2, while a timestep one grid step off, or another prompt, moves the UNet's output by 3 to
5 times the fp16 bound even on the random tiny test model (tests/test_export.py checks that validation
catches both).
"""

from __future__ import annotations

import logging
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
    slots: torch.Tensor  # seeded slots (NFE*B, 4, h, w)
    noise: torch.Tensor  # seeded (B, 4, h, w)
    z0: torch.Tensor  # encoder(frames)
    slots_next: torch.Tensor  # unet(slots, z0, noise)
    done: torch.Tensor
    decoded: torch.Tensor  # decoder(z0), uint8 (B, H, W, 3)
    stylized: torch.Tensor  # each frame through NFE sequential student steps, decoded: uint8 (B, H, W, 3)
    sequence: np.ndarray  # the frames `stylized` was made of: `frames`, or with cached attention several
    cache: tuple = ()  # with cached attention: (seeded cache, frame index) the step ran with
    cache_next: torch.Tensor | None = None


CACHED_FRAMES = 4  # frames a cached-attention bundle is checked on: the cache is written, then read


@torch.no_grad()
def reference(networks, model, plan, cfg, width: int, height: int, style=None, cache=None) -> Reference:
    """Run the float32 torch modules (the bundle's networks, and the sequential student of the same fused
    model, plan, prompt, style, guidance and attention cache, with the video noise of cfg.seed) on inputs
    seeded by cfg.seed."""

    student = Student(model, plan, cfg.prompt, width, height, cfg.negative_prompt, cfg.guidance, style, cache)
    b = networks.unet.batch
    frames = np.stack(list(sample_frames(b, width, height)))
    pixels = torch.from_numpy(frames)
    z0 = networks.encoder(pixels)
    g = torch.Generator().manual_seed(cfg.seed)
    slots = torch.randn((plan.nfe * b, *z0.shape[1:]), generator=g)
    noise = torch.randn(z0.shape, generator=g)
    state, cache_next = (), None
    if networks.unet.cache is not None:  # a seeded cache, every slot holding a frame past the first
        rows, size, dtype = networks.unet.cache_spec()
        state = (torch.randn((rows, size), generator=g).to(dtype), torch.arange(1, plan.nfe + 1))
        slots_next, done, cache_next = networks.unet(slots, z0, noise, *state)
    else:
        slots_next, done = networks.unet(slots, z0, noise)
    video_noise = make_noise(tuple(z0.shape[1:]), cfg.seed).expand(b, -1, -1, -1)  # what a stream enters with
    sequence = frames
    if networks.unet.clips:  # a video student's slot is one window: its frames as one clip
        window = student.sample(z0.transpose(0, 1)[None], video_noise.transpose(0, 1)[None])
        latents = window[0].transpose(0, 1)
    elif networks.unet.cache is not None:  # frame by frame, each attending to those before it
        sequence = np.stack(list(sample_frames(CACHED_FRAMES, width, height)))
        encoded = networks.encoder(torch.from_numpy(sequence))
        latents = torch.cat([student.sample(z[None], video_noise) for z in encoded])
    else:
        latents = student.sample(z0, video_noise)
    stylized = torch.from_numpy(to_uint8(student.decode(latents)))
    return Reference(cfg.seed, frames, slots, noise, z0, slots_next, done, networks.decoder(z0), stylized,
                     sequence, state, cache_next)  # fmt: skip


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

    tol = {g: TOLERANCES[graphs[g]["precision"]][0] for g in graphs}
    dev = backend.device
    outputs = backend.step(
        ref.slots.to(dev), ref.z0.to(dev), ref.noise.to(dev), *(t.to(dev) for t in ref.cache)
    )
    rows = [
        compare(label, "vae_encoder", backend.encode(torch.from_numpy(ref.frames).to(dev)), ref.z0, tol["vae_encoder"]),
        compare(label, f"unet (stream step, {ref.slots.shape[0]} slots)", outputs[0], ref.slots_next, tol["unet"]),
        compare(label, "unet (finished latents)", outputs[1], ref.done, tol["unet"]),
        compare(label, "vae_decoder", backend.decode(ref.z0.to(dev)), ref.decoded, tol["vae_decoder"]),
    ]  # fmt: skip
    if ref.cache_next is not None:
        rows.insert(3, compare(label, "unet (attention cache)", outputs[2], ref.cache_next, tol["unet"]))
    runner = StreamRunner(backend, seed=ref.seed)
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


def onnxruntime_rows(bundle, ref: Reference) -> list[Row]:
    """onnxruntime on the CPU, and with its CUDA provider when this onnxruntime has one and a GPU is here."""
    import onnxruntime as ort

    graphs = bundle.manifest["graphs"]
    cpu = OnnxRuntimeBackend(bundle, device="cpu", threads=torch.get_num_threads(), concurrent=False)
    rows = check_backend(cpu, ref, graphs, "onnxruntime CPU")
    if "CUDAExecutionProvider" in ort.get_available_providers() and torch.cuda.is_available():
        gpu = OnnxRuntimeBackend(bundle, device="cuda", providers=("CUDAExecutionProvider",))
        rows += check_backend(gpu, ref, graphs, "onnxruntime CUDA")
    return rows


def tensorrt_rows(bundle, ref: Reference, device: str) -> list[Row]:
    """The bundle's .plan engines, on the GPU they were built for."""

    return check_backend(TensorRTBackend(bundle, device), ref, bundle.manifest["graphs"], "tensorrt")


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
