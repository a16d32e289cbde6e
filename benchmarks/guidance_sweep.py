"""STD against LCM-, TCD- and PCM-style students at the teacher's guidance 1, 3, 6 and 8 (the paper's claim:
the baselines fall apart as guidance grows, STD keeps to the teacher), at NFE 2, 4 and 8.

The digits teacher of benchmarks/fidelity.py, at 16 px (latents 4 x 8 x 8) so that the whole sweep fits in
about an hour on one CPU thread. For each guidance g:
1. Reference: the teacher's full DDIM walk from x_start (eta 0.75, grid step 38) at guidance g (CFG form
   e_u + g (e_c - e_u)), for 128 held-out digits with fixed noise.
2. Students, all by stdtrt's own `distill` on the same data, updates, lr, LoRA rank and seed, with the
   teacher at that guidance (the LCM form w = g - 1 during training, as the paper trains); evaluated at
   guidance 1 (a student has the guidance baked in) on the plan `stylize` runs. The modes are those of
   stdtrt/distill/step.py (MODES): LCM-style, TCD-style (evaluated with TCD's gamma 0.3, and with gamma 0),
   PCM-style (phases = the NFE-4 plan), STD without the bank, STD (rho 0.5), STD R10 (rho 0.25) and STD
   with the issue-25 training fix (`--teacher-target --eps-units`, rho 0.25).
3. Metrics: MSE and PSNR of the final state to the reference; the error of each intermediate state against
   the teacher's state at the same time, and of each single jump started from the teacher's own state
   (local error: tells a student's per-jump error from the error it accumulates); the outputs' contrast
   (pixel standard deviation, relative to the reference's) and overshoot (the mean amount by which pixels
   leave [-1, 1]), the washed-out or over-saturated look the paper reports for the baselines at high guidance.

    OMP_NUM_THREADS=1 python benchmarks/guidance_sweep.py      # ~1 h on one thread; resumable (cached rows)
    python benchmarks/guidance_sweep.py --guidances 3 --contenders "STD R10,STD fixed" --tag=-fix
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import fidelity as fid
import numpy as np
import torch

ETA = fid.ETA
NFES = (2, 4, 8)
START_T = 779  # t_{n_eta} at eta 0.75: where every plan starts (schedule.start_index)
TCD_GAMMA = 0.3  # TCD's default for strategic stochastic sampling (diffusers' TCDScheduler: eta = 0.3)

# name -> (distill settings, evaluation gammas: the first is the contender's own, the rest extra rows)
CONTENDERS = {
    "LCM-style": (dict(mode="lcm", p_bank=0.0), (0.0,)),
    "TCD-style": (dict(mode="tcd", p_bank=0.0), (TCD_GAMMA, 0.0)),
    "PCM-style": (dict(mode="pcm", p_bank=0.0, nfe_hint=4), (0.0,)),
    "STD without bank": (dict(p_bank=0.0), (0.0,)),
    "STD": (dict(p_bank=0.8, rho=0.5), (0.0,)),
    "STD R10": (dict(p_bank=0.8, rho=0.25), (0.0,)),
    "STD fixed": (dict(p_bank=0.8, rho=0.25, teacher_target=True, eps_units=True), (0.0,)),
    # the fix's two halves alone (issue 25, part 3); not in the default sweep
    "STD R10 teacher-target": (dict(p_bank=0.8, rho=0.25, teacher_target=True), (0.0,)),
    "STD R10 eps-units": (dict(p_bank=0.8, rho=0.25, eps_units=True), (0.0,)),
}
# the adversarial branch (tiny-dinov2: random weights, offline) decoding with the digits' own "VAE" (an
# exact rearrangement) or with TAESD's architecture (random weights; issue 25, part 4); not in the default
FIXED = CONTENDERS["STD fixed"][0]
ADV = dict(adv_weight=0.7, adv_model="tiny-dinov2", adv_max_images=4)  # 4 of 16 per step: CPU time
CONTENDERS["STD fixed + adv"] = ({**FIXED, **ADV}, (0.0,))
CONTENDERS["STD fixed + adv TAESD"] = ({**FIXED, **ADV, "adv_vae": "random-taesd"}, (0.0,))
DEFAULT = [n for n in CONTENDERS if not n.startswith("STD R10 ") and "+ adv" not in n]


def row_name(name: str, gamma: float, own: float) -> str:
    return name if gamma == own else f"{name} (gamma {gamma:g})"


def distill_student(teacher, data: Path, name: str, g: float, seed: int, args, out: Path):
    import copy

    from stdtrt.config import DistillConfig
    from stdtrt.distill.trainer import distill
    from stdtrt.models.lora import load_lora

    settings, _ = CONTENDERS[name]
    cfg = DistillConfig(
        model="digits-teacher",
        data=str(data),
        out=str(out),
        strength=ETA,
        resolution=args.side,
        batch_size=args.batch,
        bank_size=4 * args.batch,
        lora_rank=args.rank,
        lora_alpha=float(args.rank),
        lr=args.lr,
        max_steps=args.steps,
        warmup_steps=args.steps // 20,
        w_min=g - 1,
        w_max=g - 1,
        seed=seed,
        compile_loss=False,
        log_every=max(1, args.steps // 10),
        checkpoint_every=10 * args.steps,
        crop_zoom=1.0,
        **settings,
    )
    result = distill(cfg, overwrite=True, progress=False, model=copy.deepcopy(teacher))
    student = copy.deepcopy(teacher)
    load_lora(student, out / "lora.safetensors")
    return student, result.seconds / result.steps


def image_stats(z, reference) -> dict:
    """Of latents that are the images' pixels rearranged: contrast (pixel std per image, mean over images)
    relative to the reference's, overshoot (mean amount by which pixels leave [-1, 1]: over-saturation)
    and the mean level."""
    std = z.flatten(1).std(dim=1).mean()
    ref_std = reference.flatten(1).std(dim=1).mean()
    return {
        "contrast": float(std / ref_std),
        "overshoot": float((z.abs() - 1).clamp(min=0).mean()),
        "mean": float(z.mean()),
    }


class Evaluator:
    """The reference walk at one guidance and the metrics of any model against it."""

    def __init__(self, teacher, z0, noise, prompts, g: float):
        from stdtrt import schedule

        self.z0, self.noise, self.prompts = z0, noise, prompts
        self.abar = teacher.alphas_cumprod()
        walk_plan = schedule.teacher_walk_plan(self.abar, ETA)
        states = fid.walk(teacher, walk_plan, z0, noise, prompts, g)
        x_start = schedule.x_start(z0, noise, walk_plan.a_start, walk_plan.b_start)
        self.ref_at = {walk_plan.timesteps[0]: x_start, **dict(zip(walk_plan.targets, states, strict=True))}
        self.reference = states[-1]

    def rows(self, name, model, guidance, gamma, meta) -> list[dict]:
        from stdtrt import schedule

        out = []
        for nfe in NFES:
            plan = schedule.student_plan(self.abar, ETA, nfe, gamma=gamma)
            gen = torch.Generator().manual_seed(99)
            states = fid.walk(model, plan, self.z0, self.noise, self.prompts, guidance, gen)
            local = self.local(model, plan, guidance) if gamma == 0 else None
            final = states[-1]
            out.append(
                {
                    "contender": name,
                    "nfe": nfe,
                    "gamma": gamma,
                    "mse": fid.mse(final, self.reference),
                    "psnr": fid.psnr(final, self.reference),
                    "intermediate_mse": [
                        fid.mse(s, self.ref_at[t]) for s, t in zip(states, plan.targets, strict=True)
                    ],
                    "local_mse": local,
                    "targets": list(plan.targets),
                    **image_stats(final, self.reference),
                    "reference_overshoot": image_stats(self.reference, self.reference)["overshoot"],
                    **meta,
                }
            )
        return out

    @torch.no_grad()
    def local(self, model, plan, guidance) -> list[float]:
        """MSE of each single jump of the plan started from the teacher's own state at its timestep."""
        from stdtrt.runtime.student import Student

        groups = {
            prompt: ([k for k, p in enumerate(self.prompts) if p == prompt],
                     Student(model, plan, prompt, 32, 32, negative_prompt="", guidance=guidance))
            for prompt in sorted(set(self.prompts))
        }  # fmt: skip
        errors = []
        for i, (t, s) in enumerate(zip(plan.timesteps, plan.targets, strict=True)):
            got = torch.zeros_like(self.z0)
            for sel, student in groups.values():
                got[sel] = student.step(self.ref_at[t][sel], i)
            errors.append(fid.mse(got, self.ref_at[s]))
        return errors


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--side", type=int, default=16, help="digit image side (latents side / 2)")
    parser.add_argument("--teacher-steps", type=int, default=1500)
    parser.add_argument("--steps", type=int, default=300, help="student updates per contender")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--eval", type=int, default=128, help="held-out digits")
    parser.add_argument("--guidances", default="1,3,6,8", help="teacher guidance g (CFG form)")
    parser.add_argument("--contenders", default=",".join(DEFAULT), help=f"of: {', '.join(CONTENDERS)}")
    parser.add_argument("--tag", default="", help="suffix for the result files")
    parser.add_argument("--machine", default="2-core AMD EPYC VM, 24 GiB, no GPU (one thread, shared)")
    parser.add_argument("--replot", metavar="JSON", help="rewrite the table and plot of a result file")
    parser.add_argument("--cached-only", action="store_true", help="report the students already distilled")
    args = parser.parse_args()
    if args.replot:
        saved = json.loads(Path(args.replot).read_text())
        return write_results(saved["rows"], argparse.Namespace(**saved["args"]))
    names = args.contenders.split(",")
    unknown = [n for n in names if n not in CONTENDERS]
    if unknown:
        raise SystemExit(f"unknown contender(s) {unknown}; choose from {', '.join(CONTENDERS)}")
    guidances = [float(g) for g in args.guidances.split(",")]

    torch.set_num_threads(max(1, torch.get_num_threads()))
    images, labels = fid.digits(args.side)
    held, train = fid.split(len(images), args.eval)
    data = fid.write_training_folder(images[train], labels[train], fid.CACHE / f"train{args.side}")
    teacher = fid.train_teacher(images[train], labels[train], args.teacher_steps)
    z0 = teacher.vae.encode(torch.from_numpy(images[held])[:, None].expand(-1, 3, -1, -1)).latent_dist.mean
    prompts = [f"digit {k}" for k in labels[held]]
    noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(1234))

    key = f"s{args.side}-t{args.teacher_steps}-u{args.steps}-b{args.batch}-lr{args.lr}-r{args.rank}-e{args.eval}"
    cache = fid.CACHE / "sweep" / key
    cache.mkdir(parents=True, exist_ok=True)
    rows = []
    for g in guidances:
        ev = Evaluator(teacher, z0, noise, prompts, g)
        rows += ev.rows("teacher DDIM", teacher, g, 0.0, {"guidance": g, "seed": None})
        for name in names:
            for seed in range(args.seeds):
                done = cache / f"{name.replace(' ', '_')}-g{g:g}-{seed}.json"
                if done.exists():
                    rows += json.loads(done.read_text())
                    continue
                if args.cached_only:
                    continue
                t0 = time.perf_counter()
                run_dir = fid.CACHE / "runs" / f"sweep-{name.replace(' ', '_')}-g{g:g}-{seed}"
                student, step_s = distill_student(teacher, data, name, g, seed, args, run_dir)
                meta = {"guidance": g, "seed": seed, "step_seconds": step_s}
                own = CONTENDERS[name][1][0]
                new = [
                    r
                    for gamma in CONTENDERS[name][1]
                    for r in ev.rows(row_name(name, gamma, own), student, 1.0, gamma, meta)
                ]
                done.write_text(json.dumps(new))
                rows += new
                print(f"g {g:g} {name} seed {seed}: {time.perf_counter() - t0:.0f} s "
                      f"(NFE 4 MSE {new[1]['mse']:.5f})", flush=True)  # fmt: skip
        write_results(rows, args)


def summarise(rows) -> list[dict]:
    out, seen = [], []
    for r in rows:
        k = (r["contender"], r["guidance"], r["nfe"])
        if k not in seen:
            seen.append(k)
    for name, g, nfe in seen:
        vals = [r for r in rows if (r["contender"], r["guidance"], r["nfe"]) == (name, g, nfe)]
        m = np.array([r["mse"] for r in vals])
        entry = {
            "contender": name,
            "guidance": g,
            "nfe": nfe,
            "mse_mean": float(m.mean()),
            "mse_std": float(m.std()),
            "psnr_mean": float(np.mean([r["psnr"] for r in vals])),
            "contrast": float(np.mean([r["contrast"] for r in vals])),
            "overshoot": float(np.mean([r["overshoot"] for r in vals])),
            "reference_overshoot": vals[0]["reference_overshoot"],
            "intermediate_mse": np.mean([r["intermediate_mse"] for r in vals], axis=0).tolist(),
            "targets": vals[0]["targets"],
            "runs": len(vals),
        }
        if vals[0].get("local_mse"):
            entry["local_mse"] = np.mean([r["local_mse"] for r in vals], axis=0).tolist()
        if vals[0].get("step_seconds"):
            entry["step_seconds"] = float(np.mean([r["step_seconds"] for r in vals]))
        out.append(entry)
    return out


def table(summary, args) -> str:
    names = list(dict.fromkeys(s["contender"] for s in summary))
    gs = sorted({s["guidance"] for s in summary})
    get = {(s["contender"], s["guidance"], s["nfe"]): s for s in summary}
    lines = [
        f"guidance sweep: MSE to the teacher's full DDIM walk at the same guidance (lower is better), digits "
        f"{args.side} px, {args.steps} student updates x batch {args.batch}, lr {args.lr}, LoRA rank "
        f"{args.rank}, {args.seeds} seed(s), {args.eval} held-out digits; machine: {args.machine}",
        "",
    ]
    for g in gs:
        ref = get[("teacher DDIM", g, 4)]["reference_overshoot"]
        lines.append(
            f"guidance {g:g}: MSE at NFE 2 / 4 / 8   (NFE 4: contrast vs the reference's, overshoot beyond "
            f"[-1, 1]; the reference's overshoot {ref:.4f})"
        )
        for name in names:
            cells = [get.get((name, g, n)) for n in NFES]
            if not all(cells):
                continue
            four = cells[1]
            lines.append(
                f"  {name:<26}" + "".join(f"{c['mse_mean']:>10.5f}" for c in cells)
                + f"   contrast {four['contrast']:.3f}  overshoot {four['overshoot']:.4f}"
            )  # fmt: skip
        teacher4 = get.get(("teacher DDIM", g, 4))
        std4 = get.get(("STD fixed", g, 4))
        if teacher4 and std4:
            lines.append(
                f"  STD fixed / teacher 4-step DDIM at NFE 4: {std4['mse_mean'] / teacher4['mse_mean']:.2f}x"
            )
        lines.append("")
    return "\n".join(lines)


def write_results(rows, args) -> None:
    summary = summarise(rows)
    text = table(summary, args)
    print(text, flush=True)
    fid.RESULTS.mkdir(parents=True, exist_ok=True)
    stem = fid.RESULTS / f"guidance_sweep{args.tag}"
    meta = {**vars(args), "python": platform.python_version(), "torch": torch.__version__}
    stem.with_suffix(".json").write_text(
        json.dumps({"args": meta, "rows": rows, "summary": summary}, indent=2)
    )
    stem.with_suffix(".txt").write_text(text + "\n")
    plot(summary, stem.with_suffix(".png"))


def plot(summary, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in dict.fromkeys(s["contender"] for s in summary)]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    if len({s["guidance"] for s in summary}) == 1:  # one guidance: MSE against NFE, and NFE 8's jumps
        for name in names:
            pts = [s for s in summary if s["contender"] == name]
            axes[0].plot([s["nfe"] for s in pts], [s["mse_mean"] for s in pts], marker="o", label=name)
            eight = next(s for s in pts if s["nfe"] == 8)
            if eight.get("local_mse"):
                starts = [START_T, *eight["targets"][:-1]]  # where each jump starts
                axes[1].plot(starts, eight["local_mse"], marker="o", label=name)
            axes[2].plot([s["nfe"] for s in pts], [s["contrast"] for s in pts], marker="o", label=name)
        g = summary[0]["guidance"]
        axes[0].set(xlabel="NFE", ylabel="MSE to the teacher's full walk", yscale="log", xticks=list(NFES),
                    title=f"final state, guidance {g:g}")  # fmt: skip
        axes[1].set(xlabel="timestep the jump starts from (NFE 8)", ylabel="MSE of one jump from the teacher's state",
                    yscale="log", title="single-jump error, NFE 8")  # fmt: skip
        axes[1].invert_xaxis()
        axes[2].set(xlabel="NFE", ylabel="contrast / reference's", xticks=list(NFES), title="contrast")
        for ax in axes:
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        return
    for name in names:
        for ax, nfe in ((axes[0], 4), (axes[1], 8)):
            pts = sorted(
                (s for s in summary if s["contender"] == name and s["nfe"] == nfe),
                key=lambda s: s["guidance"],
            )
            ax.plot([s["guidance"] for s in pts], [s["mse_mean"] for s in pts], marker="o", label=name)
        pts = sorted(
            (s for s in summary if s["contender"] == name and s["nfe"] == 4), key=lambda s: s["guidance"]
        )
        axes[2].plot([s["guidance"] for s in pts], [s["contrast"] for s in pts], marker="o", label=name)
    for ax, nfe in ((axes[0], 4), (axes[1], 8)):
        ax.set(
            xlabel="teacher guidance (CFG)",
            ylabel="MSE to the teacher's full walk",
            yscale="log",
            title=f"NFE {nfe}",
        )
    axes[2].axhline(1.0, color="grey", lw=0.8)
    axes[2].set(
        xlabel="teacher guidance (CFG)", ylabel="contrast / reference's (1 = same)", title="contrast, NFE 4"
    )
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
