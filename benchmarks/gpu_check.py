"""GPU check: every stdtrt path that can run on one card, checked and timed in one call, against diffusers'
img2img pipeline in the same precision. No test depends on it.

Rows (SD-1.5-sized UNet with random weights = the `random-sd15` preset, 512x512, NFE 4, guidance 1), for
each precision in --precisions (fp16 and bf16):
  - torch eager (stream form: VAE encode + one UNet call of batch NFE + VAE decode per frame)
  - torch channels_last + CUDA graphs, and torch.compile + CUDA graphs (--compile-precisions): each
    checked against eager on the same seeded frame (max |diff|, relative to the output's range)
  - the sequential torch student (`--model` with --gamma > 0: NFE UNet calls of batch 1 per frame)
  - diffusers img2img (StableDiffusionImg2ImgPipeline + TCDScheduler over the same timesteps)
then the video student (the model with its motion adapter, `random-motion-sd15`; --motion-precisions) in
windows of --window frames: the sequential motion student, and the torch backend's stream form (NFE
windows in flight) eager, with CUDA graphs, and with CUDA graphs on three lanes as stylize-video runs it
(run_pipeline: the overlap blended on the device), each checked against the sequential one ("vs eager" in
the printed line is against that reference here);
then, where installed, onnxruntime's CUDA provider and the TensorRT engines on an exported fp16 bundle
(the export validates on the GPU: its float32 reference there with TF32 off, its rows the GPU backends').
Also per precision: the real three-lane `run_pipeline` against the same stages in one thread (frames must be
equal; per-stage ms from CUDA events on each lane beside the isolated calls), and torch.compile's
`max-autotune-no-cudagraphs` mode against its default (stdtrt keeps the default until this row says
otherwise). Per row: ms per frame and per stage, fps, the
ratio against diffusers, and the check. The JSON (benchmarks/results/gpu-<card>-<model>-<size>.json) is
rewritten after every row, and a failing row is recorded with its error while the others go on.

On a lent GPU machine (torch with CUDA, transformers, peft, accelerate, onnx, onnxscript, onnxruntime for
the CPU, opencv; no diffusers, no PyAV, no TensorRT, no onnxruntime-gpu), carry diffusers and the one
package of its own it needs that is missing there. Here, in the repository root, once:
    echo /.whl/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 -d .whl diffusers==0.42.1 importlib_metadata==8.7.0
and then the one command, with `.whl` in the call's carry (a few MB; this script puts the repository on
sys.path and imports nothing that needs PyAV):
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
        && PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --out $OUT
It finishes within 8 minutes on one H100 or H200, the model builds included (--budget-s stops starting
new rows past its budget). `--model tiny-sd --size 64 --device cpu --precisions fp32` runs the same code
here as a smoke test (no CUDA graphs).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import re
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stdtrt import schedule  # noqa: E402
from stdtrt.export.validate import TOLERANCES, compare  # noqa: E402
from stdtrt.models.load import load_model  # noqa: E402
from stdtrt.runtime.backends.torch import TorchBackend  # noqa: E402
from stdtrt.runtime.stream import StreamState  # noqa: E402
from stdtrt.runtime.student import Student, VideoNoise  # noqa: E402
from stdtrt.schedule import make_noise  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
PROMPT = "an oil painting"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn, frames: int, device: torch.device) -> float:
    """ms per call of fn() over `frames` calls, after 3 warm-up calls."""
    for _ in range(3):
        fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(frames):
        fn()
    sync(device)
    return 1000 * (time.perf_counter() - start) / frames


class StreamFrame:
    """One group of B frames through the stream runtime with the pipe full: encode, one UNet step, decode
    (uint8 frames in and out, on the device: the per-frame work of a video without its I/O)."""

    def __init__(self, backend, frames: torch.Tensor):
        self.backend, self.frames = backend, frames
        noise = VideoNoise(backend.latent_shape, 0, device=backend.device)
        self.state = StreamState(backend, noise.take)
        tags = list(range(backend.batch))
        for _ in range(backend.plan.nfe):  # fill the pipe
            self.state.push(backend.encode(frames), tags)

    def __call__(self) -> torch.Tensor:
        ((latents, _),) = self.state.push(self.backend.encode(self.frames), list(range(self.backend.batch)))
        return self.backend.decode(latents)


def stage_ms(backend, frames, count, device) -> dict:
    ex = backend.example_inputs()
    z = backend.encode(frames)
    return {
        "vae_encode": time_ms(lambda: backend.encode(frames), count, device),
        "unet": time_ms(lambda: backend.step(*ex["step"]), count, device),
        "vae_decode": time_ms(lambda: backend.decode(z), count, device),
    }


def check(ours: torch.Tensor, ref: torch.Tensor, precision: str) -> dict:
    """The export validation's own comparison (frames: 0..255 levels) and whole-frame tolerance."""
    row = compare("", "", ours, ref, TOLERANCES[precision if precision in TOLERANCES else "fp16"][1])
    return {"max_abs_vs_eager": row.max_abs, "tolerance": row.tolerance, "check_ok": row.ok}


class Report:
    """Rows, written to the JSON after every one (a failing row is recorded, the others go on)."""

    def __init__(self, path: Path, setup: dict, budget_s: float):
        self.path, self.setup, self.rows, self.start, self.budget_s = (
            path,
            setup,
            [],
            time.perf_counter(),
            budget_s,
        )
        self.baseline: dict[str, float] = {}  # precision -> diffusers ms per frame

    def over_budget(self) -> bool:
        return time.perf_counter() - self.start > self.budget_s

    def row(self, name: str, precision: str, fn) -> dict | None:
        """Run fn() -> dict (ms_per_frame and more); record it, or its error."""
        if self.over_budget():
            self.rows.append(
                {"name": name, "precision": precision, "status": "skipped", "error": "over budget"}
            )
            self.write()
            return None
        start = time.perf_counter()
        try:
            result = {"status": "ok", **fn()}
        except Exception as exc:  # recorded, and the next row runs
            result = {"status": "failed", "error": f"{type(exc).__name__}: {str(exc)[:500]}",
                      "traceback": traceback.format_exc()[-2000:]}  # fmt: skip
        result = {
            "name": name,
            "precision": precision,
            **result,
            "seconds": round(time.perf_counter() - start, 1),
        }
        ms = result.get("ms_per_frame")
        if ms:
            result["fps"] = 1000 / ms
            if precision in self.baseline:
                result["vs_diffusers"] = self.baseline[precision] / ms
        self.rows.append(result)
        self.write()
        self.print(result)
        return result

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.partial")
        total = round(time.perf_counter() - self.start, 1)
        tmp.write_text(json.dumps({**self.setup, "seconds": total, "rows": self.rows}, indent=2) + "\n")
        os.replace(tmp, self.path)

    @staticmethod
    def print(r: dict) -> None:
        if r["status"] != "ok":
            print(
                f"  {r['name']:<44} {r['precision']:<5} {r['status'].upper()}: {r.get('error', '')}",
                flush=True,
            )
            return
        extra = ""
        if "ms_per_frame" in r:
            extra = f"{r['ms_per_frame']:8.2f} ms/frame {r['fps']:8.1f} fps"
            if "vs_diffusers" in r:
                extra += f" {r['vs_diffusers']:6.2f}x diffusers"
        if "stages_ms" in r:
            extra += "  (" + ", ".join(f"{k} {v:.2f}" for k, v in r["stages_ms"].items()) + " ms)"
        if "max_abs_vs_eager" in r:
            extra += f"  vs eager {r['max_abs_vs_eager']:.2e} {'ok' if r['check_ok'] else 'OVER TOLERANCE'}"
        print(f"  {r['name']:<44} {r['precision']:<5} {extra}  [{r['seconds']:.0f} s]", flush=True)


def torch_rows(report: Report, args, precision: str, device: torch.device) -> None:
    start = time.perf_counter()
    model = load_model(args.model, device=device, precision=precision)
    report.rows.append({"name": "model build + placement", "precision": precision, "status": "ok",
                        "seconds": round(time.perf_counter() - start, 1), "placement": model.placement.as_dict()})  # fmt: skip
    report.write()
    plan = schedule.student_plan(model.alphas_cumprod(), 0.75, args.nfe)
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (1, args.size, args.size, 3), generator=g, dtype=torch.uint8).to(device)
    image = frames.permute(0, 3, 1, 2).float() / 127.5 - 1  # the student's [-1, 1]

    def diffusers():
        from stdtrt.eval.baseline import img2img_pipeline

        pipe, kwargs = img2img_pipeline(model, plan, PROMPT, "", 1.0, args.size, args.size)
        pixels = (image + 1) / 2  # diffusers takes [0, 1]
        ms = time_ms(lambda: pipe(image=pixels, output_type="pt", **kwargs).images, args.frames, device)
        model.place(model.placement)  # diffusers' SDXL pipelines move the VAE's dtype; put it back
        return {"ms_per_frame": ms, "describe": f"{type(pipe).__name__} + TCDScheduler, {plan.nfe} steps"}

    base = report.row("diffusers img2img (TCD)", precision, diffusers)
    if base and base["status"] == "ok":
        report.baseline[precision] = base["ms_per_frame"]
    reference = {}

    def run(backend):
        frame = StreamFrame(backend, frames)
        out = frame()
        ms = time_ms(frame, args.frames, device)
        return out, {"ms_per_frame": ms, "stages_ms": stage_ms(backend, frames, args.frames, device),
                     "describe": backend.describe()}  # fmt: skip

    def eager_row():  # first: the speed-ups below change the model's memory format in place
        eager = TorchBackend.from_model(model, plan, PROMPT, "", 1.0, args.size, args.size,
                                        cuda_graphs=False, channels_last=False)  # fmt: skip
        out, row = run(eager)
        reference["frame"] = out
        return row

    report.row("torch eager, stream form", precision, eager_row)
    variants = [("torch channels_last + CUDA graphs", {"cuda_graphs": True, "channels_last": True})]
    if precision in args.compile_precisions:
        variants.append(("torch compile + channels_last + CUDA graphs",
                         {"compile": True, "cuda_graphs": True, "channels_last": True}))  # fmt: skip
    for name, speed in variants:

        def fast(speed=speed):
            t = time.perf_counter()
            backend = TorchBackend.from_model(model, plan, PROMPT, "", 1.0, args.size, args.size, **speed)
            out, row = run(backend)
            row["load_s"] = time.perf_counter() - t
            if "frame" in reference:
                row.update(check(out, reference["frame"], precision))
            return row

        report.row(name, precision, fast)

    def lanes():
        """The real three-lane run_pipeline (a thread and a CUDA stream per network) against the same stages
        composed in one thread: the frames must be equal; the per-stage times are CUDA events per lane."""
        import numpy as np

        from stdtrt.runtime.pipeline import StageTimes, compose, run_pipeline
        from stdtrt.runtime.stream import StreamRunner

        backend = TorchBackend.from_model(model, plan, PROMPT, "", 1.0, args.size, args.size)
        g = np.random.default_rng(0)
        items = [
            (g.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8), i) for i in range(args.frames)
        ]
        one = StreamRunner(backend, seed=1)
        single = list(compose([one.encode, one.unet, one.decode])(iter(items)))
        times = StageTimes()
        runner = StreamRunner(backend, seed=1, times=times)
        got = []
        sync(device)
        t = time.perf_counter()
        run_pipeline(iter(items), runner.stages(), got.append, queue_size=8)
        sync(device)
        ms = 1000 * (time.perf_counter() - t) / len(items)
        same = [t for _, t in got] == [t for _, t in single] and all(
            np.array_equal(a, b) for (a, _), (b, _) in zip(got, single, strict=True)
        )
        return {"ms_per_frame": ms, "frames_equal_single_thread": same, "stages_ms_cuda_events": times.ms_per_call(),
                "clock": dict(times.clock), "stages_ms": stage_ms(backend, frames, args.frames, device),
                "describe": f"run_pipeline, 3 lanes: {backend.describe()}"}  # fmt: skip

    report.row("three CUDA lanes (run_pipeline) vs one thread", precision, lanes)

    if precision in args.compile_precisions:  # inductor's mode: kept at its default unless this row wins

        def compile_modes():
            out = {}
            for mode in (None, "max-autotune-no-cudagraphs"):
                t = time.perf_counter()
                backend = TorchBackend.from_model(model, plan, PROMPT, "", 1.0, args.size, args.size, compile=True,
                                                  cuda_graphs=True, channels_last=True, compile_mode=mode)  # fmt: skip
                frame, row = run(backend)
                row["load_s"] = time.perf_counter() - t
                if "frame" in reference:
                    row.update(check(frame, reference["frame"], precision))
                out[mode or "default"] = row
            return {"ms_per_frame": out["max-autotune-no-cudagraphs"]["ms_per_frame"], "modes": out,
                    "default_over_autotune": out["default"]["ms_per_frame"] / out["max-autotune-no-cudagraphs"]["ms_per_frame"],
                    "describe": "torch.compile max-autotune-no-cudagraphs (ms_per_frame) against the default mode"}  # fmt: skip

        report.row("torch compile: max-autotune-no-cudagraphs vs default", precision, compile_modes)

    def sequential():
        student = Student(model, plan, PROMPT, args.size, args.size)
        z0, noise = student.encode(image), make_noise(student.latent_shape, 0).to(device)
        return {"ms_per_frame": time_ms(lambda: student.decode(student.sample(z0, noise)), args.frames, device),
                "describe": f"{plan.nfe} sequential UNet calls of batch 1 (--gamma > 0 path)"}  # fmt: skip

    report.row("torch sequential student (--model images, --gamma > 0)", precision, sequential)


MOTION_FOR = {"random-sd15": "random-motion-sd15", "tiny-sd": "tiny-motion"}  # the adapter each base takes


def motion_rows(report: Report, args, precision: str, device: torch.device) -> None:
    """The video student (the model with its motion adapter, random weights) in windows of --window frames
    overlapping by a quarter: the torch backend's stream form (NFE windows in flight; eager, and CUDA graphs
    + channels_last) checked against the sequential motion student on the same frames."""
    import numpy as np

    from stdtrt.config import resolve_overlap
    from stdtrt.runtime.pipeline import run_pipeline
    from stdtrt.runtime.windows import WindowRunner

    if args.model not in MOTION_FOR:
        return
    w = args.window
    o = resolve_overlap(w, None)  # stylize-video's default
    start = time.perf_counter()
    model = load_model(args.model, device=device, precision=precision, motion_adapter=MOTION_FOR[args.model])
    report.rows.append({"name": "motion model build + placement", "precision": precision, "status": "ok",
                        "seconds": round(time.perf_counter() - start, 1)})  # fmt: skip
    report.write()
    plan = schedule.student_plan(model.alphas_cumprod(), 0.75, args.nfe)
    count = (args.nfe + 2) * (w - o) + o  # enough windows for a steady state past the fill
    g = np.random.default_rng(0)
    frames = [g.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8) for _ in range(count)]
    reference = {}

    def run(engine, lanes: bool = False) -> dict:
        runner = WindowRunner(engine, w, o)

        def frames_out(n: int) -> list:  # in this thread, or as stylize-video runs it (a thread and a
            items = ((f, i) for i, f in enumerate(frames[:n]))  # CUDA lane per stage on a GPU)
            if not lanes:
                return [frame for frame, _ in runner.stylize(items)]
            out: list = []
            run_pipeline(items, runner.stages(), lambda item: out.append(item[0]))
            return out

        frames_out(w + 1)  # warm-up (and graph capture)
        sync(device)
        t = time.perf_counter()
        out = frames_out(count)
        sync(device)
        ms = 1000 * (time.perf_counter() - t) / count
        return {"ms_per_frame": ms, "describe": runner.describe(), "frames": count, "_out": out}

    def sequential():
        row = run(Student(model, plan, PROMPT, args.size, args.size))
        reference["frames"] = torch.from_numpy(np.stack(row.pop("_out")))
        return row

    report.row(f"motion: sequential student, windows of {w}", precision, sequential)
    graphs = {"cuda_graphs": True, "channels_last": True}
    for name, speed, lanes in (
        ("eager", {}, False),
        ("channels_last + CUDA graphs", graphs, False),
        ("channels_last + CUDA graphs, three lanes (run_pipeline)", graphs, True),
    ):

        def stream(speed=speed, lanes=lanes):
            backend = TorchBackend.from_model(model, plan, PROMPT, "", 1.0, args.size, args.size, batch=w,
                                              **{"cuda_graphs": False, "channels_last": False, **speed})  # fmt: skip
            row = run(backend, lanes)
            out = torch.from_numpy(np.stack(row.pop("_out")))
            if "frames" in reference:
                row.update(check(out, reference["frames"], precision))
            return row

        report.row(f"motion: torch stream form {name}, windows of {w}", precision, stream)


def bundle_rows(report: Report, args, device: torch.device) -> None:
    """onnxruntime CUDA and TensorRT on an exported fp16 bundle, where they are installed."""
    import importlib.util

    have_trt = importlib.util.find_spec("tensorrt") is not None
    try:
        import onnxruntime as ort

        have_ort_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    except ImportError:
        have_ort_cuda = False
    if not (have_trt or have_ort_cuda):
        report.rows.append({"name": "onnxruntime CUDA / TensorRT", "precision": "fp16", "status": "skipped",
                            "error": "neither onnxruntime-gpu nor tensorrt is installed here"})  # fmt: skip
        report.write()
        return
    from stdtrt.bundle.manifest import read_bundle
    from stdtrt.config import ExportConfig
    from stdtrt.export.export import export_bundle

    folder = Path(tempfile.mkdtemp(prefix="stdtrt-gpu-check."))
    bundle = {}

    def export():
        cfg = ExportConfig(model=args.model, prompt=PROMPT, width=args.size, height=args.size, nfe=args.nfe,
                           precision="fp16", tensorrt=have_trt, out=str(folder / "bundle"))  # fmt: skip
        result = export_bundle(cfg, progress=False)
        bundle["b"] = read_bundle(result.path)
        validation = bundle["b"].manifest.validation  # on the GPU: the reference and the backends there
        return {"export_s": result.seconds, "stages": result.stages, "tensorrt": result.tensorrt,
                "validation": result.table, "reference": validation["reference"],
                "validated_by": sorted({r["backend"] for r in validation["rows"]})}  # fmt: skip

    report.row("export fp16 bundle (validated)", "fp16", export)
    if "b" not in bundle:
        return
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (1, args.size, args.size, 3), generator=g, dtype=torch.uint8).to(device)
    for name, kind in (("onnxruntime CUDA provider", "ort"), ("TensorRT engines", "trt")):
        if (kind == "ort" and not have_ort_cuda) or (kind == "trt" and not have_trt):
            continue

        def timed(kind=kind):
            from stdtrt.runtime.backends import load_backend

            backend = load_backend(bundle["b"], "onnxruntime" if kind == "ort" else "tensorrt", "cuda")
            frame = StreamFrame(backend, frames)
            return {"ms_per_frame": time_ms(frame, args.frames, device),
                    "stages_ms": stage_ms(backend, frames, args.frames, device), "describe": backend.describe()}  # fmt: skip

        report.row(name, "fp16", timed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="random-sd15")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--nfe", type=int, default=4)
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--window", type=int, default=16, help="the video student's window (motion rows)")
    ap.add_argument("--motion-precisions", default="fp16", help="precisions whose motion rows run ('' none)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--precisions", default="fp16,bf16")
    ap.add_argument("--compile-precisions", default="fp16", help="precisions whose torch.compile row runs")
    ap.add_argument("--budget-s", type=float, default=420, help="start no new row after this many seconds")
    ap.add_argument(
        "--out", default=str(RESULTS), help="folder for the JSON (also kept in benchmarks/results)"
    )
    args = ap.parse_args()
    args.compile_precisions = args.compile_precisions.split(",")
    device = torch.device(args.device)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    slug = re.sub(r"[^a-z0-9]+", "-", card.lower()).strip("-")
    setup = {
        "card": card, "model": args.model, "size": args.size, "nfe": args.nfe, "frames": args.frames,
        "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
    }  # fmt: skip
    report = Report(Path(args.out) / f"gpu-{slug}-{args.model}-{args.size}.json", setup, args.budget_s)
    print(
        f"{args.model} {args.size}x{args.size}, nfe {args.nfe} on {card} (torch {torch.__version__})",
        flush=True,
    )
    for precision in args.precisions.split(","):
        try:
            torch_rows(report, args, precision, device)
        except Exception as exc:  # e.g. bf16 refused on this card: recorded
            report.rows.append({"name": "model build + placement", "precision": precision, "status": "failed",
                                "error": f"{type(exc).__name__}: {str(exc)[:500]}"})  # fmt: skip
            report.write()
            print(f"  {precision}: FAILED {exc}", flush=True)
        gc.collect()  # the model of this precision is gone before the next one is built
        if device.type == "cuda":
            torch.cuda.empty_cache()
    for precision in filter(None, args.motion_precisions.split(",")):
        try:
            motion_rows(report, args, precision, device)
        except Exception as exc:
            report.rows.append({"name": "motion model build + placement", "precision": precision,
                                "status": "failed", "error": f"{type(exc).__name__}: {str(exc)[:500]}"})  # fmt: skip
            report.write()
            print(f"  motion {precision}: FAILED {exc}", flush=True)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if device.type == "cuda":
        bundle_rows(report, args, device)
    report.write()
    print(f"wrote {report.path} ({time.perf_counter() - report.start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
