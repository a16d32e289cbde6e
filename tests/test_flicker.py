"""The warp-error metric: zero for content that only moves, larger for per-frame noise, occlusions masked."""

import numpy as np

from stdtrt.eval.flicker import _grid, consistency_mask, report, warp_errors


def _panning_frames(n=6, shift=2, size=(96, 128)):
    rng = np.random.default_rng(0)
    import cv2

    base = cv2.GaussianBlur(
        rng.integers(0, 255, (size[0], size[1] + n * shift, 3), dtype=np.uint8), (5, 5), 0
    )
    return [np.ascontiguousarray(base[:, i * shift : i * shift + size[1]]) for i in range(n)]


def test_moving_content_has_a_small_warp_error_and_noise_a_large_one():
    frames = _panning_frames()
    stable = warp_errors(frames, frames)
    assert stable.output_warp_error == stable.input_warp_error < 3.0
    rng = np.random.default_rng(1)
    noisy = [np.clip(f.astype(int) + rng.integers(-30, 30, f.shape), 0, 255).astype(np.uint8) for f in frames]
    flicker = warp_errors(frames, noisy)
    assert flicker.output_warp_error > 5 * stable.output_warp_error
    assert flicker.valid_fraction > 0.8


def test_consistency_mask_flags_disagreeing_flow():
    grid = _grid(8, 8)
    zero = np.zeros((8, 8, 2), np.float32)
    assert consistency_mask(zero, zero, grid).all()
    fwd = zero.copy()
    fwd[2:4, 2:4] = 5.0  # forward flow moves a patch, backward says nothing moved: occluded/unreliable
    assert not consistency_mask(zero, fwd, grid)[2:4, 2:4].any()


def test_report_on_files(tmp_path):
    from fractions import Fraction

    from stdtrt.io.video import write_video

    frames = _panning_frames(5)
    write_video(tmp_path / "a.mp4", iter(frames), Fraction(5))
    r = report(tmp_path / "a.mp4", tmp_path / "a.mp4")
    assert r.pairs == 4 and r.output_warp_error == r.input_warp_error
    assert "input floor" in str(r)
