"""Does the video student work? Issue 13's proof at small scale: a video teacher trained here, its motion
student and the per-frame image student, against the teacher's full trajectory and for temporal consistency.

1. Video teacher: the fidelity benchmark's digits teacher (benchmarks/fidelity.py, cached) joined with a
   motion adapter (diffusers' MotionAdapter, one motion layer per block) whose motion modules are trained
   here, spatial weights frozen, on clips of 8 frames of a digit moving in a straight line (1 px a frame,
   a random direction, bouncing off the edges), epsilon prediction, 10 % condition dropout.
2. Data: the same moving-digit clips written as 32x32 H.264 videos with "digit k" captions. The motion
   student is `stdtrt distill --motion-adapter` on them (clips of 8, stride 1, rho 0.3); the image student is
   `stdtrt distill` of the image teacher on the frames of the same videos (rho 0.5); same lr, LoRA rank,
   frames per step and updates.
3. Reference: held-out digits' clips, x_start at eta 0.75 with the video's one fixed noise (the same for
   every frame), the video teacher's full DDIM walk over every grid step at guidance 3.
4. At NFE 4: the video teacher's own 4-step DDIM (guidance 3), the motion student (one window = the clip),
   the image student per frame (guidance 1 both). MSE to the reference, and the warp error of the decoded
   frames (stdtrt.eval.flicker, the metric of `stdtrt report`, on frames upscaled 4x for the optical flow)
   with the input clips' own floor.

Targets (issue 13): the motion student's warp error at most 0.7x the image student's, and its MSE below the
teacher's own 4-step DDIM.

    python benchmarks/motion_fidelity.py                    # about 40 min on 2 CPU cores; teachers cached
    python benchmarks/motion_fidelity.py --steps 20 --motion-steps 20 --eval 8   # a smoke run
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import fidelity  # noqa: E402  (the digits, the image teacher, the walk, the metric)

CACHE = HERE / "cache" / "motion_fidelity"
RESULTS = HERE / "results"
FRAMES = 8  # clip length: the authors' 8 frames
NFE = 4


# -- moving digits ---------------------------------------------------------------------------------------------
def moving_clip(image: np.ndarray, rng: np.random.Generator, frames: int = FRAMES) -> np.ndarray:
    """A digit (32x32 in [-1, 1]) shrunk to 24x24 on a black 32x32 frame, moving 1 px a frame in x and y
    (a random sign each), bouncing off the edges. (frames, 32, 32) in [-1, 1]."""
    import cv2

    small = cv2.resize(image, (24, 24), interpolation=cv2.INTER_AREA)
    pos = rng.integers(0, 9, size=2)
    vel = rng.choice([-1, 1], size=2)
    out = np.full((frames, 32, 32), -1.0, dtype=np.float32)
    for f in range(frames):
        y, x = pos
        out[f, y : y + 24, x : x + 24] = small
        for axis in (0, 1):
            if not 0 <= pos[axis] + vel[axis] <= 8:
                vel[axis] = -vel[axis]
        pos = pos + vel
    return out


def clips_of(images, rng) -> np.ndarray:
    return np.stack([moving_clip(im, rng) for im in images])  # (n, F, 32, 32)


def latents(model, clips: np.ndarray) -> torch.Tensor:
    """(n, F, 32, 32) -> the clips' latents (n, 4, F, 16, 16) by the space-to-depth "VAE"."""
    n = clips.shape[0]
    frames = torch.from_numpy(clips).flatten(0, 1)[:, None].expand(-1, 3, -1, -1)
    z = model.vae.encode(frames).latent_dist.mean  # (n F, 4, 16, 16)
    return z.unflatten(0, (n, FRAMES)).transpose(1, 2)


def write_videos(clips, labels, folder: Path) -> Path:
    from stdtrt.io.video import write_video

    if (folder / ".complete").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for i, (clip, k) in enumerate(zip(clips, labels, strict=True)):
        rgb = (((clip + 1) * 127.5).round().clip(0, 255).astype(np.uint8)[..., None]).repeat(3, axis=-1)
        write_video(folder / f"{i:05d}.mp4", iter(rgb), Fraction(8), crf=0)
        (folder / f"{i:05d}.txt").write_text(f"digit {k}")
    (folder / ".complete").touch()
    return folder


# -- the video teacher --------------------------------------------------------------------------------------------
def motion_teacher(
    image_teacher, clips, labels, steps: int, batch: int = 8, lr: float = 1e-3, base: str = ""
):
    """The image teacher with a motion adapter whose motion modules are trained on the clips (cached)."""
    from diffusers import MotionAdapter
    from safetensors.torch import load_file

    from stdtrt.models.load import LoadedModel
    from stdtrt.models.motion import motion_unet

    torch.manual_seed(0)
    adapter = MotionAdapter(block_out_channels=(64, 96, 128), motion_layers_per_block=1,
                            motion_num_attention_heads=4, motion_norm_num_groups=16,
                            motion_max_seq_length=32, use_motion_mid_block=False)  # fmt: skip
    teacher = copy.deepcopy(image_teacher)
    unet = motion_unet(teacher.unet, adapter, "digits-motion", "digits-teacher")
    teacher.pipe.unet = unet
    teacher = LoadedModel(pipe=teacher.pipe, name="digits-video-teacher", kind="sd",
                          placement=teacher.placement, motion="digits-motion")  # fmt: skip
    # the whole UNet is cached: keyed by the image teacher it starts from too (`base`: its settings)
    key = hashlib.sha256(f"{steps}:{batch}:{lr}:{clips.shape}:{base}:v2".encode()).hexdigest()[:12]
    path = CACHE / f"motion-teacher-{key}.safetensors"
    if path.exists():
        unet.load_state_dict(load_file(str(path)))
        return teacher
    params = [p for n, p in unet.named_parameters() if "motion_modules" in n]  # the spatial ones stay
    fidelity.fit_epsilon(
        teacher, params, latents(teacher, clips), labels, steps, batch, lr, path, "motion teacher"
    )
    return teacher


# -- the students ---------------------------------------------------------------------------------------------------
def distill_student(
    teacher, data: Path, out: Path, motion: bool, steps: int, lr: float, rank: int, seed: int,
    clip_noise: str = "per-frame",
):  # fmt: skip
    from stdtrt.config import DistillConfig
    from stdtrt.distill.trainer import distill
    from stdtrt.models.lora import load_lora

    per_step = 16  # frames per update: 16 images, or 2 clips of 8
    clip = dict(motion_adapter="digits-motion", clip_frames=FRAMES, frame_stride=1, clips_per_video=1,
                clip_noise=clip_noise)  # fmt: skip
    cfg = DistillConfig(
        model=teacher.name, data=str(data), out=str(out), strength=fidelity.ETA, resolution=32,
        batch_size=per_step // FRAMES if motion else per_step, bank_size=16 if motion else 64,
        lora_rank=rank, lora_alpha=float(rank), lr=lr, max_steps=steps, warmup_steps=steps // 20,
        w_min=fidelity.GUIDANCE - 1, w_max=fidelity.GUIDANCE - 1, seed=seed, compile_loss=False,
        log_every=max(1, steps // 10), checkpoint_every=10 * steps, crop_zoom=1.0, p_bank=0.8,
        frames_per_video=FRAMES, rho=0.3 if motion else 0.5, **(clip if motion else {}),  # as measured
    )  # fmt: skip
    distill(cfg, overwrite=True, progress=False, model=copy.deepcopy(teacher))
    student = copy.deepcopy(teacher)
    load_lora(student, out / "lora.safetensors")
    return student


# -- evaluation -------------------------------------------------------------------------------------------------------
def frames_of(model, z: torch.Tensor) -> list[np.ndarray]:
    """Clips of latents (n, 4, F, 16, 16) -> per clip its uint8 RGB frames, upscaled 4x for the flow."""
    import cv2

    n = z.shape[0]
    grey = model.vae.decode(z.transpose(1, 2).flatten(0, 1)).sample[:, 0]  # (n F, 32, 32)
    pix = ((grey.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    big = [cv2.resize(p, (128, 128), interpolation=cv2.INTER_CUBIC) for p in pix]
    rgb = np.stack(big)[..., None].repeat(3, axis=-1)
    return list(rgb.reshape(n, FRAMES, 128, 128, 3))


def warp(inputs: list[np.ndarray], outputs: list[np.ndarray]) -> tuple[float, float]:
    """Mean warp error of the outputs over the clips, and the inputs' own floor."""
    from stdtrt.eval.flicker import warp_errors

    reports = [warp_errors(iter(a), iter(b)) for a, b in zip(inputs, outputs, strict=True)]
    return float(np.mean([r.output_warp_error for r in reports])), float(
        np.mean([r.input_warp_error for r in reports])
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--teacher-steps", type=int, default=1200,
                        help="image teacher steps (fidelity.py's teacher; 2500 there)")  # fmt: skip
    parser.add_argument("--motion-steps", type=int, default=400, help="motion-module training steps")
    parser.add_argument("--motion-batch", type=int, default=4, help="clips per motion-module step")
    parser.add_argument("--steps", type=int, default=400, help="student updates, each student")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--train", type=int, default=512, help="training clips")
    parser.add_argument("--eval", type=int, default=64, help="held-out clips")
    parser.add_argument("--tag", default="")
    args = parser.parse_args()

    from stdtrt import schedule

    images, labels = fidelity.digits()
    held, train = fidelity.split(len(images))  # the image teacher's split: held-out digits stay unseen
    t0 = time.perf_counter()
    image_teacher = fidelity.train_teacher(images[train], labels[train], args.teacher_steps)
    rng = np.random.default_rng(0)
    pick = rng.choice(train, size=args.train, replace=len(train) < args.train)
    train_clips = clips_of(images[pick], rng)
    teacher = motion_teacher(image_teacher, train_clips, labels[pick], args.motion_steps, args.motion_batch,
                             base=f"teacher-steps {args.teacher_steps}")  # fmt: skip
    print(f"teachers ready in {time.perf_counter() - t0:.0f} s", flush=True)
    data = write_videos(train_clips, labels[pick], CACHE / f"videos-{args.train}")

    eval_idx = held[: args.eval]
    eval_clips = clips_of(images[eval_idx], np.random.default_rng(1))
    z0 = latents(teacher, eval_clips)  # (n, 4, F, 16, 16)
    prompts = [f"digit {k}" for k in labels[eval_idx]]
    g = torch.Generator().manual_seed(1234)
    noise = torch.randn((len(eval_idx), 4, 1, 16, 16), generator=g).expand_as(z0).contiguous()  # one per clip
    abar = teacher.alphas_cumprod()
    reference = fidelity.walk(teacher, schedule.teacher_walk_plan(abar, fidelity.ETA), z0, noise, prompts,
                              fidelity.GUIDANCE)[-1]  # fmt: skip
    plan = schedule.student_plan(abar, fidelity.ETA, NFE)
    inputs = frames_of(teacher, z0)

    def per_frame(model, guidance):  # the image model on each frame of every clip
        flat = lambda t: t.transpose(1, 2).flatten(0, 1)  # noqa: E731
        out = fidelity.walk(model, plan, flat(z0), flat(noise), [p for p in prompts for _ in range(FRAMES)],
                            guidance)[-1]  # fmt: skip
        return out.unflatten(0, (len(prompts), FRAMES)).transpose(1, 2)

    rows = []

    def record(name, z, seed=None, seconds=None):
        warp_error, floor = warp(inputs, frames_of(teacher, z))
        rows.append({"contender": name, "seed": seed, "nfe": NFE, "mse": fidelity.mse(z, reference),
                     "warp_error": warp_error, "input_floor": floor, "distill_seconds": seconds})  # fmt: skip
        print(f"{name:<28} seed {seed}: MSE {rows[-1]['mse']:.5f}, warp error {warp_error:.3f} "
              f"(input {floor:.3f})", flush=True)  # fmt: skip

    record("video teacher full walk", reference)
    record("video teacher DDIM", fidelity.walk(teacher, plan, z0, noise, prompts, fidelity.GUIDANCE)[-1])
    record("image teacher DDIM per frame", per_frame(image_teacher, fidelity.GUIDANCE))
    for seed in range(args.seeds):
        t = time.perf_counter()
        student = distill_student(image_teacher, data, CACHE / "runs" / f"image-{seed}{args.tag}", False,
                                  args.steps, args.lr, args.rank, seed)  # fmt: skip
        record("image student per frame", per_frame(student, 1.0), seed, time.perf_counter() - t)
        t = time.perf_counter()
        student = distill_student(teacher, data, CACHE / "runs" / f"motion-{seed}{args.tag}", True,
                                  args.steps, args.lr, args.rank, seed)  # fmt: skip
        z = fidelity.walk(student, plan, z0, noise, prompts, 1.0)[-1]
        record("motion student", z, seed, time.perf_counter() - t)

    def mean(name, key):
        vals = [r[key] for r in rows if r["contender"] == name]
        return float(np.mean(vals))

    summary = {
        "warp_ratio_motion_vs_image_student": mean("motion student", "warp_error")
        / mean("image student per frame", "warp_error"),
        "mse_motion_student": mean("motion student", "mse"),
        "mse_teacher_ddim": mean("video teacher DDIM", "mse"),
    }
    summary["targets_met"] = {
        "warp_ratio <= 0.7": summary["warp_ratio_motion_vs_image_student"] <= 0.7,
        "mse below teacher DDIM": summary["mse_motion_student"] < summary["mse_teacher_ddim"],
    }
    print(json.dumps(summary, indent=2))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"motion_fidelity{args.tag}.json"
    out.write_text(json.dumps({"settings": vars(args), "rows": rows, "summary": summary}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
