"""run_live: a source, the networks and a sink, under the real-time rules.

    capture thread:  source -> frames fitted into the working size -> Latest (newest wins when clocked)
    network stages:  the runner's stages (runtime/stream.StreamRunner: encode -> stream UNet -> decode),
                     pulling one frame from Latest whenever they are ready for one (never a backlog)
    calling thread:  sink (pipe, file, URL, virtual camera or the page), latency measured per frame

A change from the page (prompt, strength, cache) lets the frames in flight finish with the old settings
(the stream's pipe is flushed), builds the runner again on the loaded model, and goes on.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from dataclasses import dataclass

from stdtrt.config import LiveConfig, StylizeConfig
from stdtrt.errors import StdtrtError
from stdtrt.live.realtime import Latest, Meter
from stdtrt.live.sinks import SinkClosed, open_sink
from stdtrt.live.sources import open_source
from stdtrt.runtime.pipeline import run_pipeline

log = logging.getLogger(__name__)


@dataclass
class LiveResult:
    frames: int
    dropped: int
    fps: float
    p50_ms: float
    p95_ms: float
    max_waiting: int  # the most frames ever waiting for the networks at once
    backend: str
    line: str  # the final figures, as printed
    compute_ms_per_frame: float = 0.0  # the networks' own time per frame (encode + UNet + decode calls)
    interrupted: bool = False


def stream_latency(runner) -> str:
    """What the stream batch adds, said once at the start."""
    plan = getattr(getattr(runner, "backend", None), "plan", None)
    if plan is None:
        return (
            "the torch reference runs NFE sequential steps per frame: a frame leaves in the call it entered"
        )
    nfe, b = plan.nfe, runner.batch
    wait = f", after waiting for {b - 1} more to fill its slot" if b > 1 else ""
    return (
        f"stream form: a frame leaves NFE - 1 = {nfe - 1} UNet calls after it entered{wait} (the pipe holds "
        f"{nfe} slots of {b})"
    )


class Controls:
    """Settings the page changes while the stream runs: a new StylizeConfig, taken between frames."""

    def __init__(self, cfg: StylizeConfig):
        self.cfg = cfg
        self._pending: StylizeConfig | None = None
        self._lock = threading.Lock()
        self.generation = 0  # runners built so far - 1

    def change(self, **settings) -> StylizeConfig:
        """Validate and queue new settings (a StdtrtError says what is wrong); returns them."""
        with self._lock:
            base = self._pending or self.cfg
            explicit = tuple(sorted(set(base.explicit) | set(settings)))
            new = dataclasses.replace(base, **settings, explicit=explicit)
            self._pending = new
            return new

    def pending(self) -> bool:
        return self._pending is not None

    def take(self) -> StylizeConfig | None:
        with self._lock:
            new, self._pending = self._pending, None
            if new is not None:
                self.cfg = new
                self.generation += 1
            return new


class LiveRun:
    def __init__(self, cfg: LiveConfig, page=None):
        from stdtrt.runtime.request import resolve_bundle
        from stdtrt.runtime.stylize import load_runner, load_stream_model

        self.cfg, self.page = cfg, page
        self.source = open_source(
            cfg, page
        )  # a camera, URL or pipe that is not there fails here, in one line
        s = cfg.stylize
        self.bundle = resolve_bundle(s)
        self.model = (
            load_stream_model(s) if self.bundle is None and s.model and not s.motion_adapter else None
        )
        self.runner = load_runner(s, self.source.width, self.source.height, model=self.model)
        self.controls = Controls(s)
        self.meter = Meter()
        self.latest = Latest(drop=self.source.clocked)
        self.sink = open_sink(cfg, self.source, self.runner.width, self.runner.height, page)
        self.capture_error: BaseException | None = None
        self.written = 0
        self._wake = threading.Event()  # set when a pipeline run ends: its first stage stops waiting

    @property
    def latency_note(self) -> str:
        return stream_latency(self.runner)

    def check_change(self, settings: dict) -> None:
        """Refuse a change from the page before it is queued: the settings must make a valid config, and
        the strength one the student's grid supports (a StdtrtError says why)."""
        new = dataclasses.replace(self.controls.cfg, **settings)
        low, high = self.strength_range()
        if "strength" in settings and not low <= new.strength <= high:
            raise StdtrtError(
                f"strength {new.strength:g} is outside what this student supports ({low:g} to {high:g})"
            )

    def strength_range(self) -> tuple[float, float]:
        """The strengths the page offers: within 0.1 of the strength the student was distilled for (its
        card says; STD trains one LoRA per strength), else all of (0, 1]."""
        from stdtrt.models.card import StudentCard

        eta = StudentCard.read(self.controls.cfg.lora).eta if self.controls.cfg.lora else None
        return (0.05, 1.0) if eta is None else (max(0.05, eta - 0.1), min(1.0, eta + 0.1))

    def compute_ms(self) -> float:
        """The networks' time per frame: each network stage's ms per call, over the frames of a call."""
        ms = self.runner.times.ms_per_call()
        stages = ("vae_encode", "unet", "vae_decode", "student", "control_map")
        return sum(ms.get(k, 0.0) for k in stages) / max(1, getattr(self.runner, "batch", 1))

    def stop(self) -> None:
        """End the run cleanly (the page's stop): the source stops, the frames in flight finish."""
        self.latest.end()

    def rebuild(self, s: StylizeConfig) -> None:
        from stdtrt.runtime.stylize import load_runner

        start = time.perf_counter()
        self.runner = load_runner(s, self.source.width, self.source.height, model=self.model)
        log.info("settings changed: networks rebuilt in %.2f s", time.perf_counter() - start)

    def capture(self) -> None:
        try:
            for frame in self.source.frames(self.runner.width, self.runner.height):
                if not self.latest.put(frame):
                    return
                self.meter.dropped = self.latest.dropped
        except BaseException as exc:
            self.capture_error = exc
        finally:
            self.latest.end()

    def write(self, item) -> None:
        rgb, frame = item
        self.sink.write(rgb, frame)
        self.meter.add(frame.captured)
        self.meter.dropped = self.latest.dropped
        self.written += 1
        if self.page is not None:
            self.page.figures = self.meter.figures(window=100)
        if self.written % 100 == 0:
            log.info("%s", self.meter.line())

    def _interrupted(self) -> bool:
        return self.controls.pending() or self._wake.is_set()

    def _stages(self) -> list:
        stages = self.runner.stages()
        first = stages[0]

        def pulled(_ignored):  # the first stage takes the newest frame whenever it is ready for one
            def frames():
                while (frame := self.latest.get(self._interrupted)) is not None:
                    yield frame.rgb, frame

            return first(frames())

        return [pulled, *stages[1:]]

    def run(self) -> LiveResult:
        log.info("live: %s -> %s at %dx%d with %s", self.cfg.source, self.cfg.sink, self.runner.width,
                 self.runner.height, self.runner.describe())  # fmt: skip
        log.info("%s", stream_latency(self.runner))
        rule = (
            "the newest frame wins (stale ones dropped)" if self.source.clocked else "every frame is stylized"
        )
        log.info("source %s: %dx%d at %.4g fps, %s", self.source.name, self.source.width, self.source.height,
                 float(self.source.rate), rule)  # fmt: skip
        capture = threading.Thread(target=self.capture, daemon=True)
        capture.start()
        interrupted = False
        try:
            while True:
                self._wake.clear()
                run_pipeline(iter(()), self._stages(), self.write, queue_size=1, on_stop=self._wake.set)
                new = self.controls.take()
                if new is None and self.latest.finished:
                    break
                if new is not None:
                    try:
                        self.rebuild(new)
                    except StdtrtError as exc:  # the old settings keep running
                        log.warning("settings not changed: %s", exc)
        except KeyboardInterrupt:  # Ctrl-C is how a live run ends: the output so far is kept
            interrupted = True
        except SinkClosed as exc:
            log.warning("%s: stopping", exc)
        except BaseException:
            self.latest.stop()
            self.source.close()
            if self.written:
                self.sink.close()
            else:
                self.sink.abort()
            raise
        self.latest.stop()
        self.source.close()
        self.sink.close()
        f = self.meter.figures()
        result = LiveResult(
            f["frames"], f["dropped"], f["fps"], f.get("p50_ms", 0.0), f.get("p95_ms", 0.0),
            self.latest.max_waiting, self.runner.describe(), self.meter.line(), self.compute_ms(), interrupted,
        )  # fmt: skip
        if self.capture_error is not None:
            if isinstance(self.capture_error, StdtrtError):
                raise StdtrtError(f"{self.capture_error} ({result.line})")
            raise self.capture_error
        return result


def run_live(cfg: LiveConfig, ready=None) -> LiveResult:
    """Run `stdtrt live` until the source ends (or Ctrl-C, the page's stop, or the sink's reader goes away).
    `ready(live)`: called with the LiveRun once it is loaded (its `page`, when there is one)."""
    page = None
    if "web" in (cfg.source, cfg.sink):
        from stdtrt.live.page import Page

        page = Page(cfg)  # binds the port first: a port in use fails before any model is loaded
    try:
        live = LiveRun(cfg, page)
        if page is not None:
            page.attach(live)
        if ready is not None:
            ready(live)
        return live.run()
    finally:
        if page is not None:
            page.close()
