"""Validation at export: every backend that can run the bundle here runs it against the torch reference.

The reference is computed once, in float32 on the CPU, from the fused model before any graph is made half
precision: each network on seeded inputs (a sample photograph for the VAE, seeded slots for the UNet), and
one whole stylized frame as NFE sequential torch student steps (runtime/student.py). Then each backend
(onnxruntime on the CPU; onnxruntime's CUDA provider where it is installed; the TensorRT engines once they
are built) runs the same inputs: each graph, and the frame through the stream pipe (fill and flush).
Differences are absolute, and the tolerance is relative to the reference's largest magnitude (at least
1): a wrong timestep, coefficient or prompt moves outputs by O(0.1 to 1), far over these bounds, while
fp32 rounding stays near 1e-5 and fp16 (weights and compute) near 1e-2.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np
import torch

from stdtrt.errors import StdtrtError

log = logging.getLogger(__name__)

# (per graph, whole frame) tolerance by the graph's precision.
TOLERANCES = {"fp32": (1e-3, 1e-2), "fp16": (3e-2, 6e-2)}


@dataclass(frozen=True)
class Row:
    backend: str  # what ran the graph ("onnxruntime CPU", "tensorrt", ...)
    name: str
    max_abs: float
    mean_abs: float
    scale: float  # max |reference|
    tolerance: float  # absolute: relative tolerance x max(1, scale)

    @property
    def ok(self) -> bool:
        return self.max_abs <= self.tolerance

    def as_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


@dataclass
class Reference:
    """Seeded inputs and what the float32 torch modules make of them."""

    seed: int
    frame: np.ndarray  # (H, W, 3) uint8: a sample photograph at the bundle's size
    image: torch.Tensor  # the frame in [-1, 1], (1, 3, H, W)
    slots: torch.Tensor  # seeded slots (NFE, 4, h, w)
    z0: torch.Tensor  # encoder(image)
    slots_next: torch.Tensor  # unet(slots)
    decoded: torch.Tensor  # decoder(z0)
    stylized: torch.Tensor  # the frame through NFE sequential student steps, decoded: (1, 3, H, W)


@torch.no_grad()
def reference(networks, model, plan, cfg, width: int, height: int) -> Reference:
    """Run the float32 torch modules (the bundle's networks, and the sequential student of the same fused
    model, plan, prompt and guidance) on inputs seeded by cfg.seed."""
    from stdtrt.io.samples import sample_frames
    from stdtrt.runtime.student import Student, make_noise, to_tensor

    student = Student(model, plan, cfg.prompt, width, height, cfg.negative_prompt, cfg.guidance)
    seed, nfe = cfg.seed, plan.nfe

    frame = next(sample_frames(1, width, height))
    image = to_tensor(frame[None], "cpu")
    z0 = networks.encoder(image)
    g = torch.Generator().manual_seed(seed)
    slots = torch.randn((nfe, *z0.shape[1:]), generator=g)
    noise = make_noise(tuple(z0.shape[1:]), seed)
    stylized = student.decode(student.sample(z0, noise))  # z0: the same VAE encode the student does
    return Reference(
        seed, frame, image, slots, z0, networks.unet(slots), networks.decoder(z0), stylized.float().cpu()
    )


def compare(backend: str, name: str, ours: torch.Tensor, ref: torch.Tensor, relative: float) -> Row:
    ours, ref = ours.detach().float().cpu(), ref.detach().float().cpu()
    if ours.shape != ref.shape:
        raise StdtrtError(f"validation: {name} gives shape {tuple(ours.shape)}, torch {tuple(ref.shape)}")
    diff = (ours - ref).abs()
    if not torch.isfinite(ours).all():  # NaN compares false everywhere: say it plainly
        return Row(backend, name, float("inf"), float("inf"), float(ref.abs().max()), relative)
    scale = float(ref.abs().max())
    return Row(backend, name, float(diff.max()), float(diff.mean()), scale, relative * max(1.0, scale))


@torch.no_grad()
def check_backend(backend, ref: Reference, graphs: dict, label: str) -> list[Row]:
    """The rows of one loaded backend against the reference: each graph, then one whole frame."""
    from stdtrt.runtime.stream import StreamRunner

    tol = {g: TOLERANCES[graphs[g]["precision"]][0] for g in graphs}
    rows = [
        compare(label, "vae_encoder", backend.encode(ref.image.to(backend.device)), ref.z0, tol["vae_encoder"]),
        compare(
            label, f"unet (stream step, {ref.slots.shape[0]} slots)", backend.step(ref.slots.to(backend.device)),
            ref.slots_next, tol["unet"],
        ),
        compare(label, "vae_decoder", backend.decode(ref.z0.to(backend.device)), ref.decoded, tol["vae_decoder"]),
    ]  # fmt: skip
    runner = StreamRunner(backend, seed=ref.seed)
    ((latent, _),) = list(runner.unet(runner.encode(iter([(ref.frame, 0)]))))
    frame_tol = TOLERANCES["fp16" if "fp16" in {e["precision"] for e in graphs.values()} else "fp32"][1]
    rows.append(
        compare(label, "frame (stream vs sequential torch)", backend.decode(latent), ref.stylized, frame_tol)
    )
    return rows


def onnxruntime_rows(bundle, ref: Reference) -> list[Row]:
    """onnxruntime on the CPU, and with its CUDA provider when this onnxruntime has one and a GPU is here."""
    import onnxruntime as ort

    from stdtrt.runtime.backends.onnxruntime import OnnxRuntimeBackend

    graphs = bundle.manifest["graphs"]
    cpu = OnnxRuntimeBackend(bundle, device="cpu", threads=torch.get_num_threads(), concurrent=False)
    rows = check_backend(cpu, ref, graphs, "onnxruntime CPU")
    if "CUDAExecutionProvider" in ort.get_available_providers() and torch.cuda.is_available():
        gpu = OnnxRuntimeBackend(bundle, device="cuda", providers=("CUDAExecutionProvider",))
        rows += check_backend(gpu, ref, graphs, "onnxruntime CUDA")
    return rows


def tensorrt_rows(bundle, ref: Reference, device: str) -> list[Row]:
    """The bundle's .plan engines, on the GPU they were built for."""
    from stdtrt.runtime.backends.tensorrt import TensorRTBackend

    return check_backend(TensorRTBackend(bundle, device), ref, bundle.manifest["graphs"], "tensorrt")


def format_table(rows: list[Row], title: str = "validation against torch (float32)") -> str:
    lines = [
        title,
        f"{'backend':<17} {'network':<34} {'max |diff|':>11} {'mean |diff|':>12} {'max |ref|':>10} "
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
