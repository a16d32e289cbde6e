"""Sample media made on the spot, for the demo, export validation, bench and tests: a pan-and-zoom over
photographs, and a tone for the audio track.

The photographs are those scikit-image ships (the `demo` extra); without it, deterministic synthetic
scenes (sky, sun, textured hills, hard edges) stand in, so validation and bench need no optional extra.
"""

from __future__ import annotations

import numpy as np

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def _noise(h: int, w: int, rng: np.random.Generator, octaves: int = 5) -> np.ndarray:
    """Smooth fractal noise in [0, 1]: upsampled random grids of doubling resolution."""
    import cv2

    out = np.zeros((h, w), np.float32)
    for k in range(octaves):
        cells = 2 ** (k + 2)
        grid = rng.random((cells, cells)).astype(np.float32)
        out += cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC) / 2**k
    out -= out.min()
    return out / max(float(out.max()), 1e-6)


def synthetic_photo(seed: int, width: int = 640, height: int = 480) -> np.ndarray:
    """A deterministic landscape-like RGB uint8 image: what a photograph has (smooth areas, texture, edges)."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    top, bottom = rng.uniform(0.3, 1.0, 3), rng.uniform(0.5, 1.0, 3)
    img = np.broadcast_to(top * (1 - y) + bottom * y, (height, width, 3)).copy()  # sky
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    cx, cy, r = rng.uniform(0.2, 0.8) * width, rng.uniform(0.1, 0.35) * height, 0.08 * min(width, height)
    img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = rng.uniform(0.8, 1.0, 3)  # sun: a hard edge
    for layer in range(3):  # hills, nearer ones darker and more textured
        ridge = (0.45 + 0.15 * layer + 0.12 * _noise(1, width, rng, 4)[0]) * height
        colour = rng.uniform(0.1, 0.7, 3) * (1 - 0.2 * layer)
        texture = _noise(height, width, rng)[..., None]
        below = yy[..., None] > ridge[None, :, None]
        img = np.where(below, colour * (0.6 + 0.8 * texture), img)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def _photos() -> list[np.ndarray]:
    try:
        import skimage.data
    except ImportError:
        return [synthetic_photo(seed) for seed in range(len(PHOTOS))]
    return [getattr(skimage.data, name)() for name in PHOTOS]


def sample_frames(n_frames: int, width: int, height: int):
    """Pan-and-zoom over the photographs, one photo per segment. Yields RGB uint8 (height, width, 3)."""
    import cv2

    photos = _photos()
    per = max(1, -(-n_frames // len(photos)))
    for i in range(n_frames):
        photo = photos[min(i // per, len(photos) - 1)]
        u = (i % per) / max(1, per - 1)  # 0..1 within the segment
        ph, pw = photo.shape[:2]
        zoom = 1.0 - 0.25 * u  # crop shrinks: zoom in
        ch = min(ph, int(pw * height / width)) * zoom
        cw = ch * width / height
        x0 = (pw - cw) * (0.2 + 0.6 * u)  # pan left to right
        y0 = (ph - ch) * 0.5
        crop = photo[int(y0) : int(y0 + ch), int(x0) : int(x0 + cw)]
        yield cv2.resize(crop, (width, height), interpolation=cv2.INTER_AREA)


def tone(seconds: float, sample_rate: int = 44100) -> np.ndarray:
    """A soft A-major chord, fading in and out (mono float32 in [-1, 1])."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    chord = sum(np.sin(2 * np.pi * f * t) for f in (220.0, 277.18, 329.63)) / 3
    envelope = np.minimum(1, np.minimum(t, seconds - t) * 4)
    return (0.3 * chord * envelope).astype(np.float32)
