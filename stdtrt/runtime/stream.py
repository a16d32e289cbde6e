"""The stream form at run time: NFE groups of B frames in flight, one UNet call per group.

The pipe holds NFE slots of B frames (B = the backend's frames per step, 1 by default); slot i holds
latents at the i-th student timestep. One `backend.step(slots, z0, noise)` does the whole step inside the
graph: the new frames' x_start (schedule.x_start) enters slot 0, every slot makes one DDIM jump, the last
slot leaves as clean latents and the others shift down one slot. A frame therefore leaves in the NFE-th
call counting the one it entered in (its output NFE - 1 calls after its input), frames leave in order,
and the end of the video flushes the pipe (NFE - 1 more calls).
Each frame sees exactly the jumps of the sequential sampler, so its result equals NFE sequential student
steps on the same frame and noise (tests/test_stream.py).

On CUDA every stage runs on a CUDA stream of its own (a `Lane`): frames go up from pinned staging buffers
without blocking, each hand-off carries an event the next stage's stream waits on (and the tensor is
recorded on that stream, so the allocator does not reuse it early), and the only host synchronisation of a
frame is the decode stage waiting for its own bytes to come down. On the CPU all of this is a no-op.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

import numpy as np
import torch

from stdtrt.runtime.pipeline import StageTimes, compose
from stdtrt.runtime.student import VideoNoise

log = logging.getLogger(__name__)


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


class StreamState:
    """The NFE-slot pipe of one video (B frames per slot). `noise(n)` gives noise for the next n frames."""

    def __init__(self, backend, noise: Callable[[int], torch.Tensor], times: StageTimes | None = None):
        self.backend, self.plan, self.batch = backend, backend.plan, backend.batch
        self.noise, self.times = noise, times or StageTimes()
        self.slots = torch.zeros((self.plan.nfe * self.batch, *backend.latent_shape), device=backend.device)
        self.tags: list[list | None] = [None] * self.plan.nfe  # what each slot holds; None = empty
        self.calls = 0

    def push(self, z0: torch.Tensor, tags: list) -> list[tuple[torch.Tensor, list]]:
        """Enter B frames' content latents z0 (B, 4, h, w) with their tags (None for padding); return the
        group that finished, if any: [(latents (B, 4, h, w), tags)]."""
        return self._advance(z0, tags, self.noise(self.batch))

    def flush(self) -> list[tuple[torch.Tensor, list]]:
        """Run the pipe empty: the groups still in flight, in order."""
        done = []
        empty = torch.zeros_like(self.slots[: self.batch])
        while any(t is not None for t in self.tags):
            done += self._advance(empty, None, empty)
        return done

    def _advance(self, z0, tags, noise) -> list[tuple[torch.Tensor, list]]:
        """One step: the new frames fill slot 0 and jump with the rest; the last slot's group leaves."""
        self.slots, out = self.times.timed("unet", self.backend.step, self.slots, z0, noise)
        self.calls += 1
        held = [tags, *self.tags[1:]]  # what each slot held in this call (slot 0: the new frames)
        self.tags = [None, *held[:-1]]  # slot 0 of the state is always free: new frames enter there
        return [(out, held[-1])] if held[-1] is not None else []


class StreamRunner:
    """A loaded backend as the stages of a video: VAE encode -> stream UNet -> VAE decode.

    Items are (uint8 frame (H, W, 3) at the working size, tag); tags (timestamps) travel with them, frames
    go through the networks B at a time (a short last group is padded, its padding dropped).
    """

    def __init__(self, backend, seed: int = 0, fresh_noise: bool = False, times: StageTimes | None = None):
        self.backend, self.seed, self.fresh_noise = backend, seed, fresh_noise
        self.width, self.height, self.batch = backend.width, backend.height, backend.batch
        self.times = times or StageTimes()

    def describe(self) -> str:
        b = self.batch
        per = "one UNet call per frame" if b == 1 else f"{b} frames per slot, one UNet call per {b} frames"
        return f"{self.backend.describe()}, stream form ({self.backend.plan.nfe} slots, {per})"

    def _groups(self, items: Iterator):
        group = []
        for rgb, tag in items:
            group.append((rgb, tag))
            if len(group) == self.batch:
                yield group
                group = []
        if group:
            yield group + [(group[-1][0], None)] * (self.batch - len(group))

    def encode(self, items: Iterator) -> Iterator:
        device = self.backend.device
        lane = Lane(device)
        staging = Staging((self.batch, self.height, self.width, 3), device)
        for group in self._groups(items):
            frames = np.stack([np.asarray(rgb) for rgb, _ in group])
            with lane.run():
                z0 = self.times.timed("vae_encode", self.backend.encode, staging.up(frames))
            yield z0, [tag for _, tag in group], lane.mark()

    def unet(self, items: Iterator) -> Iterator:
        lane = Lane(self.backend.device)
        noise = VideoNoise(self.backend.latent_shape, self.seed, self.fresh_noise, self.backend.device)
        state = StreamState(self.backend, noise.take, self.times)
        for z0, tags, event in items:
            with lane.run(event, z0):
                done = state.push(z0, tags)
            for latents, done_tags in done:
                yield latents, done_tags, lane.mark()
        with lane.run():
            done = state.flush()
        for latents, done_tags in done:
            yield latents, done_tags, lane.mark()

    def decode(self, items: Iterator) -> Iterator:
        lane = Lane(self.backend.device)
        staging = Staging((self.batch, self.height, self.width, 3), self.backend.device)
        for latents, tags, event in items:
            with lane.run(event, latents):
                frames = staging.down(self.times.timed("vae_decode", self.backend.decode, latents))
            yield from ((frame, tag) for frame, tag in zip(frames, tags, strict=True) if tag is not None)

    def stages(self) -> list:
        """The network stages: three threads where they can overlap (CUDA; a CPU backend says), else one."""
        stages = [self.encode, self.unet, self.decode]
        return stages if self.backend.concurrent_stages else [compose(stages)]

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """One frame (an image): fill, flush, done (NFE UNet calls)."""
        ((out, _),) = list(compose(self.stages())(iter([(rgb, 0)])))
        return out
