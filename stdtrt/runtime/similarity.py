"""`--skip-threshold`: the similarity filter that lets a frame like the last one reuse its output."""

from __future__ import annotations

import numpy as np


class SimilarityFilter:
    """`--skip-threshold`: a frame whose input is as similar as the threshold, or more, to the last frame
    that went through the networks reuses that frame's output, at most `max_skips` times in a row.
    Similarity: the cosine of 32x32 grey copies with their mean removed (1: the same picture, up to
    brightness and contrast). Deterministic: the same video gives the same frames every run."""

    SIDE = 32

    def __init__(self, threshold: float | None, max_skips: int = 10):
        self.threshold, self.max_skips = threshold, max_skips
        self.ref, self.run, self.skipped = None, 0, 0

    @classmethod
    def small(cls, rgb: np.ndarray) -> np.ndarray:
        import cv2

        grey = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
        x = cv2.resize(grey, (cls.SIDE, cls.SIDE), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
        return x - x.mean()

    @staticmethod
    def similarity(a: np.ndarray, b: np.ndarray) -> float:
        na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
        if na < 1e-3 or nb < 1e-3:  # a flat picture: alike only another flat one
            return 1.0 if na < 1e-3 and nb < 1e-3 else 0.0
        return float(a @ b) / (na * nb)

    def skip(self, rgb: np.ndarray) -> bool:
        """Whether this frame reuses the last processed frame's output (and if not, it becomes that frame)."""
        if self.threshold is None:
            return False
        small = self.small(rgb)
        if (
            self.ref is not None
            and self.run < self.max_skips
            and self.similarity(small, self.ref) >= self.threshold
        ):
            self.run += 1
            self.skipped += 1
            return True
        self.ref, self.run = small, 0
        return False


class Skip:
    """A frame that reuses the output of the last frame that went through the networks."""

    def __init__(self, tag):
        self.tag = tag
