"""The torch backend's speed-ups against its eager path, in one run: ms per call of each network (VAE
encode, one stream UNet step of batch NFE, VAE decode) and per frame, eager vs torch.compile (and CUDA
graphs on a GPU), calls interleaved round by round, median of the rounds; and the compiled outputs'
max |difference| from eager.

    python benchmarks/torch_backend.py                                  # tiny-sd and random-sd15, 256x256
    python benchmarks/torch_backend.py --models random-sd15 --size 512 --device cuda
Writes benchmarks/results/torch-backend-<machine>.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stdtrt import schedule  # noqa: E402
from stdtrt.eval.bench import machine  # noqa: E402
from stdtrt.models.load import load_model  # noqa: E402
from stdtrt.runtime.backends.torch import TorchBackend  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def calls(backend, size: int, device):
    g = torch.Generator().manual_seed(0)
    image = (torch.rand(1, 3, size, size, generator=g) * 2 - 1).to(device)
    slots = torch.randn(backend.plan.nfe, *backend.latent_shape, generator=g).to(device)
    z = backend.encode(image)
    return {
        "vae_encode": (backend.encode, image),
        "unet": (backend.step, slots),
        "vae_decode": (backend.decode, z),
    }


def run(model_name: str, size: int, device: str, rounds: int, precision: str) -> dict:
    model = load_model(model_name, device=device, precision=precision)
    plan = schedule.student_plan(model.alphas_cumprod(), 0.75, 4)
    variants = {"eager": {"cuda_graphs": False, "channels_last": False}}
    variants["compiled"] = {"compile": True, "cuda_graphs": False, "channels_last": False}
    if model.device.type == "cuda":
        variants["compiled + CUDA graphs"] = {"compile": True}
    backends, load_s = {}, {}
    for name, speed in variants.items():
        start = time.perf_counter()
        backends[name] = TorchBackend.from_model(model, plan, "an oil painting", "", 1.0, size, size, **speed)
        inputs = calls(backends[name], size, model.device)
        for fn, args in inputs.values():  # the first calls compile
            fn(*args)
        load_s[name] = time.perf_counter() - start
    ref = {k: fn(*args) for k, (fn, args) in calls(backends["eager"], size, model.device).items()}
    times = {name: {k: [] for k in ref} for name in backends}
    diffs = {}
    for _ in range(rounds):
        for name, backend in backends.items():
            for key, (fn, args) in calls(backend, size, model.device).items():
                if model.device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                out = fn(*args)
                if model.device.type == "cuda":
                    torch.cuda.synchronize()
                times[name][key].append(1000 * (time.perf_counter() - start))
                out, want = (out[0], ref[key][0]) if isinstance(out, tuple) else (out, ref[key])
                diffs[(name, key)] = float((out.float() - want.float()).abs().max())
    result = {"model": model_name, "size": size, "precision": model.placement.precision, "device": str(model.device),
              "rounds": rounds, "variants": {}}  # fmt: skip
    for name in backends:
        ms = {k: statistics.median(v) for k, v in times[name].items()}
        result["variants"][name] = {
            "ms": ms, "frame_ms": sum(ms.values()), "load_s": load_s[name],
            "max_abs_vs_eager": {k: diffs[(name, k)] for k in ms},
        }  # fmt: skip
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="tiny-sd,random-sd15")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    results = [run(m, args.size, args.device, args.rounds, args.precision) for m in args.models.split(",")]
    where = machine()
    print(f"torch backend on {where}, NFE 4, median of {args.rounds} interleaved rounds (ms per call)")
    print(
        f"{'model':<14} {'variant':<24} {'vae enc':>9} {'unet':>9} {'vae dec':>9} {'frame':>9} {'vs eager':>9} {'load s':>7}"
    )
    for r in results:
        eager = r["variants"]["eager"]["frame_ms"]
        for name, v in r["variants"].items():
            ms = v["ms"]
            print(
                f"{r['model']:<14} {name:<24} {ms['vae_encode']:>9.1f} {ms['unet']:>9.1f} {ms['vae_decode']:>9.1f} "
                f"{v['frame_ms']:>9.1f} {eager / v['frame_ms']:>8.2f}x {v['load_s']:>7.1f}"
            )
    slug = re.sub(r"[^a-z0-9]+", "-", where.lower()).strip("-")[:60]
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"torch-backend-{slug}-{args.size}.json"
    out.write_text(
        json.dumps({"machine": where, "torch": torch.__version__, "results": results}, indent=2) + "\n"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
