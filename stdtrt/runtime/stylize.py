"""stylize_image and stylize_video: the library functions behind the CLI commands of the same names.

What stylizes frames is chosen once per run (`load_runner`): the student variant (bundle/variant.py: the
image student, or the video student in windows, runtime/windows.py) and what runs its networks:
- a bundle (`--bundle`, or the default bundle folder): the backend `--backend` names (auto: the fastest
  that loads) runs the fixed-timestep graphs in stream form, one UNet call per frame (runtime/stream.py);
- `--model` without a bundle: the torch backend in stream form on the model itself, the same modules;
  the sequential torch student (runtime/student.py, NFE steps per frame) only for an image (batch 1) and
  for gamma > 0, which the stream form cannot do.

A video streams through stages joined by bounded queues (runtime/pipeline.py): decode (+ resize to the
working size) in one thread, the networks in one thread (or one each where they can overlap, on CUDA),
resize back + encode (+ audio mux) in the calling thread. The slowest stage sets the pace; at most a few
queue slots of frames are ever in memory.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from stdtrt import schedule
from stdtrt.bundle.variant import variant_for, variant_of
from stdtrt.config import StylizeConfig, defaults, resolve_overlap
from stdtrt.errors import StdtrtError
from stdtrt.io import video
from stdtrt.io.atomic import atomic_path, check_writable
from stdtrt.io.images import IMAGE_SUFFIXES, fit_box, letterbox, read_image, unletterbox, write_image
from stdtrt.models.attention_cache import CacheSettings
from stdtrt.models.card import StudentCard
from stdtrt.models.control_maps import ControlMaps
from stdtrt.models.controlnet import setup_control
from stdtrt.models.load import load_model
from stdtrt.models.style import load_style, warn_if_trained_with_styles
from stdtrt.runtime.backends import load_backend
from stdtrt.runtime.backends.torch import TorchBackend
from stdtrt.runtime.pipeline import StageTimes, run_pipeline
from stdtrt.runtime.request import bundle_map_spec, check_request, resolve_bundle
from stdtrt.runtime.stream import StreamRunner
from stdtrt.runtime.student import Student, StudentRunner

log = logging.getLogger(__name__)


@dataclass
class VideoResult:
    output: Path
    frames: int
    seconds: float
    width: int  # working size
    height: int
    audio: str  # "copied", "re-encoded" or "none"
    skipped: int = 0  # frames that reused an output (--skip-threshold)
    backend: str = ""  # what ran the networks
    stages: dict[str, float] = field(default_factory=dict)  # ms per call of each stage
    frame_times: list[float] = field(default_factory=list)  # when each frame was written (s from start)
    stage_seconds: dict[str, float] = field(default_factory=dict)  # total seconds in each stage
    stage_clock: dict[str, str] = field(default_factory=dict)  # what timed each: "host" or "cuda events"
    stage_calls: dict[str, int] = field(default_factory=dict)  # calls of each stage

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def _load(cfg: StylizeConfig, image_w: int, image_h: int, fuse: bool, model=None):
    """(model, plan, width, height, style, control) for --model: the model (its LoRA fused when `fuse`)
    placed by the precision rule, the student's plan on the grid its LoRA was distilled on, the style
    image (--style-image) encoded once, its IP-Adapter in the model's cross-attention (else None), and the
    ControlNet (--controlnet: models.controlnet.Control, else None)."""

    if cfg.model is None:
        raise StdtrtError("no model given: pass --model PATH_OR_ID (or --model tiny-sd to try it offline)")
    d = defaults(StylizeConfig)
    needs_image = [
        o
        for o in ("style_scale", "style_blocks", "ip_adapter")
        if o in cfg.explicit or getattr(cfg, o) != d[o]
    ]
    if needs_image and not cfg.style_image:
        raise StdtrtError(
            f"--{needs_image[0].replace('_', '-')} needs --style-image (the picture to style after)"
        )
    grid = StudentCard.read(cfg.lora).grid(cfg.strength)
    model = model or load_stream_model(cfg, fuse)
    model.use_vae(cfg.vae)
    width, height = model.working_size(image_w, image_h, cfg.width, cfg.height)
    plan = schedule.student_plan(model.alphas_cumprod(), cfg.strength, cfg.nfe, cfg.gamma, grid)
    style = None
    warn_if_trained_with_styles(cfg.lora, cfg.style_image)
    if cfg.style_image:
        style = load_style(model, cfg.style_image, cfg.ip_adapter, cfg.style_scale, cfg.style_blocks)
    return model, plan, width, height, style, setup_control(cfg, model)


def load_stream_model(cfg: StylizeConfig, fuse: bool = True):
    """The model --model names, placed by the precision rule, its LoRA fused when `fuse`: loaded once, and
    passed to `load_runner(model=...)` to build runners with other settings on it (the live page's prompt
    and strength)."""
    return load_model(
        cfg.model, device=cfg.device, precision=cfg.precision, lora=cfg.lora, fuse=fuse,
        motion_adapter=cfg.motion_adapter,
    )  # fmt: skip


def load_student(cfg: StylizeConfig, image_w: int, image_h: int, model=None):
    """The sequential torch student (the reference: NFE steps per frame) for --model at the working size
    (`model`: one load_stream_model(cfg, fuse=False) loaded)."""

    model, plan, width, height, style, control = _load(cfg, image_w, image_h, fuse=False, model=model)
    cache = CacheSettings.of(cfg)
    return Student(
        model, plan, cfg.prompt, width, height, cfg.negative_prompt, cfg.guidance, style, cache, control
    )


def load_model_backend(cfg: StylizeConfig, image_w: int, image_h: int, model=None, batch: int | None = None):
    """--model without a bundle: the torch backend in stream form on the model itself (its LoRA fused at
    load; `model`: one load_stream_model loaded), the same modules a bundle's torch backend runs, with its
    CUDA speed-ups. `batch`: frames per slot (default --frames-per-step; a video student's: its window)."""

    model, plan, width, height, style, control = _load(cfg, image_w, image_h, fuse=True, model=model)
    return TorchBackend.from_model(
        model, plan, cfg.prompt, cfg.negative_prompt, cfg.guidance, width, height, batch or cfg.frames_per_step, style,
        CacheSettings.of(cfg), control, **cfg.torch_speedups(),
    )  # fmt: skip


def load_window_runner(cfg: StylizeConfig, image_w: int, image_h: int, variant, bundle=None, model=None):
    """The video student in overlapping windows, in stream form (NFE windows in flight, one UNet call per
    window): a video bundle's backend, or with --model and --motion-adapter the torch backend on the model
    (the modules a bundle's torch backend runs); the sequential student only for --gamma > 0. `variant`
    and `model`: the bundle's VideoStudent, or --model's and its model (loaded with fuse = gamma == 0)."""
    from stdtrt.runtime.windows import WindowRunner

    if bundle is not None:
        engine = load_backend(bundle, cfg.backend, cfg.device, torch_speedups=cfg.torch_speedups(),
                              verify=cfg.verify, style_image=cfg.style_image)  # fmt: skip
    elif cfg.gamma == 0:
        engine = load_model_backend(cfg, image_w, image_h, model, batch=variant.window)
    else:  # re-noising between steps (gamma > 0) is what the stream form cannot do
        engine = load_student(cfg, image_w, image_h, model)
    w = variant.window
    return WindowRunner(
        engine, w, resolve_overlap(w, cfg.overlap), cfg.seed, variant.noise_rule(cfg.fresh_noise)
    )


def load_runner(cfg: StylizeConfig, image_w: int, image_h: int, image: bool = False, model=None):
    """What stylizes frames for this run: a bundle's backend, or (--model) the torch backend on the model,
    both in stream form; the sequential torch student for what the stream form cannot do. `model`: for
    --model's stream form, a model load_stream_model already loaded (not loaded again)."""

    bundle = resolve_bundle(cfg)
    if bundle is not None:
        check_request(cfg, bundle)
    variant = variant_for(cfg) if bundle is None else variant_of(bundle)  # chosen once
    variant.check_run(cfg.skip_threshold, image)
    if variant.windows:
        if bundle is None:  # its LoRA fused for the stream form (gamma > 0 runs the sequential student)
            model = model or load_stream_model(cfg, fuse=cfg.gamma == 0)
            variant.check_model(model)
        return load_window_runner(cfg, image_w, image_h, variant, bundle, model)
    if bundle is None:
        # an image takes NFE sequential calls of batch 1, not NFE calls of the stream's batch NFE; and
        # gamma > 0 is what the stream form cannot do: both run the sequential student
        if image or cfg.gamma > 0:
            if cfg.skip_threshold is not None and not image:
                log.warning("--skip-threshold works on the stream form: --gamma > 0 runs every frame")
            return StudentRunner(
                load_student(cfg, image_w, image_h), cfg, variant.noise_rule(cfg.fresh_noise)
            )
        backend = load_model_backend(cfg, image_w, image_h, model)
        control = backend.networks.unet.control
        maps = (
            None
            if control is None
            else ControlMaps(control.spec, backend.width, backend.height, backend.device)
        )
        return StreamRunner(
            backend, cfg.seed, variant.noise_rule(cfg.fresh_noise), None, cfg.skip_threshold, cfg.max_skips, maps
        )  # fmt: skip

    backend = load_backend(
        bundle, cfg.backend, cfg.device, torch_speedups=cfg.torch_speedups(), verify=cfg.verify,
        style_image=cfg.style_image,
    )  # fmt: skip
    spec = bundle_map_spec(bundle, cfg)
    maps = None if spec is None else ControlMaps(spec, backend.width, backend.height, backend.device)
    return StreamRunner(
        backend, cfg.seed, variant.noise_rule(cfg.fresh_noise), None, cfg.skip_threshold, cfg.max_skips, maps
    )


def stylize_image(cfg: StylizeConfig, input_path: str | Path, output_path: str | Path) -> Path:
    """Stylize one image; the output keeps the input's size."""
    input_path, output_path = Path(input_path), Path(output_path)
    if output_path.suffix.lower() not in IMAGE_SUFFIXES:
        raise StdtrtError(f"output {output_path} must end in one of {', '.join(IMAGE_SUFFIXES)}")
    if output_path.resolve() == input_path.resolve():
        raise StdtrtError(f"output {output_path} is the input image; choose another output path")
    check_writable(output_path)
    rgb = read_image(input_path)
    runner = load_runner(cfg, rgb.shape[1], rgb.shape[0], image=True)
    _say_fit((rgb.shape[1], rgb.shape[0]), runner, input_path)
    out = runner(letterbox(rgb, runner.width, runner.height))
    write_image(output_path, unletterbox(out, (rgb.shape[1], rgb.shape[0])))
    return output_path


def _say_fit(size: tuple[int, int], runner, what) -> None:
    """One line when the picture is fitted between bars into a working size of another aspect (a bundle's
    fixed size, or --width and --height): the bars are stylized too and cut off again (io/images.fit_box)."""
    box = fit_box(size, (runner.width, runner.height))
    if box[2:] != (runner.width, runner.height):
        log.warning(
            "%s is %dx%d and runs at %dx%d: it is fitted in whole, its aspect kept, between bars that are cut "
            "off again (a bundle exported with --width/--height of its aspect uses all of its pixels)",
            what, *size, runner.width, runner.height,
        )  # fmt: skip


# -- video ------------------------------------------------------------------------------------------------
def _timed_frames(info, w: int, h: int, times: StageTimes, sizes=None):
    """Decoded frames at the working size (converted and resized in one swscale call); decoding time is
    recorded as `video_decode`."""

    frames = video.read_frames(info, w, h, sizes)
    while True:
        start = time.perf_counter()
        item = next(frames, None)
        if item is None:
            return
        times.add("video_decode", time.perf_counter() - start)
        yield item


def stylize_video(cfg: StylizeConfig, input_path: str | Path, output_path: str | Path, progress: bool = True):
    """Stylize a video: same frame count, frame rate, timestamps, size and audio as the input."""

    input_path, output_path = Path(input_path), Path(output_path)
    info = video.probe(input_path)
    video.check_output(input_path, output_path)
    size = video.output_size(info, cfg.pad_odd)  # an odd side refused before any model is loaded
    if size != (info.width, info.height):
        log.warning("%s is %dx%d: written at %dx%d (--pad-odd; 4:2:0 video needs even sizes)",
                    input_path, info.width, info.height, *size)  # fmt: skip
    for note in video.conversion_notes(info):
        log.warning("%s", note)
    if cfg.control_video:  # the maps are read frame by frame beside the input: the same count
        maps = video.probe(cfg.control_video)
        if maps.frames and info.frames and maps.frames != info.frames:
            raise StdtrtError(
                f"control video {cfg.control_video} has {maps.frames} frames and {input_path} {info.frames}: "
                f"one map per frame"
            )
    runner = load_runner(cfg, info.width, info.height)
    _say_fit((info.width, info.height), runner, input_path)
    return run_video(runner, info, output_path, cfg, progress)


def run_video(
    runner, info, output_path: Path, cfg: StylizeConfig, progress: bool = True, on_frame=None
) -> VideoResult:
    """Stream the video `info` through a loaded runner into output_path (atomically); `on_frame()` is
    called after each frame is written (stdtrt/batch counts them)."""
    from tqdm import tqdm

    w, h = runner.width, runner.height
    log.info("stylizing %dx%d video at %dx%d with %s", info.width, info.height, w, h, runner.describe())
    times = runner.times
    bar = tqdm(total=info.frames or None, unit="frame", desc="stylize", disable=not progress, smoothing=0.1)
    frame_times: list[float] = []
    with atomic_path(output_path) as tmp:
        sizes = video.FrameSizes(info)
        writer = video.VideoWriter(
            tmp, output_path.suffix, info, crf=cfg.crf, pad_odd=cfg.pad_odd, sizes=sizes
        )

        def write(item):
            rgb, pts = item
            t = time.perf_counter()
            writer.write(rgb, pts)  # resized back to the input's size inside the encoder's conversion
            times.add("video_encode", time.perf_counter() - t)
            frame_times.append(time.perf_counter() - start)
            bar.update(1)
            if on_frame is not None:
                on_frame()

        start = time.perf_counter()
        try:
            run_pipeline(_timed_frames(info, w, h, times, sizes), runner.stages(), write, cfg.queue_size)
        except BaseException:
            writer.abort()
            raise
        finally:
            bar.close()
        writer.close()
        seconds = time.perf_counter() - start
    audio = writer.audio_summary()
    return VideoResult(
        output_path, writer.frames, seconds, w, h, audio, runner.skipped, runner.describe(),
        times.ms_per_call(), frame_times, times.seconds(), dict(times.clock), dict(times.calls),
    )  # fmt: skip
