"""The real-time rules: the newest frame wins (stale ones are dropped and counted), and every frame's
capture-to-sink latency is measured.

`Latest` sits between a source and the networks. A clocked source (a camera, a URL, the page's webcam, a file
or pipe with --realtime) never waits: a frame that arrives while an older one is still waiting replaces it,
and the older one is counted as dropped, so the networks never work through a backlog and at most one frame
waits. A source without a clock (a file or pipe read as fast as the networks go) waits instead, and nothing
is dropped: then the output is the same as stylize-video's.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np


@dataclass
class Captured:
    """One frame as it left its source: the picture, its timestamp and when it was captured."""

    rgb: np.ndarray  # (H, W, 3) uint8 at the working size
    pts: int  # in the source's time base
    captured: float  # time.perf_counter() when it was read
    index: int  # its place in the source (dropped frames leave gaps)


class Latest:
    """A one-frame hand-off: `drop` (a clocked source): the newest frame wins and the one it replaces is
    counted in `dropped`; else `put` waits until the frame before has been taken."""

    def __init__(self, drop: bool):
        self.drop = drop
        self.dropped = 0
        self.max_waiting = 0  # the most frames ever waiting here at once (1 by construction)
        self._items: deque = deque()
        self._cond = threading.Condition()
        self._ended = self._stopped = False

    def put(self, item) -> bool:
        """Hand a frame over; False once the consumer has stopped."""
        with self._cond:
            if self.drop:
                self.dropped += len(self._items)
                self._items.clear()
            else:
                while self._items and not self._stopped:
                    self._cond.wait(0.1)
            if self._stopped or self._ended:
                return False
            self._items.append(item)
            self.max_waiting = max(self.max_waiting, len(self._items))
            self._cond.notify_all()
            return True

    def end(self) -> None:
        """The source has no more frames: the one waiting is still taken."""
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    def stop(self) -> None:
        """The consumer gives up: puts fail, gets end."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def get(self, interrupt=None):
        """The waiting frame, once there is one; None when the source ended, the consumer stopped, or
        `interrupt()` (checked while waiting) says true."""
        with self._cond:
            while not self._items and not self._ended and not self._stopped:
                if interrupt is not None and interrupt():
                    return None
                self._cond.wait(0.05)
            if self._stopped or not self._items:
                return None
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    @property
    def finished(self) -> bool:
        """The source ended (or the consumer stopped) and no frame waits."""
        with self._cond:
            return self._stopped or (self._ended and not self._items)


class Meter:
    """Per frame capture-to-sink latency, the output rate and the drops, readable while the run goes."""

    def __init__(self):
        self._lock = threading.Lock()
        self.latencies: list[float] = []  # seconds, one per frame written
        self.times: list[float] = []  # perf_counter when each was written
        self.dropped = 0

    def add(self, captured: float) -> None:
        now = time.perf_counter()
        with self._lock:
            self.latencies.append(now - captured)
            self.times.append(now)

    def figures(self, window: int | None = None) -> dict:
        """frames, fps, latency p50/p95 (ms) and drops, over the last `window` frames (all: None)."""
        with self._lock:
            lat, times, frames = self.latencies[-window if window else 0 :], self.times, len(self.times)
            span = times[-1] - times[-len(lat)] if len(lat) > 1 else 0.0
        out = {"frames": frames, "dropped": self.dropped, "fps": (len(lat) - 1) / span if span > 0 else 0.0}
        if lat:
            p50, p95 = np.percentile(np.asarray(lat) * 1000, [50, 95])
            out.update(p50_ms=float(p50), p95_ms=float(p95))
        return out

    def line(self) -> str:
        f = self.figures()
        if not f["frames"]:
            return f"no frames written, {f['dropped']} dropped"
        return (
            f"{f['frames']} frames, {f['fps']:.2f} fps, capture-to-sink latency p50 {f['p50_ms']:.0f} ms "
            f"p95 {f['p95_ms']:.0f} ms, {f['dropped']} dropped"
        )
