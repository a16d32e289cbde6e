"""Distillation cost: steps per second, peak memory, teacher UNet calls per step and the bank's reuse
fraction, for a preset at a resolution. Each configuration runs in its own process (peak RSS is
per process). Prints a table; --json writes the rows.

    python benchmarks/distill_speed.py                       # tiny-sd and random-sd15 at 256 px
    python benchmarks/distill_speed.py --only adversarial
    python benchmarks/distill_speed.py --only motion       # the video student: 8-frame clips, stride 4
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = [
    # (label, preset, resolution, batch, steps, teacher mode, adversarial backbone[+its --adv-vae] or "-",
    #  motion adapter or "-")
    ("tiny-sd 256px", "tiny-sd", 256, 4, 60, "shared", "-", "-"),
    ("tiny-sd 256px, teacher copy", "tiny-sd", 256, 4, 20, "copy", "-", "-"),
    ("tiny-sd 256px + adversarial", "tiny-sd", 256, 4, 20, "shared", "tiny-dinov2", "-"),
    ("random-sd15 256px", "random-sd15", 256, 1, 3, "shared", "-", "-"),
    ("random-sd15 256px, teacher copy", "random-sd15", 256, 1, 3, "copy", "-", "-"),
    ("random-sd15 256px + adversarial", "random-sd15", 256, 1, 3, "shared", "random-dinov2-small", "-"),
    # --adv-vae: the discriminator's images decoded by TAESD's architecture (random weights) instead
    (
        "random-sd15 256px + adv, TAESD",
        "random-sd15",
        256,
        1,
        3,
        "shared",
        "random-dinov2-small+random-taesd",
        "-",
    ),
    ("tiny-sd 256px, motion clips", "tiny-sd", 256, 1, 10, "shared", "-", "tiny-motion"),
    ("random-sd15 256px, motion clips", "random-sd15", 256, 1, 3, "shared", "-", "random-motion-sd15"),
]


def child(preset: str, resolution: int, batch: int, steps: int, teacher: str, adv: str, motion: str) -> dict:
    """One configuration's figures. With a motion adapter the data are videos and a batch element is a clip
    of 8 frames at stride 4 (the authors' setting), so a step runs every network on 8 frames."""
    from accelerate import Accelerator
    from PIL import Image

    from stdtrt.config import DistillConfig
    from stdtrt.distill.metrics import peak_memory_mb
    from stdtrt.distill.run import Run
    from stdtrt.io.samples import sample_frames

    tmp = Path(tempfile.mkdtemp())
    (tmp / "data").mkdir()
    if motion == "-":
        for i, rgb in enumerate(sample_frames(8, resolution + 32, resolution + 16)):
            Image.fromarray(rgb).save(tmp / "data" / f"{i}.png")
    else:
        from fractions import Fraction

        from stdtrt.io.video import write_video

        frames = sample_frames(64, resolution + 32, resolution + 16)  # 4 clips of 8 frames at stride 4
        write_video(tmp / "data" / "pan.mp4", iter(frames), Fraction(12))
    cfg = DistillConfig(
        model=preset,
        data=str(tmp / "data"),
        out=str(tmp / "run"),
        prompt="a photo",
        batch_size=batch,
        bank_size=max(8, 4 * batch),
        resolution=resolution,
        teacher=teacher,
        compile_loss=False,
        max_steps=steps,
        warmup_steps=0,
        adv_weight=0.0 if adv == "-" else 0.7,
        adv_model=adv.partition("+")[0],
        adv_vae=adv.partition("+")[2] or "full",
        motion_adapter="" if motion == "-" else motion,
    )
    (tmp / "run").mkdir()
    t0 = time.perf_counter()
    run = Run(cfg, Accelerator(cpu=True))
    setup = time.perf_counter() - t0
    run.optimise()  # warm-up step
    t0 = time.perf_counter()
    for _ in range(steps - 1):
        run.optimise()
    seconds = time.perf_counter() - t0
    stats = run.bank.stats
    return {
        "setup_s": setup,
        "steps_per_s": (steps - 1) / seconds,
        "s_per_step": seconds / (steps - 1),
        "peak_memory_mb": peak_memory_mb(run.device),
        "teacher_calls_per_step": run.teacher.calls / run.step_calls,
        "bank_fraction_last": stats.from_bank / max(1, stats.from_bank + stats.fresh),
        "p_bank": cfg.p_bank,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", help="run only configurations whose label contains this")
    parser.add_argument("--steps", type=int, help="override the step count")
    parser.add_argument("--json", type=Path, help="write the rows here")
    parser.add_argument("--child", nargs=7, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        preset, res, batch, steps, teacher, adv, motion = args.child
        print(json.dumps(child(preset, int(res), int(batch), int(steps), teacher, adv, motion)))
        return
    rows = []
    for label, preset, res, batch, steps, teacher, adv, motion in CONFIGS:
        if args.only and args.only not in label:
            continue
        steps = args.steps or steps
        cmd = [
            sys.executable,
            __file__,
            "--child",
            preset,
            str(res),
            str(batch),
            str(steps),
            teacher,
            adv,
            motion,
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        row = {"config": label, "batch": batch, "steps": steps, **json.loads(out)}
        rows.append(row)
        print(
            f"{label:<34} batch {batch}  {row['s_per_step']:7.2f} s/step  {row['steps_per_s']:6.2f} steps/s  "
            f"peak {row['peak_memory_mb']:7.0f} MB  teacher calls/step {row['teacher_calls_per_step']:.0f}  "
            f"bank fraction {row['bank_fraction_last']:.2f} (p_bank {row['p_bank']})",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
