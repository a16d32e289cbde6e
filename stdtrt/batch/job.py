"""The driver of a batch job: plan it (plan.py: every refusal before anything is written), start a local
Ray or join a cluster and start the workers (actors.py), hand out units, retry a unit whose worker died (at most
--max-retries times, by this loop: Ray's own restarts and retries are off, since they are unbounded and
can run a unit twice), record what is done, show one bar over all frames, and print the summary.

Exactly once: a unit is handed to one worker at a time, and handed again only once that worker is known
dead (its process gone, so it cannot rename a late output over a newer one); each output is renamed into
place whole by the worker that made it (io/atomic.py), and the partial a killed worker leaves is removed by
the next write of that output, or by this driver when it stops the job (Ctrl-C).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from stdtrt.batch.actors import (
    Slot,
    check_engines,
    connect,
    import_ray,
    start_worker,
    stop_workers,
    wait_gone,
    worker_options,
)
from stdtrt.batch.plan import RECORD, STATE_DIR, Unit, gather, segments, settings_key
from stdtrt.batch.record import JobRecord
from stdtrt.config import BatchConfig
from stdtrt.errors import StdtrtError
from stdtrt.io import video
from stdtrt.io.hashing import file_hash

log = logging.getLogger(__name__)


@dataclass
class WorkerStats:
    name: str
    units: int = 0
    frames: int = 0
    seconds: float = 0.0  # busy

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


@dataclass
class JobResult:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # input -> its one-line reason
    frames: int = 0
    seconds: float = 0.0
    workers: dict[str, WorkerStats] = field(default_factory=dict)
    retries: int = 0  # units run again after their worker died

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def table(self) -> str:
        rows = [f"{'worker':<28} {'units':>5} {'frames':>7} {'busy s':>8} {'fps':>7}"]
        for w in self.workers.values():
            rows.append(f"{w.name:<28} {w.units:>5} {w.frames:>7} {w.seconds:>8.1f} {w.fps:>7.2f}")
        rows.append(
            f"done {len(self.done)}, skipped {len(self.skipped)}, failed {len(self.failed)}; {self.frames} "
            f"frames in {self.seconds:.1f} s: {self.fps:.2f} fps"
            + (f"; {self.retries} unit(s) run again after their worker died" if self.retries else "")
        )
        rows += [f"failed: {name}: {why}" for name, why in self.failed.items()]
        return "\n".join(rows)


def _reason(exc: BaseException) -> str:
    """A unit's failure as one line: a StdtrtError's own message, else the error's type and first line."""
    cause = getattr(exc, "cause", None) or exc
    if isinstance(cause, StdtrtError):
        return str(cause)
    if isinstance(cause, OSError) and cause.strerror:
        return f"{cause.strerror}" + (f" ({cause.filename})" if cause.filename else "")
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[0] if text else ''}"


def plan(cfg: BatchConfig, sources: list[str]):
    """(units to run, inputs skipped as done, inputs that failed to probe, record, key, total frames):
    everything decided, nothing written."""
    out = Path(cfg.output)
    found = gather(sources, out)
    key = settings_key(cfg.stylize)
    record = JobRecord(out / RECORD)
    units: list[Unit] = []
    skipped: list[str] = []
    failed: dict[str, str] = {}
    state = out.absolute() / STATE_DIR
    hashes = {}
    for s in found:
        output = str(out.absolute() / s.rel)
        size, sha = s.path.stat().st_size, file_hash(s.path)
        hashes[str(s.path)] = (size, sha)
        if cfg.resume and record.is_done(str(s.path), output, key, size, sha):
            skipped.append(str(s.rel))
            continue
        try:
            info = video.probe(s.path)
        except StdtrtError as exc:  # a bad input fails alone, listed at the end
            failed[str(s.rel)] = (str(s.path), str(exc))
            continue
        units += segments(s, info, cfg, state, key)
    return units, skipped, failed, record, key, hashes


def run_job(cfg: BatchConfig, sources: list[str], progress: bool = True, on_progress=None) -> JobResult:
    """Run the job; `on_progress(result)` is called from the driver's loop about twice a second (a test
    stops a job from it, as Ctrl-C would)."""
    ray = import_ray()
    units, skipped, failed, record, key, hashes = plan(cfg, sources)
    result = JobResult(skipped=skipped, failed={rel: why for rel, (_, why) in failed.items()})
    started = connect(ray, cfg) if units else False  # an address that does not answer: before any write
    try:
        options = worker_options(ray, cfg) if units else None
    except BaseException:
        if started:
            ray.shutdown()
        raise
    Path(cfg.output).mkdir(parents=True, exist_ok=True)
    for rel, (path, why) in failed.items():
        size, sha = hashes[path]
        record.add(status="failed", input=path, size=size, sha256=sha, key=key,
                   output=str(Path(cfg.output).absolute() / rel), reason=why)  # fmt: skip
    if not units:
        return result
    for u in units:
        Path(u.output).parent.mkdir(parents=True, exist_ok=True)
    slots: list[Slot] = []
    try:
        return _drive(ray, cfg, options, units, record, key, hashes, result, slots, progress, on_progress)
    except BaseException:
        stop_workers(ray, slots)
        raise
    finally:
        if started:
            ray.shutdown()


def _drive(ray, cfg, options, units, record, key, hashes, result, slots, progress, on_progress) -> JobResult:
    from tqdm import tqdm

    from stdtrt.batch.worker import Worker

    actor_cls = ray.remote(Worker)
    n, options, threads = options
    for _ in range(n):
        slots.append(start_worker(ray, actor_cls, cfg, options, threads))
    check_engines(ray, cfg, slots)
    for s in slots:
        result.workers.setdefault(s.name, WorkerStats(s.name))
    pending = deque(u for u in units if u.kind != "join")
    joins = {u.output: u for u in units if u.kind == "join"}
    parts_left = {out: len(j.parts) for out, j in joins.items()}
    attempts: dict[str, int] = {}
    dead_inputs: set[str] = set()
    total = sum(u.frames for u in units)
    bar = tqdm(total=total or None, unit="frame", desc="stylize-batch", disable=not progress, smoothing=0.1)
    start = time.perf_counter()
    last_poll = 0.0
    seen = {}  # frames each live worker had written at the last poll
    try:
        while pending or any(s.unit for s in slots):
            for s in slots:
                if s.unit is None and pending:
                    s.unit = pending.popleft()
                    s.ref = s.actor.run.remote(s.unit)
            refs = [s.ref for s in slots if s.unit is not None]
            ready, _ = ray.wait(refs, num_returns=1, timeout=0.5)
            for ref in ready:
                s = next(s for s in slots if s.ref is ref)
                unit, s.unit, s.ref = s.unit, None, None
                try:
                    out = ray.get(ref)
                except ray.exceptions.RayActorError:
                    _replace(ray, slots, s, actor_cls, cfg, options, threads, result)
                    attempts[unit.id] = attempts.get(unit.id, 0) + 1
                    if attempts[unit.id] <= cfg.max_retries:
                        result.retries += 1
                        log.warning("worker %s died running %s: running it again (%d of %d)", s.name,
                                    unit.id, attempts[unit.id], cfg.max_retries)  # fmt: skip
                        pending.appendleft(unit)
                    else:
                        _fail(result, record, unit, hashes, key, dead_inputs,
                              f"its worker died {attempts[unit.id]} times (--max-retries {cfg.max_retries})")  # fmt: skip
                    continue
                except ray.exceptions.RayTaskError as exc:
                    _fail(result, record, unit, hashes, key, dead_inputs, _reason(exc))
                    continue
                stats = result.workers.setdefault(out["worker"], WorkerStats(out["worker"]))
                stats.units += 1
                if unit.kind != "join":
                    stats.frames += out["frames"]
                    result.frames += out["frames"]
                if unit.kind == "segment":
                    parts_left[unit.output] -= 1
                    if parts_left[unit.output] == 0 and unit.input not in dead_inputs:
                        pending.appendleft(joins[unit.output])
                    continue
                size, sha = hashes[unit.input]
                record.add(status="done", input=unit.input, size=size, sha256=sha, key=key, output=unit.output,
                           output_sha256=out["output_sha256"], frames=out["frames"],
                           seconds=round(out["seconds"], 3), worker=out["worker"])  # fmt: skip
                result.done.append(unit.id.removesuffix("#join"))
            now = time.perf_counter()
            if ready or now - last_poll >= 0.5:
                last_poll = now
                _poll(ray, slots, seen, result, bar, total)
                if on_progress is not None:
                    on_progress(result)
    finally:
        bar.close()
    result.seconds = time.perf_counter() - start
    for s in slots:  # the workers' own busy time
        try:
            _, busy = ray.get(s.actor.progress.remote(), timeout=10)
            result.workers[s.name].seconds = busy
        except Exception:  # noqa: BLE001  (a worker that died at the end: its stats stay as counted)
            pass
    stop_workers(ray, slots)
    return result


def _poll(ray, slots, seen, result, bar, total) -> None:
    """Move the bar to the frames every worker has written; per-worker fps in its postfix."""
    busy = [s for s in slots if s.unit is not None]
    refs = [s.actor.progress.remote() for s in busy]
    try:
        answers = ray.get(refs, timeout=2)
    except Exception:  # noqa: BLE001  (a worker dying right now: the loop sees it through its unit)
        return
    for s, (frames, seconds) in zip(busy, answers, strict=True):
        seen[s.name] = (frames, seconds)
    done = sum(f for f, _ in seen.values())
    bar.n = min(done, total) if total else done
    bar.set_postfix_str(
        " ".join(f"pid {name.split(':')[-1]} {f / t:.1f} fps" for name, (f, t) in seen.items() if t > 0)
    )
    bar.refresh()


def _replace(ray, slots, s, actor_cls, cfg, options, threads, result) -> None:
    """A worker died (its process killed, its node gone): wait until it is gone for good, remove what it
    left half-written, and start another in its place."""
    wait_gone(s)
    i = slots.index(s)
    new = start_worker(ray, actor_cls, cfg, options, threads)
    result.workers.setdefault(new.name, WorkerStats(new.name))
    slots[i] = new


def _fail(result, record, unit, hashes, key, dead_inputs, why: str) -> None:
    name = unit.id.split("#")[0]
    if unit.input in dead_inputs:
        return
    dead_inputs.add(unit.input)
    result.failed[name] = why
    size, sha = hashes[unit.input]
    record.add(
        status="failed", input=unit.input, size=size, sha256=sha, key=key, output=unit.output, reason=why
    )
