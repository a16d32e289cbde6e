"""`stdtrt demo`: make a short sample video from real photographs that scikit-image ships (panned and
zoomed, with a tone as its audio track), then stylize it with the torch path. Runs offline on tiny-sd."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

from stdtrt.errors import StdtrtError

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def sample_frames(n_frames: int, width: int, height: int):
    """Pan-and-zoom over scikit-image's bundled photographs, one photo per segment. Yields RGB uint8."""
    import cv2

    try:
        import skimage.data
    except ImportError:
        raise StdtrtError("the demo needs scikit-image: pip install 'stdtrt[demo]'") from None
    photos = [getattr(skimage.data, name)() for name in PHOTOS]
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
    """A soft A-major chord, fading in and out."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    chord = sum(np.sin(2 * np.pi * f * t) for f in (220.0, 277.18, 329.63)) / 3
    envelope = np.minimum(1, np.minimum(t, seconds - t) * 4)
    return (0.3 * chord * envelope).astype(np.float32)


def make_sample_video(
    path: Path, frames: int = 36, fps: int = 12, width: int = 320, height: int = 240
) -> Path:
    from stdtrt.runtime.video import write_video

    write_video(path, sample_frames(frames, width, height), Fraction(fps), audio=tone(frames / fps))
    return path


def run_demo(cfg, out_dir: str | Path = "stdtrt-demo", frames: int = 36, progress: bool = True):
    """Make the sample video in out_dir and stylize it. Returns the VideoResult."""
    from stdtrt.runtime.stylize import stylize_video

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    source = make_sample_video(out_dir / "input.mp4", frames=frames)
    return stylize_video(cfg, source, out_dir / "stylized.mp4", progress=progress)
