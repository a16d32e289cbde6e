"""The video student at run time: frames in overlapping windows through the motion UNet.

A window of W frames (`--window`) is one trajectory: the frames' content latents, x_start with the video's
noise by the rule the student was distilled with (schedule.frame_noise: each frame its own noise, the same
in every window the frame is part of, or one noise for all), then the NFE student steps, the motion
modules attending across the window.
Two engines run it, frame for frame the same (tests/test_motion.py):
- a `Student` on a model with a UNetMotionModel (`--model ... --motion-adapter`): NFE sequential steps per
  window (and --gamma > 0);
- a video student's bundle backend (bundle/networks.py): the stream form with a window per slot, NFE
  windows in flight, one UNet call per window.
Consecutive windows overlap by O frames (`--overlap`); in the overlap the clean latents of the two windows
are blended with weights that sum to one, ramping from the earlier window to the later one, so there is no
seam. Only the windows in flight (one on the sequential path) and an overlap are in memory; frames leave
in order.
"""

from __future__ import annotations

import numpy as np
import torch

from stdtrt import schedule
from stdtrt.config import check_window, resolve_overlap
from stdtrt.runtime.pipeline import StageTimes
from stdtrt.runtime.stream import StreamState, timed
from stdtrt.runtime.student import Student, VideoNoise, to_tensor, to_uint8


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


class WindowRunner:
    """A motion student (a Student, or a video bundle's backend) as one stage of a video."""

    skipped = 0  # the similarity filter belongs to the per-frame stream form

    def __init__(self, engine, window: int, overlap: int, seed: int = 0, noise_rule: str = "per-frame"):
        self.engine, self.window, self.overlap = engine, window, overlap
        check_window(window)
        resolve_overlap(window, overlap)  # the one rule for a window's overlap
        self.sequential = isinstance(engine, Student)
        if not self.sequential and engine.batch != window:
            raise ValueError(f"the backend runs windows of {engine.batch} frames, not {window}")
        self.width, self.height = engine.width, engine.height
        # the noise rule the student was distilled with (its LoRA's card): every frame its own noise, the
        # same in every window it is part of, or the same noise for all frames
        self.noise = VideoNoise(engine.latent_shape, seed, noise_rule, engine.device)
        self.generator = torch.Generator().manual_seed(seed)  # gamma > 0: the re-noising, seeded
        self.times = StageTimes()

    def describe(self) -> str:
        e, how = self.engine, f"windows of {self.window} frames overlapping by {self.overlap}"
        if self.sequential:
            return f"torch on {e.device}, motion student in {how} ({e.plan.nfe} sequential steps per window)"
        return f"{e.describe()}, motion student in {how} (stream form: {e.plan.nfe} windows in flight)"

    @torch.no_grad()
    def _encode(self, frames: np.ndarray) -> torch.Tensor:
        """A window of uint8 frames (W, H, W_px, 3) -> content latents (W, 4, h, w) on the engine's device."""
        e = self.engine
        if self.sequential:
            return timed(self.times, "vae_encode", e.encode, to_tensor(frames, e.device))
        return timed(self.times, "vae_encode", e.encode, torch.from_numpy(frames).to(e.device))

    @torch.no_grad()
    def _decode(self, latents: torch.Tensor) -> np.ndarray:
        """Clean latents (n, 4, h, w), n <= W -> uint8 frames; a backend decodes W at a time (static shapes)."""
        e, n = self.engine, latents.shape[0]
        latents = latents.to(e.device)
        if self.sequential:
            return to_uint8(timed(self.times, "vae_decode", e.decode, latents))
        padded = torch.cat([latents, latents[-1:].expand(self.window - n, *latents.shape[1:])])
        return timed(self.times, "vae_decode", e.decode, padded)[:n].cpu().numpy()

    @torch.no_grad()
    def _latents(self, windows):
        """(frames, final) per window -> (clean latents (W, 4, h, w) float32 on the CPU, frames, final), in
        order."""
        e = self.engine
        if self.sequential:
            for frames, final, start in windows:
                clip = self._encode(self._pad(frames)).transpose(0, 1)[None]  # (1, 4, W, h, w)
                noise = self.noise.at(start, self.window).transpose(0, 1)[None]
                out = timed(self.times, "unet", e.sample, clip, noise, self.generator)
                yield out[0].transpose(0, 1).float().cpu(), frames, final
            return
        state = StreamState(e, self.noise.take, self.times)
        for frames, final, start in windows:
            z0, noise = self._encode(self._pad(frames)), self.noise.at(start, self.window)
            for latents, (done, done_final) in state.push(z0, (frames, final), noise):
                yield latents.float().cpu(), done, done_final
        for latents, (done, done_final) in state.flush():
            yield latents.float().cpu(), done, done_final

    def _pad(self, frames: list) -> np.ndarray:
        """A window's frames as one array; the last window is padded with its last frame (static shapes)."""
        return np.stack([rgb for rgb, _ in frames + [frames[-1]] * (self.window - len(frames))])

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

    def stylize(self, items):
        """(frame, tag) in order -> (stylized frame, tag) in order."""
        o = self.overlap
        ramp = blend_weights(o).view(-1, 1, 1, 1)
        tail, tail_frames = None, []  # the last window's overlap: clean latents not yet blended or emitted
        for lat, frames, final in self._latents(self._windows(items)):
            real = len(frames)
            lat = lat[:real]
            if tail is not None:
                n = min(o, real)
                lat = torch.cat([(1 - ramp[:n]) * tail[:n] + ramp[:n] * lat[:n], lat[n:]])
            done = real if final else real - o
            for frame, (_, tag) in zip(self._decode(lat[:done]), frames[:done], strict=True):
                yield frame, tag
            tail, tail_frames = (None, []) if final or not o else (lat[done:], frames[done:])
        if tail is not None:  # the video ended exactly where the next window would start
            for frame, (_, tag) in zip(self._decode(tail), tail_frames, strict=True):
                yield frame, tag

    def stages(self) -> list:
        return [self.stylize]
