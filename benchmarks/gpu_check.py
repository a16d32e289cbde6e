"""GPU check: the torch CUDA path of stdtrt's stream runtime against diffusers' img2img pipeline, one card.

What it times (network work per frame, steady state, no video I/O, fp16, SD-1.5-sized UNet with random
weights = the `random-sd15` preset, 512x512, NFE 4, guidance 1):
  - stdtrt torch eager:      VAE encode + one stream UNet step (batch NFE) + VAE decode
  - stdtrt torch CUDA graph: the same three networks captured once and replayed
  - stdtrt onnxruntime CUDA: the exported bundle (only when onnxruntime-gpu is installed)
  - diffusers img2img:       StableDiffusionImg2ImgPipeline + TCDScheduler over the same timesteps,
                             strength 1.0, eta 0, prompt embeddings passed in
and writes benchmarks/results/gpu-<card>.json (and prints a table).

Running it on a lent GPU machine: the machine has torch with CUDA but no diffusers, and nothing outside it
can be reached. Carry wheels with the working tree (`.whl/` is git-ignored, so name it in `carry`; the
carry limit is 64 MiB). On a networked machine with the GPU machine's Python version:
    pip download --no-deps -d .whl diffusers transformers tokenizers huggingface_hub safetensors regex
(about 25 MB; add what `python -c "import diffusers, transformers"` on the GPU machine still reports
missing). The onnxruntime row also needs onnx, onnxscript, onnxruntime-gpu (~200 MB: too large to carry)
and scikit-image; without them it is skipped with the reason. Then on the GPU machine:
    pip install --no-deps .whl/*.whl && python benchmarks/gpu_check.py   # it puts the repository on sys.path
`--model tiny-sd --size 64 --device cpu` runs the same code paths here (no CUDA graphs) as a smoke test.
No test depends on this script.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stdtrt import schedule  # noqa: E402
from stdtrt.models.load import load_model  # noqa: E402
from stdtrt.runtime.backends.torch import TorchBackend  # noqa: E402
from stdtrt.runtime.stream import StreamState  # noqa: E402
from stdtrt.runtime.student import make_noise  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_frames(fn, frames: int, device) -> float:
    """ms per frame of fn() over `frames` calls, after 3 warm-up calls."""
    for _ in range(3):
        fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(frames):
        fn()
    sync(device)
    return 1000 * (time.perf_counter() - start) / frames


def stream_frame_fn(backend, image):
    """One frame through the stream runtime: encode, one UNet step (pipe already full), decode."""
    state = StreamState(backend, make_noise(backend.latent_shape, 0).to(backend.device))
    for i in range(backend.plan.nfe):  # fill the pipe
        state.push(backend.encode(image), i)
    tag = [backend.plan.nfe]

    def frame():
        (done,) = state.push(backend.encode(image), tag[0])
        tag[0] += 1
        return backend.decode(done[0])

    return frame


class GraphedBackend:
    """A torch backend whose three networks are captured as CUDA graphs (static shapes) and replayed."""

    def __init__(self, backend):
        self.inner, self.plan, self.latent_shape = backend, backend.plan, backend.latent_shape
        self.device, self.width, self.height = backend.device, backend.width, backend.height
        shapes = {
            "encode": (1, 3, backend.height, backend.width),
            "step": (backend.plan.nfe, *backend.latent_shape),
            "decode": (1, *backend.latent_shape),
        }
        self.graphs = {name: self._capture(getattr(backend, name), shape) for name, shape in shapes.items()}

    def _capture(self, fn, shape):
        static_in = torch.zeros(shape, device=self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(3):
                fn(static_in)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = fn(static_in)
        return graph, static_in, static_out

    def _run(self, name, x):
        graph, static_in, static_out = self.graphs[name]
        static_in.copy_(x)
        graph.replay()
        return static_out.clone()

    def encode(self, x):
        return self._run("encode", x)

    def step(self, x):
        return self._run("step", x)

    def decode(self, x):
        return self._run("decode", x)


def diffusers_frame_fn(model, plan, prompt: str, size: int):
    from stdtrt.eval.bench import img2img_pipeline

    pipe, kwargs = img2img_pipeline(model, plan, prompt, "", 1.0, size, size)
    image = torch.rand(1, 3, size, size, device=model.device, dtype=model.dtype)  # diffusers takes [0, 1]
    return lambda: pipe(image=image, output_type="pt", **kwargs).images


def ort_cuda_frame_fn(model_name: str, size: int, prompt: str, folder: Path):
    try:
        import onnxruntime as ort
    except ImportError:
        return None, "onnxruntime is not installed"
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return None, "onnxruntime has no CUDA provider here"
    from stdtrt.bundle.manifest import read_bundle
    from stdtrt.config import ExportConfig
    from stdtrt.export.export import export_bundle
    from stdtrt.runtime.backends.onnxruntime import OnnxRuntimeBackend

    cfg = ExportConfig(model=model_name, prompt=prompt, width=size, height=size, precision="fp16",
                       tensorrt=False, out=str(folder / "bundle"))  # fmt: skip
    backend = OnnxRuntimeBackend(read_bundle(export_bundle(cfg, progress=False).path), "cuda")
    image = torch.rand(1, 3, size, size, device=backend.device) * 2 - 1
    return stream_frame_fn(backend, image), backend.describe()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="random-sd15")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--nfe", type=int, default=4)
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--no-ort", action="store_true", help="skip the onnxruntime CUDA export and run")
    args = ap.parse_args()
    device = torch.device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    model = load_model(args.model, device=device, dtype=dtype)
    plan = schedule.student_plan(model.alphas_cumprod(), 0.75, args.nfe)
    prompt = "an oil painting"
    backend = TorchBackend.from_model(model, plan, prompt, "", 1.0, args.size, args.size)
    image = torch.rand(1, 3, args.size, args.size, device=device) * 2 - 1
    rows = {"stdtrt torch eager": time_frames(stream_frame_fn(backend, image), args.frames, device)}
    if device.type == "cuda":
        graphed = GraphedBackend(backend)
        rows["stdtrt torch CUDA graphs"] = time_frames(stream_frame_fn(graphed, image), args.frames, device)
    rows["diffusers img2img (TCD)"] = time_frames(
        diffusers_frame_fn(model, plan, prompt, args.size), args.frames, device
    )
    notes = {}
    if not args.no_ort and device.type == "cuda":
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            fn, notes["onnxruntime"] = ort_cuda_frame_fn(args.model, args.size, prompt, Path(tmp))
            if fn is not None:
                rows["stdtrt onnxruntime CUDA"] = time_frames(fn, args.frames, device)
    base = rows["diffusers img2img (TCD)"]
    print(f"{args.model} {args.size}x{args.size}, nfe {args.nfe}, {str(dtype)[6:]} on {card}")
    for name, ms in rows.items():
        print(f"  {name:<28} {ms:8.1f} ms/frame  {1000 / ms:7.2f} fps  {base / ms:5.2f}x diffusers")
    RESULTS.mkdir(exist_ok=True)
    slug = re.sub(r"[^a-z0-9]+", "-", card.lower()).strip("-")
    out = RESULTS / f"gpu-{slug}-{args.model}-{args.size}.json"
    result = {"card": card, "model": args.model, "size": args.size, "nfe": args.nfe, "dtype": str(dtype),
              "torch": torch.__version__, "ms_per_frame": rows, "notes": notes}  # fmt: skip
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
