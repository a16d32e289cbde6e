"""Does a few-step student land where the teacher's full trajectory from the same partial-noise state
lands? STD's central claim, measured at small scale without the large pretrained models.

1. Teacher: a small class-conditional UNet2DConditionModel trained here on scikit-learn's handwritten
   digits (8x8, upsampled to 32x32), condition dropout 10 % so classifier-free guidance works, the SD noise
   schedule (1000 scaled-linear steps, epsilon). VAE-free: the "latent" of a 32x32 digit is its 2x2
   space-to-depth rearrangement (4 x 16 x 16). The prompt is "digit k" through the tiny CLIP text encoder.
2. Reference: for held-out digits, fixed noise, x_start at eta 0.75, the teacher's full DDIM walk over
   every grid step from n_eta (38) to 0 at guidance 3.
3. Contenders at NFE 2, 4 and 8: the teacher's own DDIM with NFE steps; an LCM-style student (forward-noised
   states over the whole grid, x0 target); STD without the bank (p_bank 0: first-step alignment only); STD
   with the bank (rho 0.5, R = 19); STD with the bank and rho 0.25 (R = 10, "STD R10"). Students are distilled by stdtrt's own `distill` with the same updates, lr, LoRA rank and
   data, 3 seeds each.
4. Metric: MSE (and PSNR) to the reference, mean and spread over seeds; and the error of each
   intermediate state against the teacher's state at the same time.

    python benchmarks/fidelity.py                 # about an hour on 2 CPU cores; the teacher is cached
    python benchmarks/fidelity.py --steps 100 --seeds 1   # a quick smoke run
    python benchmarks/fidelity.py --contenders STD --tag=-b     # a subset, to run halves in parallel
    python benchmarks/fidelity.py --merge benchmarks/results/fidelity-{a,b}.json   # one table
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config

HERE = Path(__file__).resolve().parent
CACHE = HERE / "cache" / "fidelity"
RESULTS = HERE / "results"
ETA, GUIDANCE = 0.75, 3.0
NFES = (2, 4, 8)


# -- the VAE-free latent space ------------------------------------------------------------------------------
class _Dist:
    def __init__(self, mean):
        self.mean = mean

    def mode(self):
        return self.mean


class _Encoded:
    def __init__(self, mean):
        self.latent_dist = _Dist(mean)


class SpaceToDepthVAE(ModelMixin, ConfigMixin):
    """Identity "VAE": a grey 32x32 image <-> its 2x2 space-to-depth rearrangement, 4 x 16 x 16."""

    @register_to_config
    def __init__(self, scaling_factor: float = 1.0, block_out_channels: tuple[int, ...] = (1, 1)):
        super().__init__()
        self.register_buffer("_device_anchor", torch.zeros(1), persistent=False)

    def encode(self, images, return_dict=True):
        grey = images.mean(dim=1, keepdim=True)  # (B, 1, 32, 32)
        return _Encoded(F.pixel_unshuffle(grey, 2))  # (B, 4, 16, 16)

    def decode(self, z, return_dict=True):
        grey = F.pixel_shuffle(z, 2)
        out = grey.expand(-1, 3, -1, -1)
        return (out,) if not return_dict else type("D", (), {"sample": out})()


# -- data ---------------------------------------------------------------------------------------------------
def digits(side: int = 32):
    """(images (n, side, side) in [-1, 1], labels), the standard sklearn set (8x8) upsampled."""
    import cv2
    from sklearn.datasets import load_digits

    d = load_digits()
    up = np.stack([cv2.resize(im / 16.0, (side, side), interpolation=cv2.INTER_CUBIC) for im in d.images])
    return np.clip(up, 0, 1).astype(np.float32) * 2 - 1, d.target


def split(n: int, held_out: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """(held-out indices, training indices) of the n digits: one seeded permutation. The cached teacher is
    keyed by its training settings only, so every script must train it on this split."""
    order = np.random.default_rng(0).permutation(n)
    return order[:held_out], order[held_out:]


def write_training_folder(images, labels, folder: Path) -> Path:
    from PIL import Image

    if (folder / ".complete").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for i, (im, k) in enumerate(zip(images, labels, strict=True)):
        Image.fromarray(((im + 1) * 127.5).round().astype(np.uint8)).convert("RGB").save(
            folder / f"{i:05d}.png"
        )
        (folder / f"{i:05d}.txt").write_text(f"digit {k}")
    (folder / ".complete").touch()
    return folder


# -- the teacher --------------------------------------------------------------------------------------------
def teacher_unet(sample_size: int = 16):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(64, 96, 128),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=16,
    )


def build_model(unet):
    from diffusers import StableDiffusionPipeline

    from stdtrt.models import presets
    from stdtrt.models.load import LoadedModel, placement_for

    base = presets.build("tiny-sd")
    pipe = StableDiffusionPipeline(
        vae=SpaceToDepthVAE(),
        text_encoder=base.text_encoder,
        tokenizer=base.tokenizer,
        unet=unet.eval(),
        scheduler=base.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    for m in (pipe.unet, pipe.text_encoder):
        m.requires_grad_(False)
    placement = placement_for(torch.device("cpu"), torch.float32, "sd", pipe.vae.config)
    return LoadedModel(pipe=pipe, name="digits-teacher", kind="sd", placement=placement)


def train_teacher(images, labels, steps: int, batch: int = 32, lr: float = 1e-3):
    """Epsilon-prediction training on the SD schedule with 10 % condition dropout; cached on disk (train it
    on `split()`'s training part: the key does not see which digits it got)."""
    from safetensors.torch import load_file

    key = hashlib.sha256(f"{steps}:{batch}:{lr}:{images.shape}:v1".encode()).hexdigest()[:12]
    path = CACHE / f"teacher-{key}.safetensors"
    unet = teacher_unet(images.shape[-1] // 2)  # the latent side: 2x2 space-to-depth
    model = build_model(unet)
    if path.exists():
        unet.load_state_dict(load_file(str(path)))
        return model
    z_all = model.vae.encode(torch.from_numpy(images)[:, None].expand(-1, 3, -1, -1)).latent_dist.mean
    fit_epsilon(model, list(unet.parameters()), z_all, labels, steps, batch, lr, path, "teacher")
    return model


def fit_epsilon(
    model, params, z_all, labels, steps: int, batch: int, lr: float, path: Path, desc: str,
    control=None, maps=None, mininterval: float = 0.1,
):  # fmt: skip
    """Train `params` of model.unet to predict the noise of z_all's latents (images, or clips (n, 4, F, h,
    w) for a motion UNet) under "digit k" prompts, 10 % of them dropped to the empty prompt (so that
    classifier-free guidance works); the UNet's weights are then saved to `path`. With `control` (a
    models/controlnet.Control), `params` are its ControlNet's, trained beside the frozen UNet on `maps`
    (n, 3, H, W) in [0, 1], one per latent; its weights are what is saved. `mininterval`: tqdm's."""
    from safetensors.torch import save_file
    from tqdm import tqdm

    from stdtrt import schedule
    from stdtrt.models.conditioning import Conditioning, encode_prompt

    unet, abar = model.unet, model.alphas_cumprod()
    trained = unet if control is None else control.net
    prompts = [f"digit {k}" for k in range(10)] + [""]
    table = encode_prompt(model.pipe, prompts, 32, 32).embeds  # (11, 77, 32)
    y_all = torch.from_numpy(labels).long()
    g = torch.Generator().manual_seed(0)
    unet.train().requires_grad_(False)
    trained.train()
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    bar = tqdm(range(steps), desc=desc, unit="step", mininterval=mininterval)
    for _ in bar:
        idx = torch.randint(0, len(z_all), (batch,), generator=g)
        z0, y = z_all[idx], y_all[idx]
        y = torch.where(torch.rand(batch, generator=g) < 0.1, torch.full_like(y, 10), y)  # condition dropout
        t = torch.randint(0, len(abar), (batch,), generator=g)
        eps = torch.randn(z0.shape, generator=g)
        a, b = schedule.coefficients_tensor(abar, t, z0.ndim)
        x = schedule.x_start(z0, eps, a, b)
        kwargs = Conditioning(table[y]).for_latents(x).unet_kwargs()  # clips: the prompt once per frame
        if control is not None:
            kwargs.update(control.residuals(x, t, kwargs, maps[idx]))
        loss = F.mse_loss(unet(x, t, **kwargs).sample, eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
    for net in (unet, trained):
        net.eval().requires_grad_(False)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, str(path))


# -- sampling -----------------------------------------------------------------------------------------------
@torch.no_grad()
def walk(model, plan, z0, noise, prompts, guidance: float, generator=None) -> list[torch.Tensor]:
    """States after each jump of `plan` (the last is the clean latent), through stdtrt's own Student:
    one Student per distinct prompt, the elements sharing it batched (`generator`: the re-noising of a
    plan with gamma > 0)."""
    from stdtrt import schedule
    from stdtrt.runtime.student import Student

    out = torch.zeros(plan.nfe, *z0.shape)
    for prompt in sorted(set(prompts)):
        sel = [i for i, p in enumerate(prompts) if p == prompt]
        student = Student(model, plan, prompt, 32, 32, negative_prompt="", guidance=guidance)
        x = schedule.x_start(z0[sel], noise[sel], plan.a_start, plan.b_start)
        for i in range(plan.nfe):
            x = student.step(x, i, generator)
            out[i, sel] = x
    return list(out)


def mse(a, b) -> float:
    return float(((a - b) ** 2).mean())


def psnr(a, b) -> float:
    # latents are the images' pixels rearranged, range [-1, 1]: peak-to-peak 2
    return 10 * math.log10(4.0 / max(mse(a, b), 1e-12))


# -- the students ---------------------------------------------------------------------------------------------
CONTENDERS = {
    "LCM-style": dict(mode="lcm", p_bank=0.0),
    "STD without bank": dict(p_bank=0.0),
    "STD": dict(p_bank=0.8),
    "STD R10": dict(p_bank=0.8, rho=0.25),  # the window matched to NFE 4's jumps (R = 10 instead of 19)
}


def distill_student(
    teacher,
    data: Path,
    name: str,
    seed: int,
    steps: int,
    lr: float,
    rank: int,
    out: Path,
    zoom: float = 1.0,
    rho: float = 0.5,
):
    from stdtrt.config import DistillConfig
    from stdtrt.distill.trainer import distill
    from stdtrt.models.lora import load_lora

    cfg = DistillConfig(
        model="digits-teacher",
        data=str(data),
        out=str(out),
        strength=ETA,
        resolution=32,
        batch_size=16,
        bank_size=64,
        lora_rank=rank,
        lora_alpha=float(rank),
        lr=lr,
        max_steps=steps,
        warmup_steps=steps // 20,
        w_min=GUIDANCE - 1,
        w_max=GUIDANCE - 1,
        seed=seed,
        compile_loss=False,
        log_every=max(1, steps // 10),
        checkpoint_every=10 * steps,
        crop_zoom=zoom,
        **{"rho": rho, **CONTENDERS[name]},
    )
    distill(cfg, overwrite=True, progress=False, model=copy.deepcopy(teacher))
    student = copy.deepcopy(teacher)
    load_lora(student, out / "lora.safetensors")
    return student


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--teacher-steps", type=int, default=2500, help="teacher training steps")
    parser.add_argument("--steps", type=int, default=600, help="student updates per contender")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--eval", type=int, default=128, help="held-out digits")
    parser.add_argument("--tag", default="", help="suffix for the result files")
    parser.add_argument(
        "--contenders",
        default=",".join(CONTENDERS),
        help=f"comma-separated, of: {', '.join(CONTENDERS)}",
    )
    parser.add_argument("--rho", type=float, default=0.5, help="STD target window R = ceil(50 eta rho)")
    parser.add_argument(
        "--zoom", type=float, default=1.0, help="distillation crop zoom (1: the digits as they are)"
    )
    parser.add_argument(
        "--merge",
        nargs="+",
        metavar="JSON",
        help="combine result files of the same settings (e.g. contenders run in parallel) into fidelity{tag}",
    )
    args = parser.parse_args()
    if args.merge:
        return merge(args)

    from stdtrt import schedule

    torch.set_num_threads(max(1, torch.get_num_threads()))
    images, labels = digits()
    held, train = split(len(images), args.eval)
    data = write_training_folder(images[train], labels[train], CACHE / "train")
    t0 = time.perf_counter()
    teacher = train_teacher(images[train], labels[train], args.teacher_steps)
    print(f"teacher ready in {time.perf_counter() - t0:.0f} s")

    abar = teacher.alphas_cumprod()
    z0 = teacher.vae.encode(torch.from_numpy(images[held])[:, None].expand(-1, 3, -1, -1)).latent_dist.mean
    prompts = [f"digit {k}" for k in labels[held]]
    noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(1234))
    walk_plan = schedule.teacher_walk_plan(abar, ETA)
    ref_states = walk(teacher, walk_plan, z0, noise, prompts, GUIDANCE)
    ref_at = dict(zip(walk_plan.targets, ref_states, strict=True))  # teacher state at each landing time
    reference = ref_states[-1]

    rows = []

    def evaluate(name: str, model, guidance: float, seed: int | None):
        for nfe in NFES:
            plan = schedule.student_plan(abar, ETA, nfe)
            states = walk(model, plan, z0, noise, prompts, guidance)
            inter = [mse(s, ref_at[t]) for s, t in zip(states, plan.targets, strict=True)]
            rows.append(
                {
                    "contender": name,
                    "nfe": nfe,
                    "seed": seed,
                    "mse": mse(states[-1], reference),
                    "psnr": psnr(states[-1], reference),
                    "intermediate_mse": inter,
                    "targets": list(plan.targets),
                }
            )

    evaluate("teacher DDIM", teacher, GUIDANCE, None)
    for name in args.contenders.split(","):
        for seed in range(args.seeds):
            t0 = time.perf_counter()
            student = distill_student(
                teacher,
                data,
                name,
                seed,
                args.steps,
                args.lr,
                args.rank,
                CACHE / "runs" / f"{name.replace(' ', '_')}-{seed}{args.tag}",
                zoom=args.zoom,
                rho=args.rho,
            )
            evaluate(name, student, 1.0, seed)
            print(
                f"{name} seed {seed}: distilled and evaluated in {time.perf_counter() - t0:.0f} s", flush=True
            )

    write_results(rows, args)


def write_results(rows, args) -> None:
    names = ["teacher DDIM", *args.contenders.split(",")]
    summary = summarise(rows, names)
    print_table(summary, args, names)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"fidelity{args.tag}"
    stem.with_suffix(".json").write_text(
        json.dumps({"args": vars(args), "rows": rows, "summary": summary}, indent=2)
    )
    plot(summary, names, stem.with_suffix(".png"))


def merge(args) -> None:
    """One table from several result files; refuses files whose training or evaluation settings differ."""
    same = ("teacher_steps", "steps", "lr", "rank", "seeds", "eval")
    parts = [json.loads(Path(f).read_text()) for f in args.merge]
    for f, part in zip(args.merge[1:], parts[1:], strict=True):
        diff = [k for k in same if part["args"][k] != parts[0]["args"][k]]
        if diff:
            raise SystemExit(f"{f}: other settings than {args.merge[0]} ({', '.join(diff)})")
    teacher = [r for r in parts[0]["rows"] if r["contender"] == "teacher DDIM"]
    rows, contenders = list(teacher), []
    for part in parts:
        for name in part["args"]["contenders"].split(","):
            if name not in contenders:
                contenders.append(name)
                rows += [r for r in part["rows"] if r["contender"] == name]
    for k in same:
        setattr(args, k, parts[0]["args"][k])
    args.contenders = ",".join(contenders)
    args.merged_from = [Path(f).name for f in args.merge]
    write_results(rows, args)


def summarise(rows, names):
    out = []
    for name in names:
        for nfe in NFES:
            vals = [r for r in rows if r["contender"] == name and r["nfe"] == nfe]
            m = np.array([r["mse"] for r in vals])
            p = np.array([r["psnr"] for r in vals])
            inter = np.array([r["intermediate_mse"] for r in vals]).mean(axis=0).tolist()
            out.append(
                {
                    "contender": name,
                    "nfe": nfe,
                    "mse_mean": float(m.mean()),
                    "mse_std": float(m.std()),
                    "psnr_mean": float(p.mean()),
                    "psnr_std": float(p.std()),
                    "runs": len(vals),
                    "intermediate_mse": inter,
                    "targets": vals[0]["targets"],
                }
            )
    return out


def print_table(summary, args, names) -> None:
    print(
        f"\nMSE to the teacher's full {ETA} trajectory (lower is better), mean ± std over "
        f"{args.seeds} seeds; {args.steps} student updates, lr {args.lr}, rank {args.rank}"
    )
    print(f"{'contender':<18}" + "".join(f"{'NFE ' + str(n):>22}" for n in NFES))
    for name in names:
        cells = []
        for nfe in NFES:
            r = next(s for s in summary if s["contender"] == name and s["nfe"] == nfe)
            cells.append(f"{r['mse_mean']:.5f} ± {r['mse_std']:.5f}".rjust(22))
        print(f"{name:<18}" + "".join(cells))
    print(f"{'PSNR (dB)':<18}" + "".join(f"{'':>22}" for _ in NFES))
    for name in names:
        cells = [
            f"{next(s for s in summary if s['contender'] == name and s['nfe'] == n)['psnr_mean']:.2f}".rjust(
                22
            )
            for n in NFES
        ]
        print(f"{name:<18}" + "".join(cells))


def plot(summary, names, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name in names:
        pts = [s for s in summary if s["contender"] == name]
        axes[0].errorbar(
            [s["nfe"] for s in pts],
            [s["mse_mean"] for s in pts],
            yerr=[s["mse_std"] for s in pts],
            marker="o",
            capsize=3,
            label=name,
        )
        four = next(s for s in pts if s["nfe"] == 4)
        axes[1].plot(four["targets"], four["intermediate_mse"], marker="o", label=name)
    axes[0].set(
        xlabel="NFE",
        ylabel="MSE to the teacher's full trajectory",
        yscale="log",
        xticks=list(NFES),
        title=f"final state, eta {ETA}",
    )
    axes[1].set(
        xlabel="timestep of the state (NFE 4)",
        ylabel="MSE to the teacher's state at that time",
        yscale="log",
        title="intermediate states, NFE 4",
    )
    axes[1].invert_xaxis()
    for ax in axes:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
