"""Validation at export: onnxruntime runs the bundle just written against the torch reference.

Rows: each graph on seeded inputs (a real photograph for the VAE, seeded slots for the UNet), and one whole
stylized frame: the onnxruntime backend through the stream pipe (fill and flush) against NFE sequential
torch student steps (runtime/student.py) on the same frame and noise. Differences are absolute, and the
tolerance is relative to the reference's largest magnitude (at least 1): a wrong timestep, coefficient
or prompt moves outputs by O(0.1 to 1), far over these bounds, while fp32 rounding stays near 1e-5.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import torch

from stdtrt.errors import StdtrtError

log = logging.getLogger(__name__)

# (per graph, whole frame) tolerance by the graph's precision.
TOLERANCES = {"fp32": (1e-3, 1e-2), "fp16": (3e-2, 6e-2)}


@dataclass(frozen=True)
class Row:
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


def compare(name: str, ours: torch.Tensor, ref: torch.Tensor, relative: float) -> Row:
    ours, ref = ours.detach().float().cpu(), ref.detach().float().cpu()
    if ours.shape != ref.shape:
        raise StdtrtError(f"validation: {name} gives shape {tuple(ours.shape)}, torch {tuple(ref.shape)}")
    diff = (ours - ref).abs()
    scale = float(ref.abs().max())
    return Row(name, float(diff.max()), float(diff.mean()), scale, relative * max(1.0, scale))


def format_table(rows: list[Row], title: str = "onnxruntime vs torch") -> str:
    lines = [
        f"{title}",
        f"{'network':<34} {'max |diff|':>11} {'mean |diff|':>12} {'max |ref|':>10} {'tolerance':>10}  ok",
    ]
    for r in rows:
        lines.append(
            f"{r.name:<34} {r.max_abs:>11.3e} {r.mean_abs:>12.3e} {r.scale:>10.3g} {r.tolerance:>10.2e}  "
            f"{'yes' if r.ok else 'NO'}"
        )
    return "\n".join(lines)


@torch.no_grad()
def validate_bundle(bundle, networks, model, seed: int = 0) -> list[Row]:
    """Compare the bundle's graphs (onnxruntime, CPU) with the torch modules they were traced from."""
    from stdtrt.io.samples import sample_frames
    from stdtrt.runtime.backends.onnxruntime import OnnxRuntimeBackend
    from stdtrt.runtime.stream import StreamRunner
    from stdtrt.runtime.student import Student, make_noise, to_tensor

    backend = OnnxRuntimeBackend(bundle, device="cpu", threads=torch.get_num_threads())  # calls one by one
    m, graphs = bundle.manifest, bundle.manifest["graphs"]
    tol = {g: TOLERANCES[graphs[g]["precision"]][0] for g in graphs}
    frame = next(sample_frames(1, bundle.width, bundle.height))  # a real photograph, (H, W, 3) uint8
    image = to_tensor(frame[None], "cpu", torch.float32)
    z0 = networks.encoder(image)
    g = torch.Generator().manual_seed(seed)
    slots = torch.randn((bundle.nfe, *bundle.latent_shape), generator=g)
    rows = [
        compare("vae_encoder", backend.encode(image), z0, tol["vae_encoder"]),
        compare(
            f"unet (stream step, {bundle.nfe} slots)", backend.step(slots), networks.unet(slots), tol["unet"]
        ),
        compare("vae_decoder", backend.decode(z0), networks.decoder(z0), tol["vae_decoder"]),
    ]
    student = Student(
        model, bundle.plan(), m["prompt"], bundle.width, bundle.height, m["negative_prompt"], m["guidance"]
    )
    noise = make_noise(bundle.latent_shape, seed)
    reference = student.decode(student.sample(z0, noise))  # z0: the same VAE encode the student does
    runner = StreamRunner(backend, seed=seed)
    ((latent, _),) = list(runner.unet(runner.encode(iter([(frame, 0)]))))
    frame_tol = TOLERANCES["fp16" if "fp16" in {e["precision"] for e in graphs.values()} else "fp32"][1]
    rows.append(compare("frame (stream vs sequential torch)", backend.decode(latent), reference, frame_tol))
    return rows


def check(rows: list[Row]) -> None:
    bad = [r for r in rows if not r.ok]
    if bad:
        r = bad[0]
        raise StdtrtError(
            f"export validation failed: {r.name} differs from torch by {r.max_abs:.3g} (tolerance "
            f"{r.tolerance:.3g}); the table is logged above and nothing was written"
        )
