"""Training data: a folder of images and/or videos (recursive), captions from sidecar .txt files, random
resize-crops drawn from a seeded generator so that a resumed run sees exactly the same batches.

Two kinds of item: an image (`Item`: image mode; video frames are sampled into images), or a clip (`Clip`:
`--clip-frames F` consecutive frames `--frame-stride` apart, for the motion student; one crop and zoom for
every frame of a clip). Video frames are decoded once into the run's cache, at most as large as the
largest crop needs (bounded disk), and a finished video is marked so that a resumed run reuses it.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from stdtrt.errors import StdtrtError
from stdtrt.io.images import IMAGE_SUFFIXES, open_image, read_image
from stdtrt.io.video import VIDEO_SUFFIXES, probe, read_frames

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Item:
    image: Path  # an image file (video frames are extracted to PNG once, into the run's cache)
    prompt: str


@dataclass(frozen=True)
class Clip:
    frames: tuple[Path, ...]  # F frame PNGs in the run's cache, in order
    prompt: str


def _caption(path: Path, default: str) -> str:
    sidecar = path.with_suffix(".txt")
    if sidecar.is_file():
        text = sidecar.read_text(encoding="utf-8", errors="replace").strip()
        if text:
            return text
    return default


def _extract_frames(video: Path, count: int, cache: Path) -> list[Path]:
    """Decode `count` frames spread evenly over a video into PNGs (once; reused on resume)."""
    from PIL import Image

    key = hashlib.sha256(f"{video.resolve()}:{video.stat().st_size}:{count}".encode()).hexdigest()[:16]
    folder = cache / f"{video.stem}-{key}"
    done = folder / ".complete"
    if done.exists():
        return sorted(folder.glob("*.png"))
    info = probe(video)
    total = info.frames or sum(1 for _ in read_frames(info))
    wanted = set(np.linspace(0, total - 1, num=min(count, total)).round().astype(int).tolist())
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, (rgb, _) in enumerate(read_frames(info)):
        if i in wanted:
            path = folder / f"{i:06d}.png"
            Image.fromarray(rgb).save(path)
            out.append(path)
    done.touch()
    return out


def clip_starts(total: int, frames: int, stride: int, count: int) -> list[int]:
    """First-frame indices of up to `count` clips spread evenly over a video of `total` frames (a clip spans
    (frames - 1) * stride + 1 of them); none when the video is shorter than one clip."""
    span = (frames - 1) * stride + 1
    if total < span:
        return []
    return sorted(set(np.linspace(0, total - span, num=count).round().astype(int).tolist()))


def _extract_clips(
    video: Path, frames: int, stride: int, count: int, side: int, cache: Path
) -> list[list[Path]]:
    """Decode the frames of a video's clips into PNGs (once; reused on resume), the short side at most
    `side`. [] (with one line) for a video shorter than one clip."""
    import cv2
    from PIL import Image

    key = hashlib.sha256(
        f"{video.resolve()}:{video.stat().st_size}:{frames}:{stride}:{count}:{side}".encode()
    )
    folder = cache / f"{video.stem}-{key.hexdigest()[:16]}"
    info = probe(video)
    total = info.frames or sum(1 for _ in read_frames(info))
    starts = clip_starts(total, frames, stride, count)
    if not starts:
        log.warning(
            "%s: %d frames, shorter than one clip of %d frames at stride %d: skipped",
            video,
            total,
            frames,
            stride,
        )
        return []
    clips = [[start + k * stride for k in range(frames)] for start in starts]
    if not (folder / ".complete").exists():
        wanted = {i for clip in clips for i in clip}
        folder.mkdir(parents=True, exist_ok=True)
        for i, (rgb, _) in enumerate(read_frames(info)):
            if i in wanted:
                scale = side / min(rgb.shape[:2])
                if scale < 1:
                    size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
                    rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
                Image.fromarray(rgb).save(folder / f"{i:06d}.png")
        (folder / ".complete").touch()
    return [[folder / f"{i:06d}.png" for i in clip] for clip in clips]


def scan_clips(
    folder, prompt: str, template: str, frames: int, stride: int, count: int, side: int, cache: Path
):
    """All training clips under `folder` (videos only), in a stable order; images are refused."""
    files = list_files(folder)
    images = [f for f in files if f.suffix.lower() in IMAGE_SUFFIXES]
    if images:
        raise StdtrtError(
            f"the motion student trains on clips of videos; {images[0]} is an image ({len(images)} in the data "
            f"folder): move them out, or drop --motion-adapter to train the image student"
        )
    clips = []
    for path in files:
        caption = template.format(caption=_caption(path, prompt))
        clips += [Clip(tuple(c), caption) for c in _extract_clips(path, frames, stride, count, side, cache)]
    if not clips:
        raise StdtrtError(
            f"no video in {folder} holds a clip of {frames} frames at stride {stride} "
            f"({(frames - 1) * stride + 1} frames): lower --clip-frames or --frame-stride"
        )
    return clips


def list_files(folder: str | Path) -> list[Path]:
    """The images and videos under `folder`, in a stable order; a clear error when there are none."""
    if not str(folder):
        raise StdtrtError("no training data given: pass --data FOLDER (images and/or videos)")
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise StdtrtError(f"data folder {root} does not exist")
    suffixes = set(IMAGE_SUFFIXES) | set(VIDEO_SUFFIXES)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
    if not files:
        raise StdtrtError(f"data folder {root} holds no images or videos ({', '.join(sorted(suffixes))})")
    return files


def scan(folder: str | Path, prompt: str, template: str, frames_per_video: int, cache: Path) -> list[Item]:
    """All training items under `folder` (video frames extracted once into `cache`), in a stable order."""
    items = []
    for path in list_files(folder):
        caption = template.format(caption=_caption(path, prompt))
        if path.suffix.lower() in VIDEO_SUFFIXES:
            items.extend(Item(frame, caption) for frame in _extract_frames(path, frames_per_video, cache))
        else:
            items.append(Item(path, caption))
    return items


def check_readable(files: list[Path]) -> None:
    """Decode every image in full (and probe every video) once, so that a bad file fails before training
    starts, not in the middle of it."""
    bad = []
    for path in files:
        try:
            if path.suffix.lower() in VIDEO_SUFFIXES:
                probe(path)
            else:
                open_image(path)
        except StdtrtError as exc:
            bad.append(str(exc))
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise StdtrtError(f"unreadable files in the data folder: {'; '.join(bad[:3])}{more}")


def _crop(rgb: np.ndarray, size: int, u: list[float], zoom: float) -> torch.Tensor:
    """Resize the short side to `size` times a zoom in [1, zoom] (u[0]) and take the size x size crop at
    (u[1], u[2]) of the room left; (3, size, size) in [-1, 1]."""
    import cv2

    scale = size * (1 + (zoom - 1) * u[0]) / min(rgb.shape[:2])
    h, w = max(size, round(rgb.shape[0] * scale)), max(size, round(rgb.shape[1] * scale))
    rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    top, left = int(u[1] * (h - size + 1)), int(u[2] * (w - size + 1))
    crop = np.ascontiguousarray(rgb[top : top + size, left : left + size])
    return torch.from_numpy(crop).permute(2, 0, 1).float() / 127.5 - 1


def _rgb(path: Path) -> np.ndarray:
    return read_image(path, warn_alpha=False)  # upright (EXIF orientation); alpha is no part of a style


def random_crop(path: Path, size: int, generator: torch.Generator, zoom: float) -> torch.Tensor:
    """A random zoom and size x size crop of an image; (3, size, size) in [-1, 1]."""
    return _crop(_rgb(path), size, torch.rand(3, generator=generator).tolist(), zoom)


def random_crop_clip(paths, size: int, generator: torch.Generator, zoom: float) -> torch.Tensor:
    """The same random zoom and crop for every frame of a clip; (F, 3, size, size) in [-1, 1]."""
    u = torch.rand(3, generator=generator).tolist()
    return torch.stack([_crop(_rgb(p), size, u, zoom) for p in paths])


class Sampler:
    """An endless, seeded, resumable stream of item indices for one process (its shard of the data)."""

    def __init__(self, n_items: int, seed: int, rank: int = 0, world: int = 1):
        self.n, self.seed, self.rank, self.world = n_items, seed, rank, world
        self.epoch, self.position = 0, 0
        self._order = self._epoch_order()

    def _epoch_order(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        shard = order[self.rank :: self.world]
        return shard or order[: 1 + self.rank % max(1, self.n)][-1:]  # fewer items than processes

    def take(self, count: int) -> list[int]:
        out = []
        while len(out) < count:
            if self.position >= len(self._order):
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._epoch_order()
            out.append(self._order[self.position])
            self.position += 1
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._epoch_order()
