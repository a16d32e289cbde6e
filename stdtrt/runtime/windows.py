"""The video student at run time: frames in overlapping windows through the motion UNet.

A window of W frames (`--window`) is one trajectory: the frames' content latents, x_start with the video's
noise by the rule the student was distilled with (schedule.frame_noise: each frame its own noise, the same
in every window the frame is part of, or one noise for all), then the NFE student steps, the motion
modules attending across the window.
One engine runs it, the stream form (runtime/stream.py StreamState, a window per slot, NFE windows in
flight, one UNet call per window): a video bundle's backend (bundle/networks.py), or with `--model ...
--motion-adapter` the torch backend on the model itself. The sequential student (`SequentialWindows`: NFE
steps per window) runs only what the stream form cannot (--gamma > 0) and is the reference the stream
form is checked against, frame for frame (tests/test_motion.py).
Consecutive windows overlap by O frames (`--overlap`); in the overlap the clean latents of the two windows
are blended with weights that sum to one, ramping from the earlier window to the later one, so there is no
seam. Only the windows in flight and an overlap are in memory; frames leave
in order.
"""

from __future__ import annotations

import numpy as np
import torch

from stdtrt import schedule
from stdtrt.config import check_window, resolve_overlap
from stdtrt.models.vae import pixels_to_unit, unit_to_pixels
from stdtrt.runtime.lanes import Lane, Staging, timed
from stdtrt.runtime.pipeline import StageTimes, compose
from stdtrt.runtime.stream import StreamState
from stdtrt.runtime.student import Student, VideoNoise


def blend_weights(overlap: int) -> torch.Tensor:
    """The later window's weight at each overlapped frame, (1 .. O) / (O + 1); the earlier's is 1 - it."""
    return torch.arange(1, overlap + 1, dtype=torch.float32) / (overlap + 1)


def window_starts(frames: int, window: int, overlap: int) -> list[int]:
    """Where the windows of a video of `frames` frames start: WindowRunner's windows (each O frames before
    the last one ended; a last one only while frames remain past the overlap)."""
    starts = [0]
    while starts[-1] + window < frames:
        starts.append(starts[-1] + window - overlap)
    return starts


def window_weights(window: int, overlap: int, first: bool, last: bool) -> torch.Tensor:
    """A window's weight at each of its frames when overlapping windows are blended: rising (1..O)/(O+1)
    over the overlap with the window before (not for the first), falling over the overlap with the next
    (not for the last), 1 between; in each overlap the two windows' weights sum to one.  # (W,)"""
    w = torch.ones(window)
    ramp = blend_weights(overlap)
    if overlap and not first:
        w[:overlap] = ramp
    if overlap and not last:
        w[window - overlap :] = 1 - ramp
    return w


@torch.no_grad()
def sample_blended_per_step(student: Student, z0: torch.Tensor, noise: torch.Tensor, window: int,
                            overlap: int, generator=None) -> torch.Tensor:  # fmt: skip
    """A whole video's clean latents with the overlap blended inside every step (FreeNoise's per-step
    window fusion) instead of once on the windows' clean latents: all frames start at x_start; at each of
    the NFE steps every window makes its step on the current states of its frames, and each frame's next
    state is the weighted mean (window_weights) of the windows' results for it. A frame shared by two
    windows thus carries one state through the trajectory, not two that are blended at the end. With
    overlap 0 it is WindowRunner's result. Holds the whole video (a measurement path: benchmarks/
    consistency.py); the last window is padded with the last frame, as WindowRunner pads it.
    z0: (N, 4, h, w), noise: (N or more, 4, h, w) (frames past N: the padding's) -> (N, 4, h, w) float32."""
    n = z0.shape[0]
    starts = window_starts(n, window, overlap)
    length = starts[-1] + window
    pad = lambda t: torch.cat([t, t[-1:].expand(length - n, *t.shape[1:])])  # noqa: E731
    z0 = pad(z0.float())
    noise = noise[:length].float() if noise.shape[0] >= length else pad(noise.float())
    p = student.plan
    x = schedule.x_start(z0, noise, p.a_start, p.b_start)  # (L, 4, h, w)
    weights = [window_weights(window, overlap, k == 0, k == len(starts) - 1) for k in range(len(starts))]
    for i in range(p.nfe):
        acc, total = torch.zeros_like(x), torch.zeros(length)
        for s, w in zip(starts, weights, strict=True):
            clip = x[s : s + window].transpose(0, 1)[None]  # (1, 4, W, h, w)
            out = student.step(clip, i, generator)[0].transpose(0, 1)  # (W, 4, h, w)
            acc[s : s + window] += w.view(-1, 1, 1, 1) * out
            total[s : s + window] += w
        x = acc / total.view(-1, 1, 1, 1)
    return x[:n]


class SequentialWindows:
    """The sequential motion student as an engine of windows: each window its NFE steps at once, for what
    the stream form cannot do (gamma > 0 re-noises between steps) and as the reference the stream form is
    checked against. Frames in and out as uint8 tensors, as a backend's are."""

    concurrent_stages = False  # one thread: the sequential student is the reference, not the fast path

    def __init__(self, student: Student, window: int, seed: int = 0):
        self.student, self.batch, self.seed = student, window, seed
        self.plan, self.device = student.plan, student.device
        self.width, self.height, self.latent_shape = student.width, student.height, student.latent_shape

    def describe(self) -> str:
        return f"torch on {self.device} (no bundle; {self.plan.nfe} sequential steps per window)"

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        return self.student.encode(pixels_to_unit(frames.to(self.device)))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return unit_to_pixels(self.student.decode(latents))

    def pipe(self, times: StageTimes):
        return _SequentialPipe(self, times)


class _SequentialPipe:
    """StreamState's push/flush for the sequential student: a window leaves in the call it entered."""

    def __init__(self, engine: SequentialWindows, times: StageTimes):
        self.engine, self.times = engine, times
        self.generator = torch.Generator().manual_seed(engine.seed)  # gamma > 0: the re-noising, per run

    def push(self, z0: torch.Tensor, tags, noise: torch.Tensor) -> list:
        e = self.engine
        clip = z0.transpose(0, 1)[None]  # (1, 4, W, h, w)
        out = timed(self.times, "unet", e.student.sample, clip, noise.transpose(0, 1)[None], self.generator)
        return [(out[0].transpose(0, 1), tags)]

    def flush(self) -> list:
        return []


class WindowRunner:
    """A motion student as the stages of a video: windows of W frames -> VAE encode -> UNet (the stream
    form of a backend: NFE windows in flight; or the sequential student) -> the overlap blended -> VAE
    decode. The blend runs on the engine's device, in the UNet's stage; on CUDA each stage has its lane."""

    skipped = 0  # the similarity filter belongs to the per-frame stream form

    def __init__(self, engine, window: int, overlap: int, seed: int = 0, noise_rule: str = "per-frame"):
        """`engine`: a backend whose slot is one window (a video bundle's, or the torch backend on a model
        with its motion adapter), or a Student on a motion model (run as SequentialWindows)."""
        check_window(window)
        resolve_overlap(window, overlap)  # the one rule for a window's overlap
        if isinstance(engine, Student):
            engine = SequentialWindows(engine, window, seed)
        if engine.batch != window:
            raise ValueError(f"the engine runs windows of {engine.batch} frames, not {window}")
        self.engine, self.window, self.overlap = engine, window, overlap
        self.width, self.height = engine.width, engine.height
        self._pipe = engine.pipe if isinstance(engine, SequentialWindows) else self._stream_pipe
        # the noise rule the student was distilled with (its LoRA's card): every frame its own noise, the
        # same in every window it is part of, or the same noise for all frames
        self.noise = VideoNoise(engine.latent_shape, seed, noise_rule, engine.device)
        self.times = StageTimes()

    def _stream_pipe(self, times: StageTimes) -> StreamState:
        return StreamState(self.engine, self.noise.take, times)

    def describe(self) -> str:
        e, how = self.engine, f"windows of {self.window} frames overlapping by {self.overlap}"
        if isinstance(e, SequentialWindows):
            return f"{e.describe()}, motion student in {how}"
        return f"{e.describe()}, motion student in {how} (stream form: {e.plan.nfe} windows in flight)"

    def _windows(self, items):
        """(frames, final, start): windows of W (frame, tag), each starting O frames before the last one
        ended (`start`: its first frame's index in the video); the last one shorter (final) unless the
        video ended exactly where a window's overlap begins."""
        w, o = self.window, self.overlap
        buffer: list = []
        ran, start = False, 0
        for item in items:
            buffer.append(item)
            if len(buffer) == w:
                yield buffer, False, start
                ran, start = True, start + w - o
                buffer = buffer[w - o :] if o else []
        if buffer and (not ran or len(buffer) > o):
            yield buffer, True, start

    def encode(self, items):
        """(frame, tag) in order -> a window's (content latents (W, 4, h, w), its frames, final, start, event);
        the last window is padded with its last frame (static shapes)."""
        lane, w = Lane(self.engine.device), self.window
        staging = Staging((w, self.height, self.width, 3), self.engine.device)
        for frames, final, start in self._windows(items):
            pixels = np.stack([rgb for rgb, _ in frames + [frames[-1]] * (w - len(frames))])
            with lane.run():
                z0 = timed(self.times, "vae_encode", self.engine.encode, staging.up(pixels))
            yield z0, frames, final, start, lane.mark()

    def unet(self, items):
        """Windows' content latents -> blended clean latents of the frames that are done, in order: each
        window's overlap with the next is held back until that one has run (`tail`)."""
        lane, o = Lane(self.engine.device), self.overlap
        with lane.run():
            pipe = self._pipe(self.times)
            ramp = blend_weights(o).view(-1, 1, 1, 1).to(self.engine.device)
        tail, tail_frames = None, []  # the last window's overlap: clean latents not yet blended or let out

        def finished(latents, frames, final):
            nonlocal tail, tail_frames
            real = len(frames)
            lat = latents[:real].float()
            if tail is not None:
                n = min(o, real)
                lat = torch.cat([(1 - ramp[:n]) * tail[:n] + ramp[:n] * lat[:n], lat[n:]])
            done = real if final else real - o
            tail, tail_frames = (None, []) if final or not o else (lat[done:], frames[done:])
            return lat[:done], frames[:done], lane.mark()

        for z0, frames, final, start, event in items:
            with lane.run(event, z0):
                out = pipe.push(z0, (frames, final), self.noise.at(start, self.window))
                done = [finished(lat, *key) for lat, key in out]
            yield from done
        with lane.run():
            done = [finished(lat, *key) for lat, key in pipe.flush()]
        yield from done
        if tail is not None:  # the video ended exactly where the next window would start
            yield tail, tail_frames, lane.mark()

    def decode(self, items):
        """Clean latents (n, 4, h, w), n <= W -> (uint8 frame, tag); decoded W at a time (static shapes)."""
        lane, w = Lane(self.engine.device), self.window
        staging = Staging((w, self.height, self.width, 3), self.engine.device)
        for latents, frames, event in items:
            n = latents.shape[0]
            with lane.run(event, latents):
                padded = torch.cat([latents, latents[-1:].expand(w - n, *latents.shape[1:])])
                pixels = staging.down(timed(self.times, "vae_decode", self.engine.decode, padded))
            for frame, (_, tag) in zip(pixels[:n], frames, strict=True):
                yield frame, tag

    def stages(self) -> list:
        """Three threads where the engine's stages can overlap (CUDA), else one."""
        stages = [self.encode, self.unet, self.decode]
        return stages if self.engine.concurrent_stages else [compose(stages)]

    def stylize(self, items):
        """(frame, tag) in order -> (stylized frame, tag) in order, in this thread."""
        return compose(self.stages())(items)
