"""Which steady-video method is steadier, and what does it cost? Issue 20's consistency benchmark.

Content whose motion the metric can follow: held-out digits (the fidelity benchmark's split) shrunk to
24x24 on a black 32x32 frame, moving 1 px a frame in x and y and bouncing off the edges
(motion_fidelity.moving_clip), 24 frames a clip. Models: the digits teacher (benchmarks/fidelity.py,
cached), an image student distilled from it on the motion benchmark's moving-digit videos, and, unless
--skip-motion, the motion teacher (benchmarks/motion_fidelity.py, cached) and its motion students, one per
noise rule (`--clip-noise per-frame` and `shared`). All students: NFE 4, eta 0.75, guidance 1.

Rows (each over every clip):
- the image student in the stream form (torch backend, one UNet call per frame): fresh noise per frame,
  fixed noise, and fixed noise with cached attention F = 1, 2, 4, without and with feature fusion 0.8;
- the motion student under each noise rule, windows of 8 overlapping by 2 (runtime/windows.py): the
  overlap blended once on the clean latents (WindowRunner) and blended inside every step
  (windows.sample_blended_per_step).
Metrics (stdtrt.eval.flicker, on frames upscaled 4x for the optical flow): the warp error (flow on the
source frames both ways, forward-backward occlusion check, mean |O_t - warp(O_t-1)| on 0..255 over the
unoccluded pixels) with the input's floor, the frame-to-frame similarity, and each row's distance (mean
|difference| on 0..255) from the fixed-noise image student's frames; and the cost: UNet time per frame
against the uncached fixed-noise stream, interleaved in the same run (median over repeats).

Targets (issue 20): cache F = 2 cuts the warp error by at least 25% against fixed noise alone at no more
than 1.3x the frame time; the motion student at most 0.7x the per-frame student's warp error.

    python benchmarks/consistency.py                       # 2-core CPU: ~25 min the first time, then cached
    python benchmarks/consistency.py --skip-motion --clips 2 --steps 40   # a smoke run
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import fidelity  # noqa: E402  (the digits, the image teacher)
import motion_fidelity as mf  # noqa: E402  (moving digits, the motion teacher, the students' data)

RESULTS = HERE / "results"
NFE, WINDOW, OVERLAP = 4, 8, 2
CACHE_ROWS = [(f, fusion) for f in (1, 2, 4) for fusion in (0.0, 0.8)]


# -- models ---------------------------------------------------------------------------------------------------------
def student(teacher, data: Path, motion: bool, steps: int, rule: str = "per-frame", seed: int = 0):
    """An STD student of `teacher` distilled on the moving-digit videos (cached by its settings)."""
    from stdtrt.models.lora import load_lora

    name = f"{'motion-' + rule if motion else 'image'}-{steps}-s{seed}"
    out = mf.CACHE / "runs" / f"consistency-{name}"
    if not (out / "lora.safetensors").exists():
        t = time.perf_counter()
        mf.distill_student(teacher, data, out, motion, steps, 5e-4, 16, seed, clip_noise=rule)
        print(f"distilled the {name} student in {time.perf_counter() - t:.0f} s", flush=True)
        return student(teacher, data, motion, steps, rule, seed)
    model = copy.deepcopy(teacher)
    load_lora(model, out / "lora.safetensors")
    return model


# -- content ----------------------------------------------------------------------------------------------------------
def clips(n: int, frames: int):
    """n held-out digits moving (uint8 RGB (frames, 32, 32, 3) each) and their prompts."""
    images, labels = fidelity.digits()
    held, _ = fidelity.split(len(images))
    rng = np.random.default_rng(1)
    out = []
    for i in held[:n]:
        grey = mf.moving_clip(images[i], rng, frames)  # (frames, 32, 32) in [-1, 1]
        out.append(((grey + 1) * 127.5).round().clip(0, 255).astype(np.uint8)[..., None].repeat(3, -1))
    return out, [f"digit {k}" for k in labels[held[:n]]]


def big(frames) -> list[np.ndarray]:
    """uint8 (32, 32, 3) frames upscaled 4x for the optical flow."""
    import cv2

    return [cv2.resize(f, (128, 128), interpolation=cv2.INTER_CUBIC) for f in frames]


# -- the rows -----------------------------------------------------------------------------------------------------------
def image_row(model, plan, clip, prompt, rule: str, cache=None):
    """The image student in the stream form over one clip: (frames, UNet seconds per frame)."""
    from stdtrt.models.attention_cache import CacheSettings
    from stdtrt.runtime.backends.torch import TorchBackend
    from stdtrt.runtime.stream import StreamState
    from stdtrt.runtime.student import VideoNoise, to_tensor, to_uint8

    settings = None if cache is None else CacheSettings(cache[0], 1, cache[1])
    if settings is None:  # diffusers' own self-attention again, not a cache row's processors left idle
        from diffusers.models.attention_processor import AttnProcessor2_0

        model.unet.set_attn_processor(AttnProcessor2_0())
    backend = TorchBackend.from_model(model, plan, prompt, "", 1.0, 32, 32, cache=settings)
    noise = VideoNoise(backend.latent_shape, 0, rule)
    state = StreamState(backend, noise.take)
    z0 = model.vae.encode(to_tensor(clip, "cpu")).latent_dist.mean  # (frames, 4, 16, 16)
    done, t = [], time.perf_counter()
    for i in range(len(clip)):
        done += state.push(z0[i : i + 1], [i])
    done += state.flush()
    seconds = (time.perf_counter() - t) / len(clip)
    lat = torch.cat([latents for latents, _ in done])
    return list(to_uint8(model.vae.decode(lat).sample)), seconds


def motion_row(model, plan, clip, prompt, rule: str, per_step: bool):
    """The motion student over one clip in windows: (frames, UNet seconds per frame)."""
    from stdtrt.runtime.student import Student, to_tensor, to_uint8
    from stdtrt.runtime.windows import WindowRunner, sample_blended_per_step

    engine = Student(model, plan, prompt, 32, 32, guidance=1.0)
    runner = WindowRunner(engine, WINDOW, OVERLAP, 0, rule)
    t = time.perf_counter()
    if per_step:
        z0 = engine.encode(to_tensor(clip, "cpu"))
        lat = sample_blended_per_step(engine, z0, runner.noise.at(0, len(clip) + WINDOW), WINDOW, OVERLAP)
        frames = list(to_uint8(engine.decode(lat)))
    else:
        frames = [f for f, _ in runner.stylize((f, i) for i, f in enumerate(clip))]
    return frames, (time.perf_counter() - t) / len(clip)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clips", type=int, default=6, help="held-out clips")
    parser.add_argument("--frames", type=int, default=24, help="frames per clip")
    parser.add_argument("--steps", type=int, default=400, help="student updates, each student")
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats of each image row")
    parser.add_argument("--skip-motion", action="store_true", help="no motion teacher or students")
    parser.add_argument("--tag", default="")
    args = parser.parse_args()

    from stdtrt import schedule
    from stdtrt.eval.flicker import frame_distance, warp_errors

    torch.set_grad_enabled(False)
    images, labels = fidelity.digits()
    held, train = fidelity.split(len(images))
    teacher_steps = 1200  # motion_fidelity's teacher (cached there and here alike)
    image_teacher = fidelity.train_teacher(images[train], labels[train], teacher_steps)
    rng = np.random.default_rng(0)  # motion_fidelity's training clips and videos (and its caches)
    pick = rng.choice(train, size=512, replace=False)
    train_clips = mf.clips_of(images[pick], rng)
    data = mf.write_videos(train_clips, labels[pick], mf.CACHE / "videos-512")
    with torch.enable_grad():
        image_student = student(image_teacher, data, False, args.steps)
    plan = schedule.student_plan(image_teacher.alphas_cumprod(), fidelity.ETA, NFE)
    content, prompts = clips(args.clips, args.frames)
    inputs = [big(c) for c in content]

    image_rows = [("fresh noise", "per-frame", None), ("fixed noise", "shared", None)]
    image_rows += [(f"fixed noise + cache F={f}" + (f" fusion {s}" if s else ""), "shared", (f, s))
                   for f, s in CACHE_ROWS]  # fmt: skip
    outputs: dict[str, list] = {}
    times: dict[str, list[float]] = {name: [] for name, _, _ in image_rows}
    for rep in range(args.repeats):  # interleaved: each repeat runs every row once, in turn
        for name, rule, cache in image_rows:
            per_clip = [
                image_row(image_student, plan, c, p, rule, cache)
                for c, p in zip(content, prompts, strict=True)
            ]
            times[name].append(float(np.mean([s for _, s in per_clip])))
            if rep == 0:
                outputs[name] = [big(f) for f, _ in per_clip]
        print(f"timing repeat {rep + 1}/{args.repeats} done", flush=True)
    seconds = {name: float(np.median(v)) for name, v in times.items()}

    motion_note = None
    if args.skip_motion:
        motion_note = "not run (--skip-motion)"
    else:
        with torch.enable_grad():
            teacher = mf.motion_teacher(image_teacher, train_clips, labels[pick], 400, 4,
                                        base=f"teacher-steps {teacher_steps}")  # fmt: skip
        for rule in ("per-frame", "shared"):
            with torch.enable_grad():
                m = student(teacher, data, True, args.steps, rule)
            for per_step in (False, True):
                name = f"motion student, {rule} noise, blend {'per step' if per_step else 'clean'}"
                runs = [
                    motion_row(m, plan, c, p, rule, per_step) for c, p in zip(content, prompts, strict=True)
                ]
                outputs[name] = [big(f) for f, _ in runs]
                seconds[name] = float(np.mean([s for _, s in runs]))
                print(f"{name} done", flush=True)

    base, reference = seconds["fixed noise"], outputs["fixed noise"]
    rows = []
    for name, frames in outputs.items():
        reps = [warp_errors(iter(a), iter(b)) for a, b in zip(inputs, frames, strict=True)]
        rows.append({
            "row": name,
            "warp_error": float(np.mean([r.output_warp_error for r in reps])),
            "input_floor": float(np.mean([r.input_warp_error for r in reps])),
            "similarity": float(np.mean([r.output_similarity for r in reps])),
            "input_similarity": float(np.mean([r.input_similarity for r in reps])),
            "valid_fraction": float(np.mean([r.valid_fraction for r in reps])),
            "distance_from_fixed": float(np.mean([frame_distance(a, b) for a, b in zip(frames, reference, strict=True)])),
            "seconds_per_frame": seconds[name],
            "time_vs_fixed": seconds[name] / base,
        })  # fmt: skip
    by = {r["row"]: r for r in rows}
    fixed = by["fixed noise"]["warp_error"]
    for r in rows:
        r["warp_vs_fixed"] = r["warp_error"] / fixed
    summary = {"cache F=2 warp vs fixed": by["fixed noise + cache F=2"]["warp_vs_fixed"],
               "cache F=2 time vs fixed": by["fixed noise + cache F=2"]["time_vs_fixed"]}  # fmt: skip
    targets = {"cache F=2: warp <= 0.75x fixed at <= 1.3x time":
               summary["cache F=2 warp vs fixed"] <= 0.75 and summary["cache F=2 time vs fixed"] <= 1.3}  # fmt: skip
    for rule in ("per-frame", "shared"):
        name = f"motion student, {rule} noise, blend clean"
        if name in by:
            ratio = by[name]["warp_error"] / fixed
            summary[f"motion ({rule}) warp vs per-frame student (fixed noise)"] = ratio
            targets[f"motion student ({rule}) <= 0.7x the per-frame student"] = ratio <= 0.7

    lines = [
        f"consistency on {args.clips} held-out moving digits x {args.frames} frames (1 px/frame, bouncing), "
        f"NFE {NFE}, eta {fidelity.ETA}, guidance 1, students of {args.steps} updates; "
        f"warp error on 0..255 (input floor {rows[0]['input_floor']:.3f}; lower is steadier), similarity: "
        f"frame-to-frame correlation (input {rows[0]['input_similarity']:.3f}), distance: mean |frames - "
        f"fixed-noise student's| on 0..255, time: UNet s/frame vs the uncached fixed-noise stream",
        f"{'row':<48} {'warp':>7} {'vs fixed':>8} {'simil.':>7} {'distance':>8} {'s/frame':>8} {'time x':>7}",
    ]
    for r in rows:
        lines.append(f"{r['row']:<48} {r['warp_error']:>7.3f} {r['warp_vs_fixed']:>8.3f} {r['similarity']:>7.4f} "
                     f"{r['distance_from_fixed']:>8.3f} {r['seconds_per_frame']:>8.4f} {r['time_vs_fixed']:>7.2f}")  # fmt: skip
    if motion_note:
        lines.append(f"motion student rows: {motion_note}")
    lines += [f"{k}: {'met' if v else 'NOT met'}" for k, v in targets.items()]
    text = "\n".join(lines)
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"consistency{args.tag}"
    payload = {"settings": vars(args), "rows": rows, "summary": summary, "targets_met": targets,
               "motion_note": motion_note, "machine": "2-core AMD EPYC VM, no GPU, shared"}  # fmt: skip
    out.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    out.with_suffix(".txt").write_text(text + "\n")
    print(f"wrote {out}.json and .txt")


if __name__ == "__main__":
    main()
