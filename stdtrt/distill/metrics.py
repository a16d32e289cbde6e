"""Training metrics: one JSON line per logged step in metrics.jsonl (and TensorBoard when installed)."""

from __future__ import annotations

import json
import logging
import resource
from pathlib import Path

import torch

from stdtrt.distill.checkpoint import METRICS_FILE

log = logging.getLogger(__name__)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


class MetricsLog:
    def __init__(self, out: Path, accelerator, resume_step: int | None):
        self.acc = accelerator
        self.file = None
        self.tb = None
        if accelerator.is_main_process:
            path = out / METRICS_FILE
            if resume_step is None:
                path.unlink(missing_ok=True)
            elif path.exists():  # drop what an interrupted run logged after its last checkpoint
                kept = [
                    ln
                    for ln in path.read_text().splitlines()
                    if ln.strip() and json.loads(ln)["step"] <= resume_step
                ]
                path.write_text("".join(ln + "\n" for ln in kept))
            self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out / "tensorboard"))
            except Exception:  # tensorboard not installed
                self.tb = None

    def write(self, run, last: dict) -> None:
        """Log the step's metrics (averaged over processes) and the bank's statistics since the last write."""
        keys = sorted(k for k, v in last.items() if isinstance(v, int | float))
        values = torch.tensor([float(last[k]) for k in keys], device=run.device)
        values = self.acc.reduce(values, reduction="mean") if self.acc.num_processes > 1 else values
        record = {"step": run.step, **{k: float(v) for k, v in zip(keys, values.tolist(), strict=True)}}
        stats = run.bank.stats
        drawn = max(1, stats.from_bank + stats.fresh)
        n = torch.tensor(run.n_seen[-max(1, run.cfg.log_every * run.cfg.batch_size) :], dtype=torch.float32)
        record.update(
            bank_fraction=stats.from_bank / drawn,
            bank_live=len(run.bank),
            bank_dropped=stats.dropped,
            bank_retired=stats.retired,
            n_mean=float(n.mean()) if len(n) else None,
            n_min=int(n.min()) if len(n) else None,
            n_max=int(n.max()) if len(n) else None,
            teacher_calls_per_step=run.teacher.calls / max(1, run.step_calls),
            peak_memory_mb=peak_memory_mb(run.device),
        )
        stats.reset()
        if self.file is not None:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, int | float) and k != "step":
                    self.tb.add_scalar(k, v, run.step)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.tb is not None:
            self.tb.close()
