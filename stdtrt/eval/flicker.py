"""Temporal consistency of a stylized video: the warp error between consecutive output frames.

Optical flow is computed on the *input* frames (OpenCV DIS), the previous output frame is warped by it onto
the current one, pixels that fail a forward-backward consistency check (occlusions, flow errors) are
masked out, and the mean absolute difference (0..255 scale) is taken over the rest (StreamV2V's warp
error). The input video's own warp error, measured the same way, is the floor: what a perfectly stable
stylization would score. Beside it: a frame-to-frame similarity (the correlation of consecutive frames'
pixels, no flow: 1 for a still video) and the distance of a video's frames from another's (how far a
steadier method moved the frames from a reference's: steadiness bought by losing the style is no win).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from stdtrt.errors import StdtrtError
from stdtrt.io.video import probe, read_frames


@dataclass(frozen=True)
class FlickerReport:
    pairs: int  # consecutive frame pairs measured
    output_warp_error: float  # mean |O_t - warp(O_{t-1})| over consistent pixels, 0..255
    input_warp_error: float  # the same for the input frames: the floor
    valid_fraction: float  # mean fraction of pixels that passed the occlusion check
    output_similarity: float = float("nan")  # mean frame_similarity of consecutive output frames
    input_similarity: float = float("nan")  # the same for the input frames

    def __str__(self) -> str:
        return (
            f"warp error {self.output_warp_error:.3f} (input floor {self.input_warp_error:.3f}, "
            f"ratio {self.output_warp_error / max(self.input_warp_error, 1e-9):.2f}x) over {self.pairs} frame pairs, "
            f"{100 * self.valid_fraction:.0f}% of pixels unoccluded"
        )


class _Flow:
    def __init__(self):
        self.dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Flow from grey frame a to b: a(x) ~ b(x + flow(x)).  # (H, W, 2)"""
        return self.dis.calc(a, b, None)


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return xs, ys


def _warp(image: np.ndarray, flow: np.ndarray, grid) -> np.ndarray:
    xs, ys = grid
    return cv2.remap(
        image, xs + flow[..., 0], ys + flow[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )


def consistency_mask(back: np.ndarray, fwd: np.ndarray, grid) -> np.ndarray:
    """True where the backward flow (t -> t-1) and the forward flow (t-1 -> t) agree (not occluded)."""
    fwd_at = _warp(fwd, back, grid)  # forward flow sampled where each pixel of t came from
    diff = ((back + fwd_at) ** 2).sum(-1)
    mag = (back**2).sum(-1) + (fwd_at**2).sum(-1)
    h, w = back.shape[:2]
    xs, ys = grid
    inside = (
        (xs + back[..., 0] >= 0)
        & (xs + back[..., 0] <= w - 1)
        & (ys + back[..., 1] >= 0)
        & (ys + back[..., 1] <= h - 1)
    )
    return (diff < 0.01 * mag + 0.5) & inside


def _masked_error(frame, prev, back, grid, mask) -> float:
    """Mean absolute difference (0..255) between `frame` and `prev` warped onto it, over the mask's pixels."""
    diff = np.abs(frame.astype(np.float32) - _warp(prev, back, grid).astype(np.float32))
    return float((diff * mask[..., None]).sum() / (mask.sum() * 3))


def warp_errors(inputs, outputs) -> FlickerReport:
    """Iterate over matching (input, output) RGB uint8 frames; return the mean warp errors."""
    flow = _Flow()
    prev_in = prev_out = prev_grey = None
    grid = None
    errs, floors, valid, sims, sims_in = [], [], [], [], []
    for rgb_in, rgb_out in zip(inputs, outputs, strict=True):
        if rgb_out.shape != rgb_in.shape:
            rgb_out = cv2.resize(rgb_out, (rgb_in.shape[1], rgb_in.shape[0]), interpolation=cv2.INTER_AREA)
        grey = cv2.cvtColor(rgb_in, cv2.COLOR_RGB2GRAY)
        if prev_in is not None:
            grid = grid or _grid(*grey.shape)
            back, fwd = flow(grey, prev_grey), flow(prev_grey, grey)
            mask = consistency_mask(back, fwd, grid)
            if mask.any():
                errs.append(_masked_error(rgb_out, prev_out, back, grid, mask))
                floors.append(_masked_error(rgb_in, prev_in, back, grid, mask))
            valid.append(float(mask.mean()))
            sims.append(frame_similarity(prev_out, rgb_out))
            sims_in.append(frame_similarity(prev_in, rgb_in))
        prev_in, prev_out, prev_grey = rgb_in, rgb_out, grey
    if not errs:
        raise StdtrtError("need at least two frames with unoccluded pixels to measure temporal consistency")
    return FlickerReport(len(errs), float(np.mean(errs)), float(np.mean(floors)), float(np.mean(valid)),
                         float(np.mean(sims)), float(np.mean(sims_in)))  # fmt: skip


def frame_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Similarity of two frames in [-1, 1]: the cosine of their mean-removed pixels (Pearson correlation;
    no flow, so motion lowers it too: compare it with the input's own). 1 for equal frames."""
    x = a.astype(np.float64).ravel()
    y = b.astype(np.float64).ravel()
    x, y = x - x.mean(), y - y.mean()
    norm = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / norm) if norm > 0 else float(np.array_equal(a, b))


def frame_distance(frames, reference) -> float:
    """Mean absolute difference (0..255) between matching uint8 frames of two videos of one input: how far a
    method moved the frames from a reference method's."""
    diffs = [np.abs(a.astype(np.float32) - b.astype(np.float32)).mean()
             for a, b in zip(frames, reference, strict=True)]  # fmt: skip
    if not diffs:
        raise StdtrtError("no frames to compare")
    return float(np.mean(diffs))


def report(input_path: str | Path, output_path: str | Path) -> FlickerReport:
    """Warp error of a stylized video against its input (streamed: two frames in memory at a time)."""

    a, b = probe(input_path), probe(output_path)
    frames_in = (rgb for rgb, _ in read_frames(a))
    frames_out = (rgb for rgb, _ in read_frames(b))
    try:
        return warp_errors(frames_in, frames_out)
    except ValueError:  # zip(strict=True): the frame counts differ
        raise StdtrtError(f"{input_path} and {output_path} have different frame counts") from None
