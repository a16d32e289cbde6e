"""What a ControlNet costs and what it keeps, measured (issue 24, part 5).

1. `speed`: end-to-end fps of the --model torch stream (random-sd15, the SD 1.5 architecture with random
   weights, the tiny VAE at TAESD's size: random-taesd, NFE 4, fp32 on the CPU) on the sample clip the
   benchmarks use (io/samples: photographs panned and zoomed), at each size, in one run: without a
   ControlNet, and with random-controlnet-sd15 (SD 1.5's ControlNet size) reading Canny maps and depth
   maps (a Depth Anything V2 Small of random weights at its real size: the real cost). Each preprocessor
   is also timed alone per frame (Canny, that depth model, tiny-depth). The stylized clips' edge F1 against
   the input's (eval/structure.py) is printed too: with random weights it says nothing of what a trained
   ControlNet keeps, only that the path runs.
2. `digits`: how much structure a *trained* ControlNet keeps. The digits teacher of benchmarks/fidelity.py
   (at 16 px, as benchmarks/guidance_sweep.py trains it to fit a CPU thread; cached) and a ControlNet made from its UNet (diffusers' ControlNetModel.from_unet, its
   conditioning embedding downsampling by 2 as the space-to-depth "VAE" does) trained here with the
   denoising loss on the Canny edges of the training digits (the UNet frozen, 10 % empty prompts). Then
   held-out digits are stylized by the teacher itself (NFE 4 over the student grid, guidance 3, through
   stdtrt's Student) with and without the ControlNet, at strength 0.75 and 1.0, with the right prompt and
   with the wrong one ("digit k+1": a style that pulls the content away), and the output's edges are
   scored against the input's (edge F1, tolerance 1 px).

    python benchmarks/controlnet.py speed --sizes 256,512   # ~35 min on 2 loaded cores, one thread
    python benchmarks/controlnet.py digits                   # ~15 min (teacher 10, ControlNet 4; both cached)
Writes benchmarks/results/controlnet-{speed,digits}.{json,txt}.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import tempfile
import time
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from stdtrt.eval.structure import edge_f1, frames_edge_f1  # noqa: E402

HERE = Path(__file__).resolve().parent
CACHE = HERE / "cache"
RESULTS = HERE / "results"
CANNY = (100, 200)  # --canny-low/--canny-high defaults (the speed part)
DIGIT_CANNY = (50, 150)  # the digits are soft (8x8 upsampled): lower thresholds find their strokes


# -- 1. speed -------------------------------------------------------------------------------------------------
def depth_v2_small() -> Path:
    """Depth Anything V2 Small's architecture (DINOv2 ViT-S/14 backbone, DPT head) with seeded random
    weights, written once: what --controlnet depth costs by default, without the hub."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    folder = CACHE / "random-depth-anything-v2-small"
    if (folder / "config.json").is_file():
        return folder
    backbone = Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                            image_size=518, patch_size=14, out_indices=[3, 6, 9, 12],
                            reshape_hidden_states=False, apply_layernorm=True)  # fmt: skip
    config = DepthAnythingConfig(backbone_config=backbone, neck_hidden_sizes=[48, 96, 192, 384], fusion_hidden_size=64,
                                 head_hidden_size=32, reassemble_hidden_size=384, patch_size=14,
                                 reassemble_factors=[4, 2, 1, 0.5], depth_estimation_type="relative")  # fmt: skip
    torch.manual_seed(0)
    DepthAnythingForDepthEstimation(config).save_pretrained(folder)
    return folder


def time_preprocessors(frames: list[np.ndarray], depth_folder: Path) -> dict[str, float]:
    """ms per frame of each preprocessor alone (the first call not counted)."""
    from stdtrt.models.control_maps import DepthMaps, canny

    out = {}
    for name, fn in (
        ("canny", lambda rgb: canny(rgb, *CANNY)),
        ("depth (Depth Anything V2 Small size)", DepthMaps(str(depth_folder))),
        ("depth (tiny-depth)", DepthMaps("tiny-depth")),
    ):
        fn(frames[0])
        start = time.perf_counter()
        for rgb in frames:
            fn(rgb)
        out[name] = 1000 * (time.perf_counter() - start) / len(frames)
    return out


def speed(args) -> None:
    from stdtrt import schedule
    from stdtrt.config import StylizeConfig
    from stdtrt.eval.bench import machine, make_clip, steady_fps
    from stdtrt.io.video import probe, read_frames
    from stdtrt.models.control_maps import ControlMaps
    from stdtrt.models.controlnet import setup_control
    from stdtrt.models.load import load_model
    from stdtrt.runtime.backends.torch import TorchBackend
    from stdtrt.runtime.stream import StreamRunner
    from stdtrt.runtime.stylize import run_video

    depth_folder = depth_v2_small()
    rows, preprocess = [], {}
    variants = {"none": None, "ControlNet + canny": "canny", "ControlNet + depth": "depth"}
    for size in (int(s) for s in args.sizes.split(",")):
        frames = args.frames if size <= 256 else args.frames_512
        with tempfile.TemporaryDirectory(prefix="stdtrt-cn.") as tmp:
            info = probe(make_clip(Path(tmp), frames, size, size))
            inputs = [rgb for rgb, _ in read_frames(info)]
            preprocess[size] = time_preprocessors(inputs, depth_folder)
            print(f"{size}: preprocessors alone (ms/frame): {preprocess[size]}", flush=True)
            model = load_model("random-sd15", device="cpu", precision="fp32")
            model.use_vae("random-taesd")
            for label, kind in variants.items():
                cfg = StylizeConfig(model="random-sd15", vae="random-taesd", prompt="an oil painting", width=size,
                                    height=size, nfe=4, device="cpu", precision="fp32", controlnet=kind,
                                    controlnet_model="random-controlnet-sd15" if kind else None,
                                    depth_model=str(depth_folder))  # fmt: skip
                plan = schedule.student_plan(model.alphas_cumprod(), cfg.strength, cfg.nfe)
                control = setup_control(cfg, model)
                backend = TorchBackend.from_model(
                    model, plan, cfg.prompt, "", 1.0, size, size, control=control
                )
                maps = None if control is None else ControlMaps(control.spec, size, size, backend.device)
                runner = StreamRunner(backend, maps=maps)
                for name, inputs_ in backend.example_inputs().items():  # the first call allocates
                    getattr(backend, name)(*inputs_)
                out = Path(tmp) / f"out-{kind}.mp4"
                result = run_video(runner, info, out, cfg, progress=False)
                outputs = [rgb for rgb, _ in read_frames(probe(out))]
                row = {
                    "size": size, "variant": label, "frames": frames, "fps": steady_fps(result, 4),
                    "clip_fps": result.fps, "stages_ms": result.stages,
                    "edge_f1": frames_edge_f1(inputs, outputs, *CANNY, tolerance=args.tolerance),
                }  # fmt: skip
                rows.append(row)
                print(f"{size} {label}: {row['fps']:.4f} fps, stages {row['stages_ms']}", flush=True)
                del backend, runner, control
    where = machine()
    text = io.StringIO()
    with redirect_stdout(text):
        print(f"ControlNet cost, random-sd15 + random-taesd, NFE 4, fp32, torch stream (--model), on {where}")
        print(
            f"{'size':>5} {'variant':<20} {'fps':>8} {'vs none':>8} {'unet ms':>9} {'maps ms':>8} {'edge F1':>8}"
        )
        for r in rows:
            base = next(b for b in rows if b["size"] == r["size"] and b["variant"] == "none")
            maps_ms = r["stages_ms"].get("control_map")
            print(f"{r['size']:>5} {r['variant']:<20} {r['fps']:>8.4f} {r['fps'] / base['fps']:>7.2f}x "
                  f"{r['stages_ms']['unet']:>9.0f} {'-' if maps_ms is None else f'{maps_ms:.1f}':>8} "
                  f"{r['edge_f1']:>8.3f}")  # fmt: skip
        print("preprocessors alone, ms per frame:")
        for size, times in preprocess.items():
            print(f"  {size}: " + ", ".join(f"{k} {v:.1f}" for k, v in times.items()))
        print(f"fps: steady state, {args.frames} frames at 256 and {args.frames_512} at 512; maps ms: the control-map "
              f"stage per frame (its own thread, beside the networks); edge F1: Canny {CANNY} of each output "
              f"frame against its input's, tolerance {args.tolerance} px (random weights: no structure is "
              f"expected to be kept)")  # fmt: skip
    print(text.getvalue())
    write("controlnet-speed", {"machine": where, "args": vars(args), "rows": rows, "preprocessors_ms": preprocess},
          text.getvalue())  # fmt: skip


# -- 2. digits ------------------------------------------------------------------------------------------------
def edges(rgb: np.ndarray) -> np.ndarray:
    """Canny maps (n, s, s, 3) uint8 of RGB digits (n, s, s, 3) uint8."""
    from stdtrt.models.control_maps import canny

    return np.stack([canny(im, *DIGIT_CANNY) for im in rgb])


def to_rgb(images: np.ndarray) -> np.ndarray:
    """Grey digits in [-1, 1] (n, s, s) -> RGB uint8 (n, s, s, 3)."""
    grey = ((np.asarray(images) + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=3)


def make_control(teacher, steps: int, lr: float, z_all, labels, maps, batch: int = 32):
    """A ControlNet from the teacher's UNet trained on the digits' own edges (cached by its settings)."""
    import fidelity as fid
    from diffusers import ControlNetModel
    from safetensors.torch import load_file

    from stdtrt.models.control_maps import MapSpec, to_unit
    from stdtrt.models.controlnet import Control

    torch.manual_seed(0)
    net = ControlNetModel.from_unet(teacher.unet, conditioning_embedding_out_channels=(16, 32))
    control = Control(net, "digits-controlnet", 1.0, MapSpec("canny", *DIGIT_CANNY), sdxl=False)
    key = hashlib.sha256(f"{steps}:{lr}:{batch}:{DIGIT_CANNY}:{tuple(z_all.shape)}:v1".encode()).hexdigest()[
        :12
    ]
    path = CACHE / "fidelity" / f"controlnet-{key}.safetensors"
    if path.exists():
        net.load_state_dict(load_file(str(path)))
        net.eval().requires_grad_(False)
        return control, 0.0
    start = time.perf_counter()
    fid.fit_epsilon(teacher, list(net.parameters()), z_all, labels, steps, batch, lr, path, "controlnet",
                    control=control, maps=to_unit(torch.from_numpy(maps)), mininterval=10)  # fmt: skip
    return control, time.perf_counter() - start


@torch.no_grad()
def stylize_digits(teacher, plan, z0, noise, prompts, maps, control, guidance: float) -> np.ndarray:
    """Outputs (n, s, s, 3) uint8 of the teacher's NFE-step img2img, one Student per prompt."""
    from stdtrt.runtime.student import Student

    side = 2 * z0.shape[-1]  # the space-to-depth latent is half the digit's side
    out = torch.zeros(len(z0), 3, side, side)
    for prompt in sorted(set(prompts)):
        sel = [i for i, p in enumerate(prompts) if p == prompt]
        student = Student(teacher, plan, prompt, side, side, "", guidance, control=control)
        m = None if control is None else torch.from_numpy(maps[sel])
        out[sel] = student.decode(student.sample(z0[sel], noise[sel], maps=m)).float()
    grey = out.mean(dim=1).clamp(-1, 1).numpy()
    return to_rgb(grey)


def digits(args) -> None:
    import fidelity as fid

    from stdtrt import schedule
    from stdtrt.eval.bench import machine

    torch.set_num_threads(max(1, torch.get_num_threads()))
    images, labels = fid.digits(args.side)
    held, train = fid.split(len(images), args.eval)
    t0 = time.perf_counter()
    teacher = fid.train_teacher(images[train], labels[train], args.teacher_steps)
    teacher_s = time.perf_counter() - t0

    def to_latent(ims):  # 2x2 space-to-depth: (n, 4, 16, 16)
        return teacher.vae.encode(torch.from_numpy(ims)[:, None].expand(-1, 3, -1, -1)).latent_dist.mean

    maps_train, maps_held = edges(to_rgb(images[train])), edges(to_rgb(images[held]))
    control, train_s = make_control(
        teacher, args.steps, args.lr, to_latent(images[train]), labels[train], maps_train
    )
    z0 = to_latent(images[held])
    noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(1234))
    inputs = to_rgb(images[held])
    rows = []
    for strength in (0.75, 1.0):
        plan = schedule.student_plan(teacher.alphas_cumprod(), strength, args.nfe)
        for prompt_kind, ks in (("right", labels[held]), ("wrong (k+1)", (labels[held] + 1) % 10)):
            prompts = [f"digit {k}" for k in ks]
            for with_cn in (False, True):
                out = stylize_digits(teacher, plan, z0, noise, prompts, maps_held, control if with_cn else None,
                                     args.guidance)  # fmt: skip
                pairs = list(zip(maps_held, edges(out), strict=True))
                f1 = [edge_f1(a, b, args.tolerance) for a, b in pairs]
                exact = [edge_f1(a, b, 0) for a, b in pairs]
                mse = float((((out.astype(np.float32) - inputs) / 127.5) ** 2).mean())
                rows.append({"strength": strength, "prompt": prompt_kind, "controlnet": with_cn,
                             "edge_f1": float(np.mean(f1)), "edge_f1_std": float(np.std(f1)), "edge_f1_exact": float(np.mean(exact)),
                             "mse_to_input": mse})  # fmt: skip
                print(rows[-1], flush=True)
    where = machine()
    text = io.StringIO()
    with redirect_stdout(text):
        print(f"Structure kept on the digits teacher ({args.eval} held-out {args.side}x{args.side} digits, NFE {args.nfe}, guidance "
              f"{args.guidance}): edge F1 (Canny {DIGIT_CANNY}, tolerance {args.tolerance} px) of output vs input; "
              f"ControlNet trained {args.steps} steps (lr {args.lr}) on the training digits' edges, on {where}")  # fmt: skip
        print(f"{'strength':>8} {'prompt':<12} {'F1 without':>11} {'F1 with CN':>11} {'gain':>7} {'exact w/o':>10} {'exact CN':>9} "
              f"{'MSE without':>12} {'MSE with CN':>12}")  # fmt: skip
        for strength in (0.75, 1.0):
            for prompt_kind in ("right", "wrong (k+1)"):
                a, b = (next(r for r in rows if r["strength"] == strength and r["prompt"] == prompt_kind
                             and r["controlnet"] == c) for c in (False, True))  # fmt: skip
                print(f"{strength:>8} {prompt_kind:<12} {a['edge_f1']:>11.3f} {b['edge_f1']:>11.3f} "
                      f"{b['edge_f1'] - a['edge_f1']:>+7.3f} "
                      f"{a['edge_f1_exact']:>10.3f} {b['edge_f1_exact']:>9.3f} {a['mse_to_input']:>12.4f} {b['mse_to_input']:>12.4f}")  # fmt: skip
        print(f"teacher {'cached' if teacher_s < 30 else f'trained in {teacher_s:.0f} s'} ({args.teacher_steps} steps); "
              f"ControlNet {'cached' if not train_s else f'trained in {train_s:.0f} s'}; MSE: pixels in [-1, 1]")  # fmt: skip
    print(text.getvalue())
    write("controlnet-digits", {"machine": where, "args": vars(args), "rows": rows}, text.getvalue())


def write(stem: str, data: dict, table: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(data, indent=2) + "\n")
    (RESULTS / f"{stem}.txt").write_text(table)
    print(f"wrote {RESULTS / stem}.json and .txt")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="part", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--sizes", default="256,512")
    s.add_argument("--frames", type=int, default=8, help="clip frames at 256")
    s.add_argument("--frames-512", type=int, default=6, help="clip frames at 512")
    s.add_argument("--tolerance", type=int, default=1)
    d = sub.add_parser("digits")
    d.add_argument("--side", type=int, default=16, help="digit side (the latent is half of it)")
    d.add_argument("--teacher-steps", type=int, default=1500)
    d.add_argument("--steps", type=int, default=800, help="ControlNet training steps")
    d.add_argument("--lr", type=float, default=1e-3)
    d.add_argument("--eval", type=int, default=128)
    d.add_argument("--nfe", type=int, default=4)
    d.add_argument("--guidance", type=float, default=3.0)
    d.add_argument("--tolerance", type=int, default=1)
    args = ap.parse_args()
    speed(args) if args.part == "speed" else digits(args)


if __name__ == "__main__":
    main()
