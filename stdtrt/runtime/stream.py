"""The stream form at run time: NFE groups of B frames in flight, one UNet call per group.

The pipe holds NFE slots of B frames (B = the backend's frames per step, 1 by default); slot i holds
latents at the i-th student timestep. One `backend.step(slots, z0, noise)` does the whole step inside the
graph: the new frames' x_start (schedule.x_start) enters slot 0, every slot makes one DDIM jump, the last
slot leaves as clean latents and the others shift down one slot. A frame therefore leaves in the NFE-th
call counting the one it entered in (its output NFE - 1 calls after its input), frames leave in order,
and the end of the video flushes the pipe (NFE - 1 more calls).
Each frame sees exactly the jumps of the sequential sampler, so its result equals NFE sequential student
steps on the same frame and noise (tests/test_stream.py).

On CUDA every stage runs on a CUDA stream of its own (runtime/lanes.py); `--skip-threshold`'s filter is
runtime/similarity.py.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import numpy as np
import torch

from stdtrt.runtime.lanes import Lane, Staging, timed
from stdtrt.runtime.pipeline import StageTimes, compose
from stdtrt.runtime.similarity import SimilarityFilter, Skip
from stdtrt.runtime.student import VideoNoise

log = logging.getLogger(__name__)


class StreamState:
    """The NFE-slot pipe of one video (B frames per slot). `noise(n)` gives noise for the next n frames.

    What the UNet graph carries from call to call is held here by name (the backend's step inputs X whose
    X_next it returns): the slots, and with cached attention the cache (it stays with the slots' positions),
    with a ControlNet the maps of the frames in the slots (they move with the frames). Per call it passes
    the new frames' z0, noise and control maps, and the frame each slot holds (`frame_index`)."""

    def __init__(self, backend, noise: Callable[[int], torch.Tensor], times: StageTimes | None = None):
        self.backend, self.plan, self.batch = backend, backend.plan, backend.batch
        self.noise, self.times = noise, times or StageTimes()
        self.state = backend.empty_state()  # {"slots": ..., "cache": ..., "control_slots": ...}
        self.tags: list[list | None] = [None] * self.plan.nfe  # what each slot holds; None = empty
        self.calls = 0
        self.held = [-1] * self.plan.nfe  # the frame each slot held in the last call (-1: none)
        self.entered = 0  # frames that entered the pipe
        self.control_shape = next((shape for name, shape, _ in backend.step_specs if name == "control"), None)

    @property
    def slots(self) -> torch.Tensor:
        return self.state["slots"]

    def push(
        self, z0: torch.Tensor, tags: list, noise: torch.Tensor | None = None, control=None
    ) -> list[tuple[torch.Tensor, list]]:
        """Enter B frames' content latents z0 (B, 4, h, w) with their tags (None for padding), their noise
        (default: the next B frames' of `noise`) and, with a ControlNet, their maps (B, H, W, 3) uint8;
        return the group that finished, if any: [(latents (B, 4, h, w), tags)]."""
        return self._advance(z0, tags, self.noise(self.batch) if noise is None else noise, control)

    def newest(self) -> list | None:
        """The tags of the newest group still in the pipe (None when it has left, or none is in)."""
        return self.tags[1] if len(self.tags) > 1 else None

    def flush(self) -> list[tuple[torch.Tensor, list]]:
        """Run the pipe empty: the groups still in flight, in order."""
        done = []
        empty = torch.zeros_like(self.slots[: self.batch])
        while any(t is not None for t in self.tags):
            done += self._advance(empty, None, empty, None)
        return done

    def _advance(self, z0, tags, noise, control) -> list[tuple[torch.Tensor, list]]:
        """One step: the new frames fill slot 0 and jump with the rest; the last slot's group leaves."""
        self.held = [self.entered if tags is not None else -1, *self.held[:-1]]  # slot i: slot i-1's frame
        self.entered += tags is not None
        dev = self.backend.device
        given = {"z0": z0, "noise": noise, **self.state}
        if "frame_index" in self.backend.step_inputs:
            given["frame_index"] = torch.tensor(self.held, dtype=torch.long, device=dev)
        if self.control_shape is not None:
            given["control"] = (
                control
                if control is not None
                else torch.zeros(self.control_shape, dtype=torch.uint8, device=dev)
            )
        outputs = timed(self.times, "unet", self.backend.step, *(given[n] for n in self.backend.step_inputs))
        named = dict(zip(self.backend.step_outputs, outputs, strict=True))
        self.state = {name: named[f"{name}_next"] for name in self.state}
        self.calls += 1
        held = [tags, *self.tags[1:]]  # what each slot held in this call (slot 0: the new frames)
        self.tags = [None, *held[:-1]]  # slot 0 of the state is always free: new frames enter there
        return [(named["done"], held[-1])] if held[-1] is not None else []


class StreamRunner:
    """A loaded backend as the stages of a video: VAE encode -> stream UNet -> VAE decode.

    Items are (uint8 frame (H, W, 3) at the working size, tag); tags (timestamps) travel with them, frames
    go through the networks B at a time (a short last group is padded, its padding dropped). Inside, each
    frame of a group carries a list of tags: its own, then those of the frames the similarity filter let
    reuse its output; a frame skipped while no group is being built travels as a `Skip` and is attached to
    the newest group still in the pipe, or (once that has left) repeats the last decoded frame.
    """

    def __init__(
        self,
        backend,
        seed: int = 0,
        noise_rule: str = "shared",
        times: StageTimes | None = None,
        skip_threshold: float | None = None,
        max_skips: int = 10,
        maps=None,
        first: int = 0,
    ):
        """`maps`: with a ControlNet bundle or model, the frames' control maps (models.control_maps.ControlMaps),
        computed in a stage of their own before the networks where stages overlap. `first`: the index in
        the video of the first frame that enters (a segment's, stdtrt/batch): its noise and frame index are
        the video's, not the segment's."""
        self.backend, self.seed, self.noise_rule, self.first = backend, seed, noise_rule, first
        self.width, self.height, self.batch = backend.width, backend.height, backend.batch
        self.times = times or StageTimes()
        self.filter = SimilarityFilter(skip_threshold, max_skips)
        self.maps = maps

    @property
    def skipped(self) -> int:
        """Frames that reused an output instead of going through the networks."""
        return self.filter.skipped

    def describe(self) -> str:
        b = self.batch
        per = "one UNet call per frame" if b == 1 else f"{b} frames per slot, one UNet call per {b} frames"
        return f"{self.backend.describe()}, stream form ({self.backend.plan.nfe} slots, {per})"

    def mapped(self, items: Iterator) -> Iterator:
        """The control-map stage: (frame, tag) -> (frame, tag, its control map)."""
        for rgb, tag, *_ in items:
            yield rgb, tag, self.times.timed("control_map", self.maps, rgb)
        self.maps.finish()

    def _groups(self, items: Iterator):
        """Groups of B (frame, [tags], control map or None), and Skip markers, in order."""
        group = []
        for rgb, tag, *mapped in items:
            if self.filter.skip(rgb):
                if group:
                    group[-1][1].append(tag)  # the newest processed frame is in the group being built
                else:
                    yield Skip(tag)
                continue
            control = (
                mapped[0]
                if mapped
                else self.times.timed("control_map", self.maps, rgb)
                if self.maps
                else None
            )
            group.append((rgb, [tag], control))
            if len(group) == self.batch:
                yield group
                group = []
        if group:
            yield group + [(group[-1][0], None, group[-1][2])] * (self.batch - len(group))

    def encode(self, items: Iterator) -> Iterator:
        device = self.backend.device
        lane = Lane(device)
        staging = Staging((self.batch, self.height, self.width, 3), device)
        for group in self._groups(items):
            if isinstance(group, Skip):
                yield group
                continue
            frames = np.stack([np.asarray(rgb) for rgb, _, _ in group])
            with lane.run():
                z0 = timed(self.times, "vae_encode", self.backend.encode, staging.up(frames))
                maps = None
                if self.maps is not None:  # (B, H, W, 3) uint8, beside the frames they belong to
                    maps = torch.from_numpy(np.stack([m for _, _, m in group])).to(device, non_blocking=True)
            yield z0, [tags for _, tags, _ in group], lane.mark(), maps

    def unet(self, items: Iterator) -> Iterator:
        lane = Lane(self.backend.device)
        with lane.run():  # the pipe's state and the fixed noise are made on the lane that uses them
            noise = VideoNoise(self.backend.latent_shape, self.seed, self.noise_rule, self.backend.device)
            noise.next = self.first
            self.state = state = StreamState(
                self.backend, noise.take, self.times
            )  # (kept: bench, tests read it)
            state.entered = self.first
        for item in items:
            if isinstance(item, Skip):
                newest = state.newest()
                if newest is None:
                    yield item  # its frame has left the pipe: the decode stage repeats it
                else:
                    next(t for t in reversed(newest) if t is not None).append(item.tag)
                continue
            z0, tags, event, maps = item
            with lane.run(event, z0):
                done = state.push(z0, tags, control=maps)
            for latents, done_tags in done:
                yield latents, done_tags, lane.mark()
        with lane.run():
            done = state.flush()
        for latents, done_tags in done:
            yield latents, done_tags, lane.mark()

    def decode(self, items: Iterator) -> Iterator:
        lane = Lane(self.backend.device)
        staging = Staging((self.batch, self.height, self.width, 3), self.backend.device)
        last = None
        for item in items:
            if isinstance(item, Skip):
                yield last, item.tag
                continue
            latents, tags, event = item
            with lane.run(event, latents):
                frames = staging.down(timed(self.times, "vae_decode", self.backend.decode, latents))
            for frame, frame_tags in zip(frames, tags, strict=True):
                for tag in frame_tags or ():
                    yield frame, tag
                last = frame if frame_tags else last

    def stages(self) -> list:
        """The network stages: three threads where they can overlap (CUDA; a CPU backend says), else one;
        with a ControlNet the control maps first, in a thread of their own (beside the networks)."""
        stages = [self.encode, self.unet, self.decode]
        stages = stages if self.backend.concurrent_stages else [compose(stages)]
        return [self.mapped, *stages] if self.maps is not None else stages

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """One frame (an image): fill, flush, done (NFE UNet calls)."""
        ((out, _),) = list(compose(self.stages())(iter([(rgb, 0)])))
        return out
