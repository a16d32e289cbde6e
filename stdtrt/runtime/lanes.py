"""The frame loop's CUDA streams: a `Lane` per stage, pinned `Staging` buffers, and `timed` (CUDA events).

On CUDA every stage runs on a CUDA stream of its own (a `Lane`): frames go up from pinned staging buffers
without blocking, each hand-off carries an event the next stage's stream waits on (and the tensor is
recorded on that stream, so the allocator does not reuse it early), and the only host synchronisation of a
frame is the decode stage waiting for its own bytes to come down. On the CPU all of this is a no-op.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from stdtrt.runtime.pipeline import StageTimes


class Lane:
    """The CUDA stream one stage runs on, and the events its hand-offs carry (no-ops on the CPU)."""

    def __init__(self, device: torch.device):
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    @contextlib.contextmanager
    def run(self, event=None, *tensors: torch.Tensor):
        """Work on this lane after `event` (the producer's), keeping `tensors` alive for this stream."""
        if self.stream is None:
            yield
            return
        with torch.cuda.stream(self.stream):
            if event is not None:
                self.stream.wait_event(event)
            for t in tensors:
                t.record_stream(self.stream)
            yield

    def mark(self):
        """An event after the work queued so far on this lane (None on the CPU)."""
        if self.stream is None:
            return None
        event = torch.cuda.Event()
        event.record(self.stream)
        return event


def timed(times: StageTimes, name: str, fn, *args):
    """fn(*args) timed into `times` under `name`. On CUDA by events on the current stream (a lane's inside
    Lane.run): a call there only enqueues work (a CUDA graph's replay, a TensorRT launch), so the host's
    clock would time the enqueue and charge the waiting to whichever stage synchronises; the events time
    the GPU's own work on that stream, read once the run has finished. On the CPU by the host's clock."""
    device = getattr(args[0], "device", None) if args else None
    if device is None or device.type != "cuda" or not torch.cuda.is_available():
        return times.timed(name, fn, *args)
    stream = torch.cuda.current_stream(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record(stream)
    out = fn(*args)
    end.record(stream)
    times.add_events(name, start, end)
    return out


class Staging:
    """Pinned host buffers for frames going up to (or coming down from) the GPU, reused in a ring; plain
    tensors on the CPU. `up` and `down` move uint8 frames (B, H, W, 3)."""

    def __init__(self, shape: tuple[int, ...], device: torch.device, ring: int = 3):
        self.device, self.cuda = device, device.type == "cuda"
        self.buffers = [torch.empty(shape, dtype=torch.uint8, pin_memory=self.cuda) for _ in range(ring)]
        self.events: list = [None] * ring
        self.i = 0

    def up(self, frames: np.ndarray) -> torch.Tensor:
        """Host frames -> device (non-blocking from pinned memory on CUDA)."""
        if not self.cuda:
            return torch.from_numpy(np.ascontiguousarray(frames))
        k, self.i = self.i, (self.i + 1) % len(self.buffers)
        if self.events[k] is not None:
            self.events[k].synchronize()  # the copy that last used this buffer is done (usually long ago)
        self.buffers[k].numpy()[...] = frames
        out = self.buffers[k].to(self.device, non_blocking=True)
        self.events[k] = torch.cuda.Event()
        self.events[k].record()
        return out

    def down(self, frames: torch.Tensor) -> np.ndarray:
        """Device frames -> host numpy (waits for these bytes only)."""
        if not self.cuda:
            return frames.numpy()
        k, self.i = self.i, (self.i + 1) % len(self.buffers)
        self.buffers[k].copy_(frames, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        done.synchronize()
        return self.buffers[k].numpy().copy()
