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
    parser.add_argument("--skip-digits", action="store_true", help="skip the trained digits teacher's rows")
    args = parser.parse_args()

    from stdtrt.config import StylizeConfig
    from stdtrt.demo import make_sample_video
    from stdtrt.eval.flicker import report
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
    digits = None if args.skip_digits else digits_rows(args.nfe)
    if digits:
        print(
            "trained digits teacher (benchmarks/fidelity.py), a held-out digit drifting and turning, 32 frames, DDIM NFE 4:"
        )
        for r in digits:
            print(
                f"{r['strength']:>8} {r['floor']:>12.3f} {r['fixed']:>12.3f} {r['fresh']:>12.3f} {r['ratio']:>12.3f}"
            )
    print("target: fixed/fresh <= 0.7")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "flicker.json").write_text(
        json.dumps({"args": vars(args), "rows": results, "digits_rows": digits}, indent=2)
    )
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


def digits_rows(nfe: int, frames: int = 32) -> list[dict]:
    """The same comparison on a model that really denoises: the digits teacher of benchmarks/fidelity.py
    (trained and cached by it), on a held-out digit that drifts and turns. Frames are upscaled 4x for the
    optical flow."""
    import sys

    import cv2
    import numpy as np
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import fidelity

    from stdtrt import schedule
    from stdtrt.eval.flicker import warp_errors
    from stdtrt.runtime.student import Student

    images, labels = fidelity.digits()
    held, train = fidelity.split(len(images))
    teacher = fidelity.train_teacher(images[train], labels[train], 2500)
    digit, label = images[held[0]], labels[held[0]]
    h = w = 32
    clip = []
    for i in range(frames):  # smooth sub-pixel motion: 0.15 px and 0.6 degrees per frame
        m = cv2.getRotationMatrix2D((w / 2, h / 2), 0.6 * i, 1.0)
        m[0, 2] += 0.15 * i
        clip.append(cv2.warpAffine(digit, m, (w, h), flags=cv2.INTER_CUBIC, borderValue=-1.0))
    clip = torch.from_numpy(np.stack(clip))[:, None].expand(-1, 3, -1, -1)
    z0 = teacher.vae.encode(clip).latent_dist.mean
    abar = teacher.alphas_cumprod()

    def to_rgb(x):  # latents -> upscaled uint8 RGB frames for the flow
        grey = ((teacher.vae.decode(x, return_dict=False)[0][:, 0].clamp(-1, 1) + 1) * 127.5).round()
        return [
            cv2.resize(g.numpy().astype(np.uint8), (128, 128), interpolation=cv2.INTER_CUBIC)[
                ..., None
            ].repeat(3, -1)
            for g in grey
        ]

    rows = []
    for strength in (0.75, 0.5):
        plan = schedule.student_plan(abar, strength, nfe)
        student = Student(teacher, plan, f"digit {label}", 32, 32, guidance=fidelity.GUIDANCE)
        fixed = torch.randn((1, *z0.shape[1:]), generator=torch.Generator().manual_seed(0)).expand_as(z0)
        fresh = torch.randn(z0.shape, generator=torch.Generator().manual_seed(0))
        inputs = to_rgb(z0)
        r = {"strength": strength}
        for key, noise in (("fixed", fixed), ("fresh", fresh)):
            rep = warp_errors(inputs, to_rgb(student.sample(z0, noise)))
            r[key], r["floor"] = rep.output_warp_error, rep.input_warp_error
        r["ratio"] = r["fixed"] / r["fresh"]
        rows.append(r)
    return rows


if __name__ == "__main__":
    main()
