"""Stages joined by bounded queues, each in a thread of its own, so that the slowest one sets the pace.

A stage is a generator function `stage(items) -> items`: it reads an iterator and yields results, so a
stage that holds items back (batching, the stream form's pipe) can flush them when its input ends. A
failing stage stops every other (no thread blocks forever) and its error is raised in the caller.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator

_END = object()


class _Stopped(Exception):
    """Raised inside a stage when another stage failed or the caller gave up: a quiet exit."""


class Pipe:
    """Bounded queues between threads, with a shared stop flag."""

    def __init__(self, size: int):
        self.stop = threading.Event()
        self.size = size
        self.errors: list[BaseException] = []

    def queue(self) -> queue.Queue:
        return queue.Queue(maxsize=self.size)

    def put(self, q: queue.Queue, item) -> bool:
        while not self.stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def get(self, q: queue.Queue):
        while not self.stop.is_set():
            try:
                return q.get(timeout=0.1)
            except queue.Empty:
                continue
        return _END

    def drain(self, q: queue.Queue) -> Iterator:
        """Items until the producer's end mark; raises _Stopped when the pipe is stopped instead."""
        while (item := self.get(q)) is not _END:
            yield item
        if self.stop.is_set():
            raise _Stopped

    def thread(self, fn, *args) -> threading.Thread:
        def run():
            try:
                fn(*args)
            except _Stopped:
                pass
            except BaseException as exc:  # re-raised in the calling thread
                self.errors.append(exc)
                self.stop.set()

        t = threading.Thread(target=run, daemon=True)
        t.start()
        return t


def compose(stages: list[Callable[[Iterator], Iterator]]) -> Callable[[Iterator], Iterator]:
    """Several stages as one (run in one thread, one after the other)."""

    def composed(items: Iterator) -> Iterator:
        for stage in stages:
            items = stage(items)
        return items

    return composed


def run_pipeline(
    source: Iterable, stages: list, sink: Callable, queue_size: int = 8, on_stop: Callable | None = None
) -> None:
    """source (a thread) -> each stage (a thread each) -> sink (the calling thread), via bounded queues.
    `on_stop`: called when the run ends, before the threads are joined (to wake a stage that waits on
    something else than these queues: live/realtime.Latest)."""
    pipe = Pipe(queue_size)
    queues = [pipe.queue() for _ in range(len(stages) + 1)]

    def feed():
        for item in source:
            if not pipe.put(queues[0], item):
                return
        pipe.put(queues[0], _END)

    def work(stage, q_in, q_out):
        for item in stage(pipe.drain(q_in)):
            if not pipe.put(q_out, item):
                return
        pipe.put(q_out, _END)

    threads = [pipe.thread(feed)]
    threads += [pipe.thread(work, s, queues[i], queues[i + 1]) for i, s in enumerate(stages)]
    try:
        for item in pipe.drain(queues[-1]):
            sink(item)
    except _Stopped:
        pass
    finally:
        pipe.stop.set()
        if on_stop is not None:
            on_stop()
        for t in threads:
            t.join(timeout=30)
    if pipe.errors:
        raise pipe.errors[0]


class StageTimes:
    """Time spent in each named stage (thread-safe), for progress logs and `stdtrt bench`: the host's
    clock, or a device's own events (pairs with `elapsed_time(end)` in ms, read only when the totals are:
    runtime/lanes.timed puts CUDA work's here). `clock[name]` says which measured a stage."""

    def __init__(self):
        self._lock = threading.Lock()
        self.total: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.clock: dict[str, str] = {}
        self._events: list = []  # (name, start, end) not yet read

    def add(self, name: str, seconds: float, calls: int = 1) -> None:
        with self._lock:
            self.total[name] += seconds
            self.calls[name] += calls
            self.clock.setdefault(name, "host")

    def add_events(self, name: str, start, end) -> None:
        with self._lock:
            self._events.append((name, start, end))
            self.calls[name] += 1
            self.clock[name] = "cuda events"

    def _read_events(self) -> None:
        with self._lock:
            pending, self._events = self._events, []
        for name, start, end in pending:
            end.synchronize()  # long done once a run has finished
            with self._lock:
                self.total[name] += start.elapsed_time(end) / 1000

    def timed(self, name: str, fn, *args):
        start = time.perf_counter()
        out = fn(*args)
        self.add(name, time.perf_counter() - start)
        return out

    def seconds(self) -> dict[str, float]:
        self._read_events()
        with self._lock:
            return dict(self.total)

    def ms_per_call(self) -> dict[str, float]:
        self._read_events()
        with self._lock:
            return {k: 1000 * self.total[k] / max(1, c) for k, c in self.calls.items()}
