"""The stream form at run time: NFE frames in flight, one UNet call per frame.

The pipe holds NFE slots; slot i holds a frame's latent at the i-th student timestep. A new frame's
x_start (schedule.x_start) enters slot 0; one `backend.step` moves every slot one DDIM jump on; the last
slot leaves as a clean latent and the others shift down one slot. A frame therefore leaves NFE - 1 calls
after it entered, frames leave in order, and the end of the video flushes the pipe (NFE - 1 more calls).
Each frame sees exactly the jumps of the sequential sampler, so its result equals NFE sequential student
steps on the same frame and noise (tests/test_stream.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import numpy as np
import torch

from stdtrt import schedule
from stdtrt.runtime.pipeline import StageTimes, compose
from stdtrt.runtime.student import VideoNoise, to_tensor, to_uint8

log = logging.getLogger(__name__)


class StreamState:
    """The NFE-slot pipe of one video. `noise`: a (1, 4, h, w) tensor (fixed per video) or a callable
    giving one per frame."""

    def __init__(
        self, backend, noise: torch.Tensor | Callable[[], torch.Tensor], times: StageTimes | None = None
    ):
        self.backend, self.plan = backend, backend.plan
        if not callable(noise):  # fixed per video: moved to the device once, not per frame
            noise = noise.to(backend.device, torch.float32)
        self.noise = noise
        self.times = times or StageTimes()
        self.slots = torch.zeros(
            (self.plan.nfe, *backend.latent_shape), device=backend.device
        )  # (NFE, 4, h, w)
        self.tags: list = [None] * self.plan.nfe  # what each slot holds; None = empty
        self.calls = 0

    def push(self, z0: torch.Tensor, tag) -> list[tuple[torch.Tensor, object]]:
        """Enter a frame's content latent z0 (1, 4, h, w); return the frames that finished (0 or 1)."""
        noise = self.noise() if callable(self.noise) else self.noise
        noise = noise.to(self.slots.device, self.slots.dtype)
        self.slots[0] = schedule.x_start(
            z0.to(self.slots.device)[0], noise[0], self.plan.a_start, self.plan.b_start
        )
        self.tags[0] = tag
        return self._advance()

    def flush(self) -> list[tuple[torch.Tensor, object]]:
        """Run the pipe empty: the frames still in flight, in order."""
        done = []
        while any(t is not None for t in self.tags):
            done += self._advance()
        return done

    def _advance(self) -> list[tuple[torch.Tensor, object]]:
        out = self.times.timed("unet", self.backend.step, self.slots)  # slot i now at targets[i]; last: clean
        self.calls += 1
        done = [(out[-1:], self.tags[-1])] if self.tags[-1] is not None else []
        self.slots[1:] = out[:-1]
        self.slots[0].zero_()
        self.tags = [None, *self.tags[:-1]]
        return done


class StreamRunner:
    """A loaded backend as the stages of a video: VAE encode -> stream UNet -> VAE decode.

    Items are (uint8 frame (H, W, 3) at the bundle's size, tag); tags (timestamps) travel with them.
    """

    def __init__(self, backend, seed: int = 0, fresh_noise: bool = False, times: StageTimes | None = None):
        self.backend, self.seed, self.fresh_noise = backend, seed, fresh_noise
        self.width, self.height = backend.width, backend.height
        self.times = times or StageTimes()

    def describe(self) -> str:
        return (
            f"{self.backend.describe()}, stream form ({self.backend.plan.nfe} slots, one UNet call per frame)"
        )

    def encode(self, items: Iterator) -> Iterator:
        for rgb, tag in items:
            x = to_tensor(np.asarray(rgb)[None], self.backend.device)
            yield self.times.timed("vae_encode", self.backend.encode, x), tag

    def unet(self, items: Iterator) -> Iterator:
        noise = VideoNoise(self.backend.latent_shape, self.seed, self.fresh_noise, self.backend.device)
        state = StreamState(self.backend, noise.take, self.times)
        for z0, tag in items:
            yield from state.push(z0, tag)
        yield from state.flush()

    def decode(self, items: Iterator) -> Iterator:
        for z, tag in items:
            yield to_uint8(self.times.timed("vae_decode", self.backend.decode, z))[0], tag

    def stages(self) -> list:
        """The network stages: three threads where they can overlap (CUDA), else one."""
        stages = [self.encode, self.unet, self.decode]
        return stages if self.backend.concurrent_stages else [compose(stages)]

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """One frame (an image): fill, flush, done (NFE UNet calls)."""
        ((out, _),) = list(compose(self.stages())(iter([(rgb, 0)])))
        return out
