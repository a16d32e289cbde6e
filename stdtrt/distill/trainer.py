"""`stdtrt distill`: the training loop around a Run (distill/run.py), with accelerate for mixed precision,
gradient accumulation and several processes; the run folder made, replaced (--overwrite) or resumed
exactly; a NaN guard; LoRA files every tool loads."""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from stdtrt.config import DistillConfig
from stdtrt.distill import checkpoint
from stdtrt.distill import data as data_mod
from stdtrt.distill.metrics import MetricsLog
from stdtrt.distill.run import NonFinite, Run
from stdtrt.errors import StdtrtError
from stdtrt.models.load import DTYPE_NAMES, resolve_device, resolve_dtype

log = logging.getLogger(__name__)


@dataclass
class DistillResult:
    out: Path
    lora: Path
    steps: int
    seconds: float
    last_loss: float
    main_process: bool = True  # only the main process of a multi-process run reports


def mixed_precision(requested: str) -> str:
    """accelerate's mixed precision for --mixed-precision: auto is bf16 on a GPU that has it (no loss
    scaling), fp16 on other GPUs, none on the CPU; bf16 asked of a GPU without it is one line."""

    if requested == "no":
        return "no"
    dtype = resolve_dtype("auto" if requested == "auto" else requested, resolve_device("auto"), training=True)
    return {"fp32": "no"}.get(DTYPE_NAMES[dtype], DTYPE_NAMES[dtype])


# -- the command -------------------------------------------------------------------------------------------
def _start(cfg: DistillConfig, acc, model, out: Path, resume: bool, resume_from: Path | None):
    """Load everything, write the run's config, resume its checkpoint: (Run, MetricsLog)."""
    run = Run(cfg, acc, model)
    if resume:  # the same dtypes as the checkpoint (auto may resolve otherwise on another GPU)
        checkpoint.check_same_placement(out, run.model.placement.dtypes())
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / checkpoint.CONFIG_FILE).write_text(
            json.dumps({**asdict(cfg), "placement": run.model.placement.as_dict()}, indent=2)
        )
    acc.wait_for_everyone()
    if resume_from is not None:
        checkpoint.load_checkpoint(run, resume_from)
        log.info("resumed from %s at step %d", resume_from, run.step)
    if run.step >= cfg.max_steps:
        raise StdtrtError(
            f"{out} is already at step {run.step} >= --max-steps {cfg.max_steps}; raise --max-steps"
        )
    return run, MetricsLog(out, acc, resume_step=run.step if resume_from is not None else None)


def _discard(out: Path, created: bool, aside: Path | None) -> None:
    """Remove what a run that never finished a step wrote, so that the corrected rerun is not blocked, and
    put back the run it was to replace (--overwrite)."""
    checkpoint.clear_run(out)
    checkpoint.restore(out, aside)
    if created and out.is_dir() and not any(out.iterdir()):
        out.rmdir()


def distill(
    cfg: DistillConfig, resume: bool = False, overwrite: bool = False, progress: bool = True, model=None
) -> DistillResult:
    """Train the STD student described by cfg; write lora.safetensors (and checkpoints) to cfg.out."""
    from accelerate import Accelerator
    from tqdm import tqdm

    out = Path(cfg.out)
    resume_from = checkpoint.prepare_out_dir(cfg, resume, overwrite)
    mp = mixed_precision(cfg.mixed_precision)
    data_mod.check_readable(data_mod.list_files(cfg.data))  # before anything is written
    # cpu=True without CUDA: under a multi-process launcher that means several CPU processes over gloo
    acc = Accelerator(
        mixed_precision=mp, gradient_accumulation_steps=cfg.grad_accum, cpu=not torch.cuda.is_available()
    )
    created = not out.exists()
    aside = None
    if acc.is_main_process and overwrite:  # the old run's own files (prepare_out_dir refused anything else)
        aside = checkpoint.set_aside(out)
    acc.wait_for_everyone()
    try:
        run, metrics = _start(cfg, acc, model, out, resume, resume_from)
    except BaseException:
        if acc.is_main_process and not resume:  # a run that never started leaves nothing behind
            _discard(out, created, aside)
        raise
    bar = tqdm(
        total=cfg.max_steps,
        initial=run.step,
        unit="step",
        desc="distill",
        disable=not progress or not acc.is_main_process,
    )
    start = time.perf_counter()
    last = {}
    first = run.step
    try:
        while run.step < cfg.max_steps:
            t0 = time.perf_counter()
            try:
                last = run.optimise()
            except NonFinite as bad:
                good = checkpoint.latest_checkpoint(out)
                raise StdtrtError(
                    f"the {bad.what} became {bad.value} at step {run.step + 1}; stopped without saving. "
                    f"The last good checkpoint is {good or 'none'}: lower --lr and run again with --resume"
                ) from None
            last["step_seconds"] = time.perf_counter() - t0
            if aside is not None:  # the new run has made a step: the replaced one goes
                shutil.rmtree(aside, ignore_errors=True)
                aside = None
            bar.update(1)
            bar.set_postfix(loss=f"{last['loss']:.4f}", bank=len(run.bank))
            if run.step % cfg.log_every == 0 or run.step == cfg.max_steps:
                metrics.write(run, last)
            if run.step % cfg.checkpoint_every == 0 and run.step < cfg.max_steps:
                checkpoint.save_checkpoint(run)
    except BaseException:
        if run.step == first and not resume:  # failed in its first step: nothing to keep
            metrics.close()
            if acc.is_main_process:
                _discard(out, created, aside)
        raise
    finally:
        bar.close()
    checkpoint.save_checkpoint(run)
    lora = out / checkpoint.LORA_FILE
    if acc.is_main_process:
        lora = checkpoint.save_lora(run)
    acc.wait_for_everyone()
    metrics.close()
    return DistillResult(
        out,
        lora,
        run.step,
        time.perf_counter() - start,
        float(last.get("loss", float("nan"))),
        acc.is_main_process,
    )
