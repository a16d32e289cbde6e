"""A job's Ray and its actors: Ray joined or started, the workers sized, started, checked and stopped.

Ray's own restarts and retries are off for every actor (they are unbounded and can run a unit twice): the
driver (job.py) replaces a dead worker and retries its unit itself. A stopped worker's partial outputs are
removed here, once its process is gone: a killed worker cannot remove its own.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from stdtrt.batch.plan import Unit
from stdtrt.config import BatchConfig
from stdtrt.errors import StdtrtError
from stdtrt.io.atomic import remove_stale_partials

log = logging.getLogger(__name__)

START_TIMEOUT = 300  # seconds a worker may take to be scheduled and start (not to load its model: lazily)


def import_ray():
    try:
        import ray
    except ImportError:
        raise StdtrtError("stylize-batch runs on Ray: pip install 'stdtrt[ray]'") from None
    return ray


def _check_address(address: str, timeout: float) -> None:
    """A HOST:PORT (or ray://HOST:PORT) that does not accept a connection within `timeout`: one line."""
    if address == "auto":
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise StdtrtError(f"--ray-address {address!r} is not auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise StdtrtError(
            f"Ray cluster at {address} does not answer ({exc.strerror or exc} within {timeout:g} s): start it "
            f"with `ray start --head` there, or leave out --ray-address for a local Ray"
        ) from None


def connect(ray, cfg: BatchConfig) -> bool:
    """Join --ray-address, or start a local Ray (or use the one this process already runs: tests). True
    when this job started Ray and must stop it."""
    if ray.is_initialized():
        return False
    env = {"env_vars": {k: os.environ[k] for k in ("PYTHONPATH", "HF_HUB_OFFLINE", "HF_HUB_CACHE",
                                                    "STDTRT_CACHE") if k in os.environ}}  # fmt: skip
    if cfg.ray_address:
        _check_address(cfg.ray_address, cfg.connect_timeout)
        try:
            ray.init(address=cfg.ray_address, runtime_env=env, log_to_driver=False,
                     logging_level=logging.WARNING)  # fmt: skip
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise StdtrtError(
                f"cannot join the Ray cluster at {cfg.ray_address}: {str(exc).splitlines()[0]}"
            ) from None
        return True
    ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING, runtime_env=env)
    return True


@dataclass
class Slot:
    """A started worker: its actor handle and what it said about itself."""

    actor: object
    name: str
    pid: int
    host: str
    engines: str | None = None  # why the bundle's TensorRT engines cannot run on its GPU (None: they can)
    unit: Unit | None = None
    ref: object = None


def check_engines(ray, cfg: BatchConfig, slots: list[Slot]) -> None:
    """Engines built for one GPU architecture are not sent to another: with --backend tensorrt a worker
    whose GPU cannot run them is stopped (all of them: one line, the reason); with auto it runs the
    bundle's ONNX graphs instead, said once per worker."""
    for s in [s for s in slots if s.engines]:
        if cfg.stylize.backend == "tensorrt":
            ray.kill(s.actor, no_restart=True)
            slots.remove(s)
            log.warning("worker %s left out: %s", s.name, s.engines)
            if not slots:
                raise StdtrtError(f"no worker can run the bundle's TensorRT engines: {s.engines}")
        else:
            log.warning("worker %s runs the bundle without TensorRT: %s", s.name, s.engines)


def worker_options(ray, cfg: BatchConfig) -> tuple[int, dict, int | None]:
    """(how many workers, their actor options, torch threads each): one per GPU, else a share of the CPUs.
    More workers than the cluster has GPUs (or CPUs) would wait for them forever: refused."""
    res = ray.cluster_resources()
    gpus, cpus = int(res.get("GPU", 0)), max(1, int(res.get("CPU", 1)))
    common = {"max_restarts": 0, "max_task_retries": 0, "max_concurrency": 2}
    if gpus:
        if cfg.workers and cfg.workers > gpus:
            raise StdtrtError(f"--workers {cfg.workers}: the Ray cluster has {gpus} GPU(s), one worker each")
        return cfg.workers or gpus, {**common, "num_gpus": 1, "num_cpus": 1}, None
    n = cfg.workers or 1
    if n > cpus:
        raise StdtrtError(f"--workers {n}: the Ray cluster has {cpus} CPU(s) and no GPU; use at most {cpus}")
    share = cpus // n
    return n, {**common, "num_cpus": share}, share


def start_worker(ray, actor_cls, cfg, options, threads) -> Slot:
    actor = actor_cls.options(**options).remote(cfg.stylize, threads)
    try:
        hello = ray.get(actor.hello.remote(), timeout=START_TIMEOUT)
    except ray.exceptions.GetTimeoutError:
        ray.kill(actor)
        raise StdtrtError(
            f"a worker did not start within {START_TIMEOUT} s (resources {options}): is the cluster busy?"
        ) from None
    return Slot(actor, hello["name"], hello["pid"], hello["host"], engines=hello["engines"])


def wait_gone(s: Slot, timeout: float = 10.0) -> None:
    """Wait (at most `timeout`) until a worker's process on this host is gone; one elsewhere: no wait."""
    if s.host != socket.gethostname():
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(s.pid, 0)
        except ProcessLookupError:
            return
        except PermissionError:
            return
        time.sleep(0.05)


def stop_workers(ray, slots) -> None:
    """Stop every worker and remove the partial outputs of the units they were running (Ctrl-C, an error
    of the driver): a killed worker cannot remove its own."""
    for s in slots:
        with contextlib.suppress(Exception):  # already gone
            ray.kill(s.actor, no_restart=True)
    for s in slots:
        if s.unit is None:
            continue
        wait_gone(s)
        for path in (Path(s.unit.output), *([Path(s.unit.part)] if s.unit.part else [])):
            remove_stale_partials(path.parent, path.stem)  # any suffix: a segment's .rgb and .json too
        s.unit = None
