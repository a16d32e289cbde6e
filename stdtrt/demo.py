"""`stdtrt demo`: make a short sample video from real photographs that scikit-image ships (panned and
zoomed, with a tone as its audio track), then stylize it with the torch path. Runs offline on tiny-sd."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

from stdtrt.io.samples import sample_frames, tone
from stdtrt.io.video import write_video
from stdtrt.runtime.stylize import stylize_video


def make_sample_video(
    path: Path, frames: int = 36, fps: int = 12, width: int = 320, height: int = 240
) -> Path:

    write_video(path, sample_frames(frames, width, height), Fraction(fps), audio=tone(frames / fps))
    return path


def run_demo(cfg, out_dir: str | Path = "stdtrt-demo", frames: int = 36, progress: bool = True):
    """Make the sample video in out_dir and stylize it. Returns the VideoResult."""

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    source = make_sample_video(out_dir / "input.mp4", frames=frames)
    return stylize_video(cfg, source, out_dir / "stylized.mp4", progress=progress)
