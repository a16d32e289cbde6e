"""Temporal consistency: fixed noise per video (stdtrt's default) against fresh noise per frame, on a
real-content video (the demo's pan and zoom over scikit-image's photographs), with the input's own warp
error as the floor. Prints a table; writes benchmarks/results/flicker.json and flicker.png.

    python benchmarks/flicker.py [--model tiny-sd] [--frames 48] [--nfe 4]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="tiny-sd")
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--nfe", type=int, default=4)
    parser.add_argument("--strengths", default="0.75,0.5", help="comma-separated")
    args = parser.parse_args()

    from stdtrt.config import StylizeConfig
    from stdtrt.demo import make_sample_video
    from stdtrt.flicker import report
    from stdtrt.runtime.stylize import stylize_video

    tmp = Path(tempfile.mkdtemp())
    source = make_sample_video(tmp / "input.mp4", frames=args.frames)
    results = []
    for strength in (float(x) for x in args.strengths.split(",")):
        row = {"strength": strength}
        for key, fresh in (("fixed", False), ("fresh", True)):
            cfg = StylizeConfig(
                model=args.model,
                prompt="an oil painting",
                nfe=args.nfe,
                strength=strength,
                fresh_noise=fresh,
                crf=0,
            )
            out = stylize_video(cfg, source, tmp / f"{key}-{strength}.mp4", progress=False).output
            r = report(source, out)
            row[key], row["floor"], row["pairs"], row["valid"] = (
                r.output_warp_error,
                r.input_warp_error,
                r.pairs,
                r.valid_fraction,
            )
        row["ratio"] = row["fixed"] / row["fresh"]
        results.append(row)
    print(
        f"warp error (0..255, lower is steadier) on {args.frames} frames of the demo video, {args.model}, NFE {args.nfe}"
    )
    print(f"{'strength':>8} {'input floor':>12} {'fixed noise':>12} {'fresh noise':>12} {'fixed/fresh':>12}")
    for r in results:
        print(
            f"{r['strength']:>8} {r['floor']:>12.3f} {r['fixed']:>12.3f} {r['fresh']:>12.3f} {r['ratio']:>12.3f}"
        )
    print("target: fixed/fresh <= 0.7")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "flicker.json").write_text(json.dumps({"args": vars(args), "rows": results}, indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.4))
    width = 0.25
    xs = range(len(results))
    for k, (key, colour) in enumerate((("floor", "grey"), ("fixed", "C0"), ("fresh", "C3"))):
        ax.bar(
            [x + (k - 1) * width for x in xs],
            [r[key] for r in results],
            width,
            color=colour,
            label={"floor": "input (floor)", "fixed": "fixed noise", "fresh": "fresh noise"}[key],
        )
    ax.set_xticks(list(xs), [f"strength {r['strength']}" for r in results])
    ax.set(ylabel="warp error (0..255)", title=f"temporal consistency, {args.model}, NFE {args.nfe}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "flicker.png", dpi=120)


if __name__ == "__main__":
    main()
