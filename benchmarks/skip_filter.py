"""The similarity filter (`--skip-threshold`) on a clip with a still stretch: end-to-end fps and warp error
(`stdtrt report`) against no filter, in one run.

The clip: a pan over photographs, then the same picture held for a stretch, then the pan again (12 fps,
with light sensor noise on the still frames, as a camera gives). Each setting stylizes it through the real
video pipeline (tiny-sd on the torch stream path by default).

    python benchmarks/skip_filter.py [--model tiny-sd] [--thresholds 0.98,0.995]
Writes benchmarks/results/skip-filter.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stdtrt.config import StylizeConfig  # noqa: E402
from stdtrt.eval.bench import machine  # noqa: E402
from stdtrt.eval.flicker import report  # noqa: E402
from stdtrt.io.samples import sample_frames  # noqa: E402
from stdtrt.io.video import write_video  # noqa: E402
from stdtrt.runtime.stylize import stylize_video  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def clip(path: Path, width: int, height: int, moving: int, still: int) -> Path:
    frames = list(sample_frames(2 * moving, width, height))
    rng = np.random.default_rng(0)
    held = frames[moving - 1]
    noisy = [np.clip(held + rng.normal(0, 1.5, held.shape), 0, 255).astype(np.uint8) for _ in range(still)]
    write_video(path, iter(frames[:moving] + noisy + frames[moving:]), Fraction(12))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny-sd")
    ap.add_argument("--size", default="256x192")
    ap.add_argument("--moving", type=int, default=24, help="frames of pan before and after the still stretch")
    ap.add_argument("--still", type=int, default=36)
    ap.add_argument("--thresholds", default="0.98,0.995")
    args = ap.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        src = clip(Path(tmp) / "in.mp4", width, height, args.moving, args.still)
        for threshold in [None, *(float(t) for t in args.thresholds.split(","))]:
            cfg = StylizeConfig(model=args.model, prompt="an oil painting", width=width, height=height,
                                skip_threshold=threshold)  # fmt: skip
            out = Path(tmp) / f"out-{threshold}.mp4"
            result = stylize_video(cfg, src, out, progress=False)
            flick = report(src, out)
            rows.append({"threshold": threshold, "frames": result.frames, "skipped": result.skipped,
                         "fps": result.fps, "warp_error": flick.output_warp_error,
                         "input_warp_error": flick.input_warp_error})  # fmt: skip
    base = rows[0]
    where = machine()
    print(f"similarity filter: {args.model} {args.size}, {args.moving} moving + {args.still} still + {args.moving} "
          f"moving frames, on {where}")  # fmt: skip
    print(
        f"{'threshold':>10} {'skipped':>8} {'fps':>8} {'fps gain':>9} {'warp error':>11} {'input floor':>12}"
    )
    for r in rows:
        t = "off" if r["threshold"] is None else f"{r['threshold']:g}"
        print(f"{t:>10} {r['skipped']:>8} {r['fps']:>8.2f} {r['fps'] / base['fps']:>8.2f}x {r['warp_error']:>11.3f} "
              f"{r['input_warp_error']:>12.3f}")  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "skip-filter.json"
    out.write_text(json.dumps({"machine": where, "setup": vars(args), "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
