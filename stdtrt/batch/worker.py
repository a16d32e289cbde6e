"""What one worker (a Ray actor, or any process) does with a unit: the model or bundle is loaded once per
working size and kept for every unit; a video is stylized as `stylize-video` does it (the same runner,
the same writer, written atomically); a segment runs its warm-up frames first and keeps the frames from its
first on, as raw RGB at the working size (lossless: the join encodes them once, as one run would); the join
writes them, with the input's timestamps, audio and subtitles, into the output.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

import numpy as np

from stdtrt.batch.plan import Unit
from stdtrt.config import StylizeConfig
from stdtrt.errors import StdtrtError
from stdtrt.io import video
from stdtrt.io.atomic import atomic_path
from stdtrt.io.hashing import file_hash


class Worker:
    """One per GPU (or a share of the CPU's cores). Not thread-safe for two units at once; `progress` may
    be asked from another thread while a unit runs."""

    def __init__(self, cfg: StylizeConfig, threads: int | None = None):
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.cfg = cfg
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self._runners: dict[tuple[int, int], object] = {}  # by the input's size: the working size follows
        self._lock = threading.Lock()
        self._frames, self._busy, self._started = 0, 0.0, None
        self._load = 0.0  # seconds spent loading networks (not counted in the fps)

    # -- asked by the driver ----------------------------------------------------------------------------
    def hello(self) -> dict:
        """Who this worker is, and (a bundle with TensorRT engines) why they cannot run on its GPU: an
        engine is built for one GPU architecture and TensorRT version, which the bundle's manifest records
        and compares with this GPU's (None: they run here, or there are none)."""
        return {
            "name": self.name,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "engines": self._engines(),
        }

    def _engines(self) -> str | None:
        if not self.cfg.bundle or self.cfg.backend not in ("auto", "tensorrt"):
            return None
        from stdtrt.bundle.manifest import read_bundle
        from stdtrt.runtime.backends.tensorrt import tensorrt_unusable

        bundle = read_bundle(self.cfg.bundle)
        return tensorrt_unusable(bundle, self.cfg.device) if bundle.tensorrt else None

    def progress(self) -> tuple[int, float]:
        """(frames written so far, seconds spent on units so far, loading the networks left out)."""
        with self._lock:
            busy = self._busy + (time.perf_counter() - self._started if self._started else 0.0)
            return self._frames, max(0.0, busy - self._load)

    def run(self, unit: Unit) -> dict:
        start = time.perf_counter()
        with self._lock:
            self._started = start
        try:
            if unit.kind == "video":
                out = self._video(unit)
            elif unit.kind == "segment":
                out = self._segment(unit)
            else:
                out = self._join(unit)
        finally:
            with self._lock:
                self._busy += time.perf_counter() - start
                self._started = None
        return {**out, "seconds": time.perf_counter() - start, "worker": self.name}

    # -- the work -----------------------------------------------------------------------------------------
    def _count(self) -> None:
        with self._lock:
            self._frames += 1

    def _runner(self, info, first: int = 0):
        """A fresh runner for one video around the networks loaded once (per working size)."""
        from stdtrt.runtime.stream import StreamRunner
        from stdtrt.runtime.student import StudentRunner
        from stdtrt.runtime.stylize import load_runner
        from stdtrt.runtime.windows import WindowRunner

        cfg, key = self.cfg, (info.width, info.height)
        if key not in self._runners:
            start = time.perf_counter()
            self._runners[key] = load_runner(cfg, info.width, info.height)
            with self._lock:
                self._load += time.perf_counter() - start
        r = self._runners[key]
        if isinstance(r, StreamRunner):
            return StreamRunner(
                r.backend, cfg.seed, r.noise_rule, None, cfg.skip_threshold, cfg.max_skips, r.maps,
                first=first,
            )  # fmt: skip
        if isinstance(r, WindowRunner):
            return WindowRunner(r.engine, r.window, r.overlap, cfg.seed, r.noise.rule)
        return StudentRunner(r.student, cfg, r.noise.rule)

    def _video(self, unit: Unit) -> dict:
        from stdtrt.runtime.stylize import run_video

        info = _probe(unit, self.cfg.pad_odd)
        out = Path(unit.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        video.check_output(info.path, out)
        result = run_video(self._runner(info), info, out, self.cfg, progress=False, on_frame=self._count)
        return {"frames": result.frames, "output_sha256": file_hash(out), "audio": result.audio}

    def _segment(self, unit: Unit) -> dict:
        from stdtrt.runtime.pipeline import run_pipeline

        info = _probe(unit, self.cfg.pad_odd)
        runner = self._runner(info, first=unit.first - unit.warm)
        part = Path(unit.part)
        part.parent.mkdir(parents=True, exist_ok=True)
        sizes = video.FrameSizes(info)
        begin, end = unit.first - unit.warm, unit.end

        def source():
            for i, (rgb, pts) in enumerate(video.read_frames(info, runner.width, runner.height, sizes)):
                if end is not None and i >= end:
                    return
                if i >= begin:
                    yield rgb, (i, pts)

        pts_list, other = [], {}
        with atomic_path(part) as tmp, open(tmp, "wb") as f:

            def write(item):
                rgb, (i, pts) = item
                if i < unit.first:
                    return  # a warm-up frame: it rebuilt the stream's state, its output is the previous segment's
                f.write(np.ascontiguousarray(rgb, dtype=np.uint8).tobytes())
                size = sizes.source(pts)
                if size != sizes.nominal:
                    other[str(pts)] = list(size)
                pts_list.append(pts)
                self._count()

            run_pipeline(source(), runner.stages(), write, self.cfg.queue_size)
            f.flush()
            meta = {"width": runner.width, "height": runner.height, "first": unit.first, "pts": pts_list,
                    "sizes": other}  # fmt: skip
            with atomic_path(part.with_suffix(".json")) as tmp_meta:
                tmp_meta.write_text(json.dumps(meta))
        return {"frames": len(pts_list)}

    def _join(self, unit: Unit) -> dict:
        info = _probe(unit, self.cfg.pad_odd)
        out = Path(unit.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        video.check_output(info.path, out)
        metas = []
        for part in unit.parts:
            meta_path = Path(part).with_suffix(".json")
            if not (meta_path.is_file() and Path(part).is_file()):
                raise StdtrtError(
                    f"segment {part} of {info.path} is missing: run the job again with --resume"
                )
            metas.append(json.loads(meta_path.read_text()))
        sizes = video.FrameSizes(info)
        for meta in metas:
            for pts, size in meta["sizes"].items():
                sizes.record(int(pts), tuple(size))
        frames = 0
        with atomic_path(out) as tmp:
            writer = video.VideoWriter(tmp, out.suffix, info, crf=self.cfg.crf, pad_odd=self.cfg.pad_odd,
                                       sizes=sizes)  # fmt: skip
            try:
                for part, meta in zip(unit.parts, metas, strict=True):
                    shape = (len(meta["pts"]), meta["height"], meta["width"], 3)
                    raw = np.memmap(part, dtype=np.uint8, mode="r", shape=shape) if shape[0] else []
                    for rgb, pts in zip(raw, meta["pts"], strict=True):
                        writer.write(np.asarray(rgb), pts)
                        frames += 1
            except BaseException:
                writer.abort()
                raise
            writer.close()
        for part in unit.parts:  # the segments are in the output now
            Path(part).unlink(missing_ok=True)
            Path(part).with_suffix(".json").unlink(missing_ok=True)
        return {"frames": frames, "output_sha256": file_hash(out), "audio": writer.audio_summary()}


def _probe(unit: Unit, pad_odd: bool):
    info = video.probe(unit.input)
    video.output_size(info, pad_odd)  # an odd side is refused (without --pad-odd) before any model loads
    return info
