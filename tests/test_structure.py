"""The edge F1 of stdtrt/eval/structure.py (how much structure a stylized frame keeps): identical maps score
1, a shift within the tolerance still 1, a shift past it less, disjoint and empty-against-edges maps 0."""

import numpy as np
import pytest

from stdtrt.eval.structure import edge_f1, edge_scores, frames_edge_f1


def square(side: int = 32, at: int = 8, size: int = 12) -> np.ndarray:
    """The outline of a square, 0/255 in 3 channels (as control_maps.canny gives)."""
    m = np.zeros((side, side), np.uint8)
    m[at, at : at + size] = m[at + size - 1, at : at + size] = 255
    m[at : at + size, at] = m[at : at + size, at + size - 1] = 255
    return np.repeat(m[..., None], 3, axis=2)


def test_identical_maps_score_one():
    assert edge_f1(square(), square(), tolerance=0) == 1.0
    assert edge_scores(square(), square())["precision"] == 1.0


def test_a_shift_within_the_tolerance_is_forgiven_and_past_it_is_not():
    shifted = np.roll(square(), 1, axis=1)  # one pixel to the right
    assert edge_f1(square(), shifted, tolerance=1) == 1.0
    assert edge_f1(square(), shifted, tolerance=0) < 1.0
    far = np.roll(square(), 3, axis=1)
    f1 = edge_f1(square(), far, tolerance=1)
    assert 0.0 < f1 < 1.0  # the horizontal sides still overlap in part
    assert edge_f1(square(), far, tolerance=3) == 1.0


def test_disjoint_and_empty_maps():
    a, b = square(at=2, size=6), square(at=20, size=6)
    assert edge_f1(a, b, tolerance=2) == 0.0
    empty = np.zeros_like(a)
    assert edge_f1(a, empty) == 0.0 and edge_f1(empty, a) == 0.0
    assert edge_f1(empty, empty) == 1.0
    with pytest.raises(ValueError, match="different sizes"):
        edge_f1(a, a[:16])


def test_precision_and_recall_are_not_swapped():
    """Extra edges in the output cost precision, missing ones cost recall."""
    more = np.maximum(square(), square(at=20, size=6))
    s = edge_scores(square(), more, tolerance=0)
    assert s["recall"] == 1.0 and s["precision"] < 1.0
    s = edge_scores(more, square(), tolerance=0)
    assert s["precision"] == 1.0 and s["recall"] < 1.0


def test_frames_edge_f1_on_rgb_frames():
    frame = np.zeros((32, 32, 3), np.uint8)
    frame[8:24, 8:24] = 255  # a white square: Canny finds its outline
    assert frames_edge_f1([frame], [frame]) == 1.0
    moved = np.roll(frame, 6, axis=0)
    assert frames_edge_f1([frame], [moved]) < 1.0
    assert frames_edge_f1([frame], [np.zeros_like(frame)]) == 0.0
