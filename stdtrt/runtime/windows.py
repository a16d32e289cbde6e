"""The video student at run time: frames in overlapping windows through the motion UNet.

A window of W frames (`--window`) is one trajectory: the frames' content latents, x_start with the video's
noise (VideoNoise: one fixed noise for every frame, so a still scene stays still within and across
windows, or `--fresh-noise`), then the NFE sequential student steps, the motion modules attending across the window.
Consecutive windows overlap by O frames (`--overlap`); in the overlap the clean latents of the two windows
are blended with weights that sum to one, ramping from the earlier window to the later one, so there is no
seam. Only one window (and its overlap with the next) is ever in memory; frames leave in order.
"""

from __future__ import annotations

import numpy as np
import torch

from stdtrt.runtime.pipeline import StageTimes
from stdtrt.runtime.student import Student, VideoNoise, to_tensor, to_uint8


def blend_weights(overlap: int) -> torch.Tensor:
    """The later window's weight at each overlapped frame, (1 .. O) / (O + 1); the earlier's is 1 - it."""
    return torch.arange(1, overlap + 1, dtype=torch.float32) / (overlap + 1)


class WindowRunner:
    """A motion student (a Student on a model with a UNetMotionModel) as one stage of a video."""

    skipped = 0  # the similarity filter belongs to the per-frame stream form

    def __init__(self, student: Student, window: int, overlap: int, seed: int = 0, fresh_noise: bool = False):
        self.student, self.window, self.overlap = student, window, overlap
        self.width, self.height = student.width, student.height
        # the video's one noise rule (runtime/student.VideoNoise): the same fixed noise for every frame, as
        # the image student has (a still scene stays still, across windows too), or --fresh-noise
        self.noise = VideoNoise(student.latent_shape, seed, fresh_noise)
        self.generator = torch.Generator().manual_seed(seed)  # gamma > 0: the re-noising, seeded
        self.times = StageTimes()

    def describe(self) -> str:
        s = self.student
        return (
            f"torch on {s.device}, motion student in windows of {self.window} frames overlapping by {self.overlap} "
            f"({s.plan.nfe} sequential steps per window)"
        )

    @torch.no_grad()
    def latents(self, frames: np.ndarray) -> torch.Tensor:
        """A window of uint8 frames (W, H, W_px, 3) -> its clean latents (W, 4, h, w), float32 on the CPU."""
        s = self.student
        z = s.encode(to_tensor(frames, s.device))  # (W, 4, h, w): the VAE sees frames
        clip = z.transpose(0, 1).unsqueeze(0)  # (1, 4, W, h, w): the UNet sees the window
        noise = self.noise.take(clip.shape[2]).transpose(0, 1).unsqueeze(0)  # (1, 4, W, h, w)
        out = self.times.timed("unet", s.sample, clip, noise, self.generator)
        return out[0].transpose(0, 1).float().cpu()

    def _decode(self, latents: torch.Tensor) -> np.ndarray:
        return to_uint8(self.times.timed("vae_decode", self.student.decode, latents.to(self.student.device)))

    def stylize(self, items):
        """(frame, tag) in order -> (stylized frame, tag) in order."""
        w, o = self.window, self.overlap
        buffer: list = []  # frames of the next window: the overlap with the last one, then new frames
        tail = None  # the last window's clean latents of the overlap, not yet blended or emitted
        ramp = blend_weights(o).view(-1, 1, 1, 1)

        def run(frames: list, final: bool):
            nonlocal tail
            real = len(frames)
            padded = frames + [frames[-1]] * (w - real)  # the last window: static shapes, padding dropped
            lat = self.latents(np.stack([rgb for rgb, _ in padded]))[:real]
            if tail is not None:
                n = min(o, real)
                lat[:n] = (1 - ramp[:n]) * tail[:n] + ramp[:n] * lat[:n]
            keep = 0 if final else o
            done = real - keep
            for frame, (_, tag) in zip(self._decode(lat[:done]), frames[:done], strict=True):
                yield frame, tag
            tail = lat[done:] if keep else None

        for item in items:
            buffer.append(item)
            if len(buffer) == w:
                yield from run(buffer, final=False)
                buffer = buffer[w - o :] if o else []
        if buffer and (tail is None or len(buffer) > o):
            yield from run(buffer, final=True)
        elif tail is not None:  # the video ended exactly where the next window would start
            for frame, (_, tag) in zip(self._decode(tail), buffer, strict=True):
                yield frame, tag

    def stages(self) -> list:
        return [self.stylize]
