"""The run folder (`--out`): its config, the checkpoints an exact resume starts from, and the student's
LoRA files.

    config.json                   the resolved config (and the placement): a resume must match it
    checkpoints/step-NNNNNN/      LoRA (+EMA) weights, optimiser, scheduler, loss scale, discriminator;
                                  per process the bank, the data position and the generators
    lora.safetensors              kohya form (diffusers, ComfyUI, A1111) with stdtrt's metadata
    pytorch_lora_weights.safetensors   diffusers form

Every file is written to a temporary name (a checkpoint to a temporary folder) and renamed when complete.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import torch

from stdtrt.config import DistillConfig, defaults
from stdtrt.errors import StdtrtError
from stdtrt.io.atomic import check_writable_dir
from stdtrt.models.lora import save_diffusers, save_kohya

CONFIG_FILE = "config.json"
LORA_FILE = "lora.safetensors"  # kohya form: diffusers, ComfyUI, A1111
DIFFUSERS_LORA_FILE = "pytorch_lora_weights.safetensors"  # diffusers form (save_lora_weights)

log = logging.getLogger(__name__)


METRICS_FILE = "metrics.jsonl"
# Everything a run writes into its folder (and nothing else): --overwrite replaces only these.
RUN_ENTRIES = (
    CONFIG_FILE,
    "checkpoints",
    LORA_FILE,
    DIFFUSERS_LORA_FILE,
    METRICS_FILE,
    "tensorboard",
    "cache",
)


ASIDE = ".stdtrt-replaced"  # where --overwrite keeps the old run until the new one has made a step


def foreign_entries(out: Path) -> list[str]:
    """What in the run folder no run wrote (stdtrt's own partials, `.NAME.stdtrt-...`, count as a run's)."""
    names = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    return [n for n in names if n not in RUN_ENTRIES and ".stdtrt-" not in n]


def clear_run(out: Path) -> None:
    """Remove what a run wrote into `out` (RUN_ENTRIES and its partials), nothing else."""
    for entry in sorted(out.iterdir()) if out.is_dir() else ():
        if entry.name != ASIDE and (entry.name in RUN_ENTRIES or ".stdtrt-" in entry.name):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()


def set_aside(out: Path) -> Path | None:
    """--overwrite: move the old run's files into `out/.stdtrt-replaced`, to be dropped once the new run
    has made its first step, or put back if it fails before (a typo must not cost the old run)."""
    aside = out / ASIDE
    entries = [e for e in out.iterdir() if e.name in RUN_ENTRIES] if out.is_dir() else []
    if not entries:
        return None
    aside.mkdir()
    for entry in entries:
        entry.rename(aside / entry.name)
    return aside


def restore(out: Path, aside: Path | None) -> None:
    """Put a run set aside back (after clear_run removed what the failed new run wrote)."""
    if aside is not None and aside.is_dir():
        for entry in aside.iterdir():
            entry.rename(out / entry.name)
        aside.rmdir()


def prepare_out_dir(cfg: DistillConfig, resume: bool, overwrite: bool) -> Path | None:
    """Check the run folder; return the checkpoint to resume from (None for a fresh run). A folder with
    anything in it that no run wrote is refused whatever the flags: nothing of the user's is deleted."""
    out = Path(cfg.out)
    saved = out / CONFIG_FILE
    main = os.environ.get("RANK", "0") == "0"  # before accelerate starts: its launcher's process rank
    if main and (out / ASIDE).is_dir():  # an --overwrite killed before its first step: its old run returns
        clear_run(out)
        restore(out, out / ASIDE)
        log.warning("%s: put back the run that an interrupted --overwrite had set aside", out)
    if resume and overwrite:
        raise StdtrtError("--resume and --overwrite contradict each other; pick one")
    if out.exists() and not out.is_dir():
        raise StdtrtError(f"--out {out} is a file; choose a folder")
    check_writable_dir(out)
    foreign = foreign_entries(out)
    if foreign:
        shown = ", ".join(foreign[:4]) + (f" and {len(foreign) - 4} more" if len(foreign) > 4 else "")
        raise StdtrtError(
            f"--out {out} holds files that are not part of a stdtrt run ({shown}); choose another --out "
            f"(a run folder is replaced only when it holds nothing else, even with --overwrite)"
        )
    if resume:
        if not saved.exists():
            raise StdtrtError(f"nothing to resume in {out}: no {CONFIG_FILE} (start without --resume)")
        check_same_run(cfg, json.loads(saved.read_text()))
        found = latest_checkpoint(out)
        if found is None:
            log.warning(
                "%s has no finished checkpoint (the run stopped before its first one, every "
                "--checkpoint-every steps): --resume starts it again from step 0",
                out,
            )
        return found
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise StdtrtError(
            f"{out} already holds a run; pass --resume to continue it, --overwrite to replace it, "
            f"or choose another --out"
        )
    return None


def check_same_run(cfg: DistillConfig, saved: dict) -> None:
    """Refuse a resume whose config differs from the checkpoint's; an option the saved config does not
    name (a run from before it existed) counts as its default."""
    now, d = asdict(cfg), defaults(DistillConfig)
    differ = [
        f"{k}: {saved.get(k, d.get(k))!r} -> {now[k]!r}"
        for k in now
        if k not in DistillConfig.RESUMABLE_CHANGES and _norm(saved.get(k, d.get(k))) != _norm(now[k])
    ]
    if differ:
        raise StdtrtError(
            f"cannot resume {cfg.out}: its checkpoint was made with another config ({'; '.join(differ)})"
        )


def check_same_placement(out: Path, dtypes: dict) -> None:
    """A resumed run computes in the dtypes its checkpoint was made in (the loss scale and the rounding
    of its updates depend on them): `--mixed-precision auto` on a GPU with or without bf16 says otherwise."""
    saved = json.loads((out / CONFIG_FILE).read_text()).get("placement")
    if saved is not None and {k: saved[k] for k in dtypes} != dtypes:
        raise StdtrtError(
            f"cannot resume {out}: it was trained with UNet {saved['unet']}, VAE {saved['vae']}, and this run "
            f"would use {dtypes['unet']}, {dtypes['vae']}: pass --mixed-precision {saved['unet'].replace('fp32', 'no')}"
        )


def _norm(value):
    return list(value) if isinstance(value, tuple | list) else value


def latest_checkpoint(out: Path) -> Path | None:
    ckpts = sorted((out / "checkpoints").glob("step-*"))
    return ckpts[-1] if ckpts else None


def save_checkpoint(run) -> Path:
    """checkpoints/step-NNNNNN/: LoRA (+EMA) weights, optimiser, scheduler, and per process the bank,
    the data position and the generators. Written to a temporary folder, renamed when complete."""
    from safetensors.torch import save_file

    root = Path(run.cfg.out) / "checkpoints"
    final = root / f"step-{run.step:06d}"
    tmp = root / f".step-{run.step:06d}.partial"
    if run.acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    run.acc.wait_for_everyone()
    if run.acc.is_main_process:
        save_file(
            {n: p.detach().float().cpu().contiguous() for n, p in run.lora_params.items()},
            str(tmp / "lora.safetensors"),
        )
        if run.ema is not None:
            save_file({n: v.cpu().contiguous() for n, v in run.ema.items()}, str(tmp / "ema.safetensors"))
        shared = {
            "step": run.step,
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(),
        }
        if run.adv is not None:
            shared["adversarial"] = run.adv.state_dict()
        if run.acc.scaler is not None:  # the fp16 loss scale is part of an exact resume
            shared["scaler"] = run.acc.scaler.state_dict()
        torch.save(shared, tmp / "shared.pt")
    torch.save(
        {
            "bank": run.bank.state_dict(),
            "sampler": run.sampler.state_dict(),
            "generator": run.generator.get_state(),
            "style_generator": run.style_generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "n_seen": torch.tensor(run.n_seen[-10_000:], dtype=torch.long),
        },
        tmp / f"rank{run.rank}.pt",
    )
    run.acc.wait_for_everyone()
    if run.acc.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in sorted(root.glob("step-*"))[: -run.cfg.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
    run.acc.wait_for_everyone()
    return final


def load_checkpoint(run, path: Path) -> None:
    from safetensors.torch import load_file

    rank_file = path / f"rank{run.rank}.pt"
    if not rank_file.exists():
        raise StdtrtError(
            f"checkpoint {path} was made with another number of processes (no {rank_file.name})"
        )
    weights = load_file(str(path / "lora.safetensors"))
    if set(weights) != set(run.lora_params):
        raise StdtrtError(f"checkpoint {path} holds LoRA weights of another shape or UNet")
    for n, p in run.lora_params.items():
        p.data.copy_(weights[n].to(p.device))
    if run.ema is not None:
        run.ema = {n: v.to(run.device) for n, v in load_file(str(path / "ema.safetensors")).items()}
    shared = torch.load(path / "shared.pt", map_location="cpu", weights_only=True)
    run.optimizer.load_state_dict(shared["optimizer"])
    run.scheduler.load_state_dict(shared["scheduler"])
    if run.acc.scaler is not None and "scaler" in shared:
        run.acc.scaler.load_state_dict(shared["scaler"])
    if run.adv is not None:
        run.adv.load_state_dict(shared["adversarial"])
    mine = torch.load(rank_file, map_location="cpu", weights_only=True)
    run.bank.load_state_dict(mine["bank"])
    run.sampler.load_state_dict(mine["sampler"])
    run.generator.set_state(mine["generator"])
    if "style_generator" in mine:  # checkpoints before --style-images have none (and drew no styles)
        run.style_generator.set_state(mine["style_generator"])
    torch.set_rng_state(mine["torch_rng"])
    run.n_seen = mine["n_seen"].tolist()
    run.step = int(shared["step"])


def save_lora(run) -> Path:
    """The student as lora.safetensors (kohya) and pytorch_lora_weights.safetensors (diffusers), both with
    stdtrt's metadata (inference reads eta and the teacher grid from either)."""

    out = Path(run.cfg.out)
    meta = {
        "eta": run.cfg.strength,
        "teacher_steps": run.cfg.teacher_steps,  # inference starts on this grid's x_start
        "nfe_hint": run.cfg.nfe_hint,
        "base_model": run.cfg.model,
        "kind": run.model.kind,
        "motion_adapter": run.cfg.motion_adapter or None,  # a video student runs with its adapter
        "noise_rule": run.cfg.clip_noise if run.cfg.motion_adapter else None,  # ... and x_start by this rule
        "steps": run.step,
        "config": asdict(run.cfg),
    }
    save_diffusers(run.raw_unet, type(run.model.pipe), out / DIFFUSERS_LORA_FILE, meta)
    return save_kohya(run.raw_unet, out / LORA_FILE, meta)
