"""How much of a frame's structure a stylized frame keeps: the F1 score of its edges against the input's
edges, with a small pixel tolerance (the boundary F-measure of Martin, Fowlkes and Malik, "Learning to
Detect Natural Image Boundaries", 2004, with a square tolerance window instead of a bipartite matching).

An edge pixel of one map counts as matched when the other map has an edge pixel within `tolerance` pixels
(Chebyshev distance). precision = matched output edges / output edges, recall = matched input edges / input
edges, F1 = 2 P R / (P + R). Two empty maps agree (F1 1); one empty map against edges scores 0.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def _near(edges: np.ndarray, tolerance: int) -> np.ndarray:
    """Pixels within `tolerance` (Chebyshev) of an edge pixel of the boolean map (H, W)."""
    import cv2

    if tolerance <= 0:
        return edges.copy()
    kernel = np.ones((2 * tolerance + 1, 2 * tolerance + 1), np.uint8)
    return cv2.dilate(edges.astype(np.uint8), kernel) > 0


def edge_scores(reference: np.ndarray, candidate: np.ndarray, tolerance: int = 1) -> dict[str, float]:
    """Precision, recall and F1 of the candidate's edges against the reference's: boolean or 0/255 maps
    (H, W) or (H, W, 3) of one size."""
    ref, cand = _boolean(reference), _boolean(candidate)
    if ref.shape != cand.shape:
        raise ValueError(f"edge maps of different sizes: {ref.shape} and {cand.shape}")
    n_ref, n_cand = int(ref.sum()), int(cand.sum())
    if n_ref == 0 and n_cand == 0:
        return {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    if n_ref == 0 or n_cand == 0:
        return {"precision": float(n_cand == 0), "recall": float(n_ref == 0), "f1": 0.0}
    precision = float((cand & _near(ref, tolerance)).sum()) / n_cand
    recall = float((ref & _near(cand, tolerance)).sum()) / n_ref
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def edge_f1(reference: np.ndarray, candidate: np.ndarray, tolerance: int = 1) -> float:
    """The F1 of edge_scores: 1 when every edge of each map has one of the other's within tolerance."""
    return edge_scores(reference, candidate, tolerance)["f1"]


def _boolean(edges: np.ndarray) -> np.ndarray:
    edges = np.asarray(edges)
    if edges.ndim == 3:
        edges = edges[..., 0]
    return edges > 0


def frames_edge_f1(
    inputs: Iterable[np.ndarray], outputs: Iterable[np.ndarray], low: int = 100, high: int = 200,
    tolerance: int = 1,
) -> float:  # fmt: skip
    """Mean edge F1 of RGB uint8 frames' Canny edges (models/control_maps.canny, the thresholds of
    --controlnet canny) against their stylized frames' Canny edges."""
    from stdtrt.models.control_maps import canny

    scores = [
        edge_f1(canny(a, low, high), canny(b, low, high), tolerance)
        for a, b in zip(inputs, outputs, strict=True)
    ]
    return float(np.mean(scores)) if scores else float("nan")
