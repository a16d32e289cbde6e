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


def test_a_known_shift_is_followed_and_an_unshifted_pair_is_not():
    """A pair whose content moves 3 px: an output that moves with it has ~0 warp error on the unoccluded
    pixels; one that stands still (the first frame twice) has a large one."""
    import cv2

    rng = np.random.default_rng(2)
    wide = cv2.GaussianBlur(rng.integers(0, 255, (96, 140, 3), dtype=np.uint8), (7, 7), 0)
    pair = [np.ascontiguousarray(wide[:, 3:131]), np.ascontiguousarray(wide[:, :128])]  # moved right 3 px
    moved = warp_errors(pair, pair)
    assert moved.output_warp_error < 1.0 and moved.valid_fraction > 0.9
    still = warp_errors(pair, [pair[0], pair[0]])
    assert still.output_warp_error > 8 * max(moved.output_warp_error, 0.5)


def test_frame_similarity_and_distance():
    from stdtrt.eval.flicker import frame_distance, frame_similarity

    rng = np.random.default_rng(3)
    a, b = (rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(2))
    assert frame_similarity(a, a) == 1.0
    assert abs(frame_similarity(a, b)) < 0.1  # independent noise
    assert frame_similarity(a, (255 - a).astype(np.uint8)) < -0.99
    assert frame_distance([a, b], [a, b]) == 0.0
    darker = [np.clip(a.astype(int) - 10, 0, 255).astype(np.uint8)]
    assert 9.0 < frame_distance([a], darker) <= 10.0
    r = warp_errors([a, a, a], [a, b, a])
    assert r.input_similarity == 1.0 and abs(r.output_similarity) < 0.1
