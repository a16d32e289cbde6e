"""stylize_image and stylize_video: the library functions behind the CLI commands of the same names.

A video streams through three stages joined by bounded queues: decode (+ resize to the working size) in
one thread, stylize in the calling thread, resize back + encode (+ audio mux) in another. The slowest
stage sets the pace; at most a few queue slots of frames are ever in memory.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from stdtrt.config import StylizeConfig
from stdtrt.errors import StdtrtError
from stdtrt.io_utils import atomic_path, check_writable

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


@dataclass
class VideoResult:
    output: Path
    frames: int
    seconds: float
    width: int  # working size
    height: int
    audio: str  # "copied", "re-encoded" or "none"

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def resize(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    if rgb.shape[1] == width and rgb.shape[0] == height:
        return rgb
    shrink = width * height < rgb.shape[0] * rgb.shape[1]
    return cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)


def load_student(cfg: StylizeConfig, image_w: int, image_h: int):
    """Load the model (and LoRA) named by cfg and build the torch student at the working size."""
    from stdtrt import schedule
    from stdtrt.models import load_model
    from stdtrt.runtime.student import Student, resolve_device, resolve_dtype

    if cfg.model is None:
        raise StdtrtError("no model given: pass --model PATH_OR_ID (or --model tiny-sd to try it offline)")
    device = resolve_device(cfg.device)
    model = load_model(cfg.model, device=device, dtype=resolve_dtype(cfg.precision, device), lora=cfg.lora)
    width, height = model.working_size(image_w, image_h, cfg.width, cfg.height)
    plan = schedule.student_plan(model.alphas_cumprod(), cfg.strength, cfg.nfe, cfg.gamma)
    return Student(model, plan, cfg.prompt, width, height, cfg.negative_prompt, cfg.guidance)


def read_image(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    if not path.exists():
        raise StdtrtError(f"input image {path} does not exist")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise StdtrtError(f"{path} is not a readable image ({exc})") from None


def write_image(path: Path, rgb: np.ndarray) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(rgb).save(tmp, format=Image.registered_extensions()[path.suffix.lower()])


def stylize_image(cfg: StylizeConfig, input_path: str | Path, output_path: str | Path) -> Path:
    """Stylize one image; the output keeps the input's size."""
    from stdtrt.runtime.student import make_noise

    input_path, output_path = Path(input_path), Path(output_path)
    if output_path.suffix.lower() not in IMAGE_SUFFIXES:
        raise StdtrtError(f"output {output_path} must end in one of {', '.join(IMAGE_SUFFIXES)}")
    if output_path.resolve() == input_path.resolve():
        raise StdtrtError(f"output {output_path} is the input image; choose another output path")
    check_writable(output_path)
    rgb = read_image(input_path)
    student = load_student(cfg, rgb.shape[1], rgb.shape[0])
    import torch

    noise = make_noise(student.latent_shape, cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    out = student(resize(rgb, student.width, student.height)[None], noise, generator)[0]
    write_image(output_path, resize(out, rgb.shape[1], rgb.shape[0]))
    return output_path


# -- video ------------------------------------------------------------------------------------------------
_END = object()


class _Pipe:
    """Bounded queues between threads, with a shared stop flag so that no stage blocks forever when
    another one fails."""

    def __init__(self, size: int):
        self.stop = threading.Event()
        self.size = size
        self.errors: list[BaseException] = []

    def queue(self) -> queue.Queue:
        return queue.Queue(maxsize=self.size)

    def put(self, q: queue.Queue, item) -> bool:
        while not self.stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def get(self, q: queue.Queue):
        while not self.stop.is_set():
            try:
                return q.get(timeout=0.1)
            except queue.Empty:
                continue
        return _END

    def thread(self, fn, *args) -> threading.Thread:
        def run():
            try:
                fn(*args)
            except BaseException as exc:  # re-raised in the calling thread
                self.errors.append(exc)
                self.stop.set()

        t = threading.Thread(target=run, daemon=True)
        t.start()
        return t


def stylize_video(cfg: StylizeConfig, input_path: str | Path, output_path: str | Path, progress: bool = True):
    """Stylize a video: same frame count, frame rate, timestamps, size and audio as the input."""
    import torch
    from tqdm import tqdm

    from stdtrt.runtime import video
    from stdtrt.runtime.student import make_noise

    input_path, output_path = Path(input_path), Path(output_path)
    info = video.probe(input_path)
    video.check_output(input_path, output_path)
    if info.width % 2 or info.height % 2:
        raise StdtrtError(
            f"{input_path} is {info.width}x{info.height}: H.264/VP9 output needs an even width and height; "
            f"crop or scale the input to even dimensions first"
        )
    student = load_student(cfg, info.width, info.height)
    w, h = student.width, student.height
    log.info("stylizing %dx%d video at %dx%d, %d steps", info.width, info.height, w, h, cfg.nfe)
    noise = make_noise(student.latent_shape, cfg.seed)
    noise_gen = torch.Generator().manual_seed(cfg.seed)
    step_gen = torch.Generator().manual_seed(cfg.seed + 1)

    pipe = _Pipe(cfg.queue_size)
    q_in, q_out = pipe.queue(), pipe.queue()
    bar = tqdm(total=info.frames or None, unit="frame", desc="stylize", disable=not progress, smoothing=0.1)

    def decode():
        for rgb, pts in video.read_frames(info):
            if not pipe.put(q_in, (resize(rgb, w, h), pts)):
                return
        pipe.put(q_in, _END)

    with atomic_path(output_path) as tmp:
        writer = video.VideoWriter(tmp, output_path.suffix, info, crf=cfg.crf)

        def encode():
            while (item := pipe.get(q_out)) is not _END:
                rgb, pts = item
                writer.write(resize(rgb, info.width, info.height), pts)
                bar.update(1)

        start = time.perf_counter()
        threads = [pipe.thread(decode), pipe.thread(encode)]
        try:
            done = False
            while not done and not pipe.stop.is_set():
                batch = []
                while len(batch) < cfg.batch_size:
                    item = pipe.get(q_in)
                    if item is _END:
                        done = True
                        break
                    batch.append(item)
                if not batch:
                    break
                frames = np.stack([rgb for rgb, _ in batch])
                if cfg.fresh_noise:
                    n = torch.randn((len(batch), *student.latent_shape), generator=noise_gen)
                else:
                    n = noise
                out = student(frames, n, step_gen)
                for rgb, (_, pts) in zip(out, batch, strict=True):
                    pipe.put(q_out, (rgb, pts))
            pipe.put(q_out, _END)
            threads[1].join()
        except BaseException:
            pipe.stop.set()
            writer.abort()
            raise
        finally:
            pipe.stop.set()
            for t in threads:
                t.join(timeout=10)
            bar.close()
        if pipe.errors:
            writer.abort()
            raise pipe.errors[0]
        writer.close()
        seconds = time.perf_counter() - start
    audio = "none" if not info.has_audio else ("copied" if writer.copy_audio else "re-encoded")
    return VideoResult(output_path, writer.frames, seconds, w, h, audio)
