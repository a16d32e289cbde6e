"""The realtime frame loop's targets, measured in one run per size: end-to-end fps with the tiny VAE against
the full VAE, the tiny-VAE bundle against diffusers' img2img pipeline given the same tiny VAE and weights,
and the time per frame outside the network calls.

SD-1.5-sized random weights (`random-sd15`; `random-taesd`, TAESD's real size, as the tiny VAE), NFE 4,
fp32 on the CPU (a GPU run: --device cuda --precision fp16). For each size it exports the two bundles
(cached under benchmarks/cache/), then runs `stdtrt bench` on both side by side: every backend through the
real video pipeline, and diffusers on the same frames.

    python benchmarks/realtime.py                       # 256 and 512: about an hour on 2 cores
    python benchmarks/realtime.py --sizes 256 --frames 8
Writes benchmarks/results/realtime-<machine>-<sizes>.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stdtrt.bundle.manifest import read_bundle  # noqa: E402
from stdtrt.config import BenchConfig, ExportConfig  # noqa: E402
from stdtrt.errors import StdtrtError  # noqa: E402
from stdtrt.eval.bench import machine, run_bench  # noqa: E402
from stdtrt.export.export import export_bundle  # noqa: E402

ROOT = Path(__file__).resolve().parent
VAES = {"full": "full", "tiny": "random-taesd"}


def bundle(size: int, vae: str, precision: str) -> Path:
    out = ROOT / "cache" / f"realtime-random-sd15-{size}-{vae}-{precision}"
    if out.exists():
        try:
            read_bundle(out, verify=False)
        except StdtrtError:  # a cache entry of an older bundle format: made again
            shutil.rmtree(out)
    cfg = ExportConfig(model="random-sd15", prompt="an oil painting", width=size, height=size, nfe=4,
                       vae=VAES[vae], precision=precision, tensorrt=False, out=str(out))  # fmt: skip
    return export_bundle(cfg, progress=False).path  # reused when it is already there


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="256,512")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--backends", default="onnxruntime,torch")
    args = ap.parse_args()
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        paths = [str(bundle(size, vae, args.precision)) for vae in VAES]
        cfg = BenchConfig(bundles=tuple(paths), frames=args.frames, backends=tuple(args.backends.split(",")),
                          device=args.device)  # fmt: skip
        result = run_bench(cfg)
        print(result.table(), flush=True)
        by_vae = dict(zip(VAES, result.bundles, strict=True))
        for backend in args.backends.split(","):
            runs = {v: next(r for r in b.runs if r.name == backend) for v, b in by_vae.items()}
            tiny, full = runs["tiny"], runs["full"]
            rows.append({
                "size": size, "backend": backend,
                "fps_full": full.steady_fps, "fps_tiny": tiny.steady_fps,
                "tiny_vs_full": tiny.steady_fps / full.steady_fps,
                "diffusers_fps_tiny": by_vae["tiny"].baseline["fps"],
                "tiny_vs_diffusers_tiny": by_vae["tiny"].ratio(tiny),
                "outside_tiny": tiny.outside, "outside_full": full.outside,
                "stages_ms_tiny": tiny.stages_ms, "stages_ms_full": full.stages_ms,
            })  # fmt: skip
    where = machine()
    print(f"\nrealtime targets, random-sd15, NFE 4, {args.precision}, on {where}")
    print(f"{'size':>5} {'backend':<12} {'fps full':>9} {'fps tiny':>9} {'tiny/full':>10} {'diffusers tiny':>15} "
          f"{'vs diffusers':>13} {'outside':>9}")  # fmt: skip
    for r in rows:
        outside = "-" if r["outside_tiny"] is None else f"{100 * r['outside_tiny']:.1f}%"
        print(f"{r['size']:>5} {r['backend']:<12} {r['fps_full']:>9.3f} {r['fps_tiny']:>9.3f} {r['tiny_vs_full']:>9.2f}x "
              f"{r['diffusers_fps_tiny']:>15.3f} {r['tiny_vs_diffusers_tiny']:>12.2f}x "
              f"{outside:>9}")  # fmt: skip
    print("outside: the clip's time outside the network calls, tiny VAE (backends whose networks run in one "
          "thread; '-' where they overlap)")  # fmt: skip
    slug = re.sub(r"[^a-z0-9]+", "-", where.lower()).strip("-")[:60]
    (ROOT / "results").mkdir(exist_ok=True)
    sizes = args.sizes.replace(",", "-")
    out = ROOT / "results" / f"realtime-{slug}-{sizes}.json"
    out.write_text(
        json.dumps(
            {"machine": where, "precision": args.precision, "frames": args.frames, "rows": rows}, indent=2
        )
        + "\n"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
