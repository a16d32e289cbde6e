"""stylize-batch throughput with 1 worker and with 2, in one run on one local Ray cluster: the same videos,
the same settings, each job on its own fresh workers (their model load timed apart from the frames).

On a machine without a GPU, 1 worker gets every core (torch threads = cores) and 2 workers half each, so
the ratio says what splitting the CPU into processes gains over threads inside one; on a machine with N
GPUs (--gpus) the workers take one GPU each and the ratio is the multi-GPU scaling.

    python benchmarks/batch_throughput.py                          # tiny-sd, 4 videos of 24 frames, 128 px
    python benchmarks/batch_throughput.py --model random-sd15 --size 256 --videos 2 --frames 8
Writes benchmarks/results/batch-throughput-<machine>-<model>-<size>.json (and .txt) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stdtrt.config import BatchConfig, StylizeConfig  # noqa: E402
from stdtrt.eval.bench import machine  # noqa: E402
from stdtrt.io.samples import sample_frames  # noqa: E402
from stdtrt.io.video import write_video  # noqa: E402

ROOT = Path(__file__).resolve().parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny-sd")
    p.add_argument("--size", type=int, default=128, help="working width and height")
    p.add_argument("--videos", type=int, default=4)
    p.add_argument("--frames", type=int, default=24, help="frames per video")
    p.add_argument("--workers", default="1,2", help="worker counts to compare, in this order")
    p.add_argument("--out", default=None, help="results file [benchmarks/results/batch-throughput-...]")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import ray

    from stdtrt.batch.job import run_job

    counts = [int(n) for n in args.workers.split(",")]
    ray.init(include_dashboard=False, log_to_driver=False)
    cpus, gpus = int(ray.cluster_resources().get("CPU", 1)), int(ray.cluster_resources().get("GPU", 0))
    style = StylizeConfig(model=args.model, prompt="an oil painting", width=args.size, height=args.size)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in"
        src.mkdir()
        for i in range(args.videos):
            frames = list(sample_frames(args.frames + i, args.size, args.size))[i:]  # each its own content
            write_video(src / f"clip{i}.mp4", iter(frames), Fraction(12))
        for n in counts:
            load = os.getloadavg()[0]
            start = time.perf_counter()
            result = run_job(BatchConfig(stylize=style, output=f"{tmp}/out{n}", workers=n), [str(src)], False)
            wall = time.perf_counter() - start
            assert not result.failed, result.failed
            rows.append({
                "workers": n, "frames": result.frames, "wall_s": round(wall, 2),
                "loop_s": round(result.seconds, 2), "fps_job": round(result.frames / result.seconds, 3),
                "fps_workers": [round(w.fps, 3) for w in result.workers.values()],
                "fps_busy_sum": round(sum(w.fps for w in result.workers.values()), 3),
                "load_avg_before": round(load, 2),
            })  # fmt: skip
            print(result.table(), flush=True)
    ray.shutdown()
    base = rows[0]
    for r in rows:
        r["ratio_fps_job"] = round(r["fps_job"] / base["fps_job"], 3)
        r["ratio_fps_busy_sum"] = round(r["fps_busy_sum"] / base["fps_busy_sum"], 3)
    where = machine()
    lines = [
        f"stylize-batch throughput: {args.model} {args.size}x{args.size}, NFE 4, {args.videos} videos x "
        f"~{args.frames} frames, on {where}; Ray cluster: {cpus} CPU, {gpus} GPU",
        f"{'workers':>7} {'frames':>6} {'job s':>7} {'job fps':>8} {'ratio':>6} {'sum busy fps':>12} {'ratio':>6}"
        f" {'load':>5}",
    ]
    for r in rows:
        lines.append(
            f"{r['workers']:>7} {r['frames']:>6} {r['loop_s']:>7.1f} {r['fps_job']:>8.3f} {r['ratio_fps_job']:>5.2f}x"
            f" {r['fps_busy_sum']:>12.3f} {r['ratio_fps_busy_sum']:>5.2f}x {r['load_avg_before']:>5.1f}"
        )
    lines.append(
        "job fps: all frames over the job's loop (model loads included, workers start together); sum busy "
        "fps: each worker's frames over its own time on units, model load left out, summed; load: the "
        "1-minute load average before the job (other processes share this machine)"
    )
    text = "\n".join(lines)
    print(text)
    slug = re.sub(r"[^a-z0-9]+", "-", where.lower().split("(")[0]).strip("-")
    slug = "-".join(w for w in slug.split("-") if w not in ("processor", "core"))[:40]
    out = (
        Path(args.out) if args.out else ROOT / "results" / f"batch-throughput-{slug}-{args.model}-{args.size}"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"model": args.model, "size": args.size, "videos": args.videos, "frames": args.frames,
            "machine": where, "ray_cpus": cpus, "ray_gpus": gpus, "rows": rows}  # fmt: skip
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    out.with_suffix(".txt").write_text(text + "\n")
    print(f"wrote {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
