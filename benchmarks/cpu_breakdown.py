"""Where the time goes on the CPU: each network of a bundle in onnxruntime and in torch eager, and the
UNet as diffusers calls it (NFE calls of batch 1) against the stream form (one call of batch NFE).

The calls are interleaved round by round and medians are reported, so that another process sharing the
CPU slows both sides alike (a shared machine makes back-to-back runs minutes apart incomparable).

    python benchmarks/cpu_breakdown.py --bundle stdtrt-engine [--rounds 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stdtrt.bundle.manifest import read_bundle  # noqa: E402
from stdtrt.bundle.model import load_fused_model  # noqa: E402
from stdtrt.config import DEFAULT_BUNDLE  # noqa: E402
from stdtrt.models.conditioning import predict_eps  # noqa: E402
from stdtrt.runtime.backends.onnxruntime import OnnxRuntimeBackend  # noqa: E402
from stdtrt.runtime.backends.torch import TorchBackend  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", default=DEFAULT_BUNDLE)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json")
    args = ap.parse_args()
    bundle = read_bundle(args.bundle)
    model = load_fused_model(bundle, "cpu")
    ort_backend = OnnxRuntimeBackend(bundle, "cpu")
    torch_backend = TorchBackend.from_bundle(bundle, "cpu", model)
    unet = torch_backend.networks.unet  # holds the baked conditioning
    cond = unet._cond("cond")
    plan = bundle.plan()
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(
        0, 256, (bundle.batch, bundle.height, bundle.width, 3), generator=g, dtype=torch.uint8
    )
    slots = torch.randn(plan.nfe * bundle.batch, *bundle.latent_shape, generator=g)
    z0 = slots[: bundle.batch].clone()

    def sequential_unet():  # what diffusers' img2img does per frame: NFE calls of batch 1
        with torch.inference_mode():
            for i, t in enumerate(plan.timesteps):
                predict_eps(model.unet, slots[i : i + 1], t, cond.map(lambda x: x[:1]))

    calls = {
        "vae_encode onnxruntime": lambda: ort_backend.encode(frames),
        "vae_encode torch": lambda: torch_backend.encode(frames),
        "unet stream step onnxruntime (batch NFE)": lambda: ort_backend.step(slots, z0, z0),
        "unet stream step torch (batch NFE)": lambda: torch_backend.step(slots, z0, z0),
        "unet torch, NFE calls of batch 1": sequential_unet,
        "vae_decode onnxruntime": lambda: ort_backend.decode(z0),
        "vae_decode torch": lambda: torch_backend.decode(z0),
    }
    times = {name: [] for name in calls}
    for fn in calls.values():  # warm-up
        fn()
    for _ in range(args.rounds):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            times[name].append(1000 * (time.perf_counter() - start))
    m = bundle.manifest
    print(f"{m.model['name']} {bundle.width}x{bundle.height}, nfe {plan.nfe}, {torch.get_num_threads()} threads, "
          f"median of {args.rounds} interleaved rounds (ms)")  # fmt: skip
    medians = {name: statistics.median(v) for name, v in times.items()}
    for name, ms in medians.items():
        print(f"  {name:<44} {ms:9.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"medians_ms": medians, "all_ms": times}, indent=2) + "\n")


if __name__ == "__main__":
    main()
