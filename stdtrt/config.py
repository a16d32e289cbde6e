"""Frozen, validated configurations: the only home of defaults (the CLI reads its defaults from here).

This module imports no torch, so `stdtrt --help` stays fast.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from stdtrt.errors import StdtrtError

BACKENDS = ("auto", "tensorrt", "onnxruntime", "torch")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")  # see models/load.py: the one precision rule
DISTILL_MODES = ("std", "lcm", "tcd", "pcm")  # distill/step.py MODES says what each one trains
# The folder `stdtrt export` writes and `stylize-*` / `bench` read when no --bundle is given.
DEFAULT_BUNDLE = "stdtrt-engine"


@dataclass(frozen=True)
class DeviceName:
    """A --device as written: auto, cpu, cuda or cuda:N (the one parser of device strings; models/load.py
    resolves it against the GPUs torch sees)."""

    kind: str  # "auto", "cpu" or "cuda"
    index: int | None = None  # N of cuda:N

    @property
    def gpu(self) -> int:
        """The GPU it names: N, else 0 ("auto" and "cuda" mean the first)."""
        return self.index or 0


def parse_device(name: str) -> DeviceName:
    kind, _, index = str(name).partition(":")
    if kind in ("auto", "cpu") and not index:
        return DeviceName(kind)
    if kind == "cuda" and (not index or index.isdigit()):
        return DeviceName("cuda", int(index) if index else None)
    raise StdtrtError(f"device {name!r} is not one of auto, cpu, cuda, cuda:N")


def cache_root() -> Path:
    """stdtrt's own cache folder ($STDTRT_CACHE, else ~/.cache/stdtrt)."""
    return Path(os.environ.get("STDTRT_CACHE", Path.home() / ".cache" / "stdtrt"))


def check_strength(strength: float) -> None:
    if not 0.0 < strength <= 1.0:
        raise StdtrtError(
            f"strength must be in (0, 1], got {strength} (0.75 keeps the layout, 1.0 is pure noise)"
        )


# Width and height are multiples of 8, the VAE's downsampling in SD 1.x and SDXL. The UNet takes any latent
# size (diffusers matches its skip connections' sizes), and so do the exported graphs: this is the one size
# rule of every stage.
SIZE_MULTIPLE = 8


def check_size(name: str, value: int | None) -> None:
    if value is not None and (value <= 0 or value % SIZE_MULTIPLE):
        raise StdtrtError(
            f"{name} must be a positive multiple of {SIZE_MULTIPLE} (the VAE downsamples by 8), got {value}"
        )


def round_size(x: float) -> int:
    """The nearest valid width or height."""
    return max(SIZE_MULTIPLE, int(round(x / SIZE_MULTIPLE)) * SIZE_MULTIPLE)


def check_nfe(nfe: int) -> None:
    if nfe < 1:
        raise StdtrtError(f"nfe (number of student steps) must be at least 1, got {nfe}")


def check_student(cfg) -> None:
    """What StylizeConfig and ExportConfig share: the student's strength, steps, size, guidance, precision."""
    check_strength(cfg.strength)
    check_nfe(cfg.nfe)
    check_size("width", cfg.width)
    check_size("height", cfg.height)
    if cfg.guidance < 0:
        raise StdtrtError(f"guidance must be >= 0, got {cfg.guidance}")
    if cfg.precision not in PRECISIONS:
        raise StdtrtError(f"precision must be one of {', '.join(PRECISIONS)}, got {cfg.precision!r}")


def opt(
    default,
    help: str = "",
    *,
    choices=None,
    short: str | None = None,
    flag: str | None = None,
    group=None,
    ablation: bool = False,
):
    """A config field with its help text: the reason for the default lives here, and the CLI generates
    its option from it (cli.config_options). `choices` limit the values, `short` adds a one-letter flag,
    `flag` renames the option, `group` ("video") puts it on the commands it belongs to, `ablation` marks a
    switch that exists for comparisons (the benchmarks'): out of the option list, named at the end of
    --help."""
    meta = {
        "help": help,
        "choices": choices,
        "short": short,
        "flag": flag,
        "group": group,
        "ablation": ablation,
    }
    return field(default=default, metadata=meta)


def check_style_scale(scale: float) -> None:
    if not 0.0 <= scale <= 2.0:
        raise StdtrtError(f"--style-scale must be in [0, 2], got {scale}")


# The style-image options (models/style.py), the same on stylize and export: one home for their help.
def style_image_opt():
    return opt(
        None, "style after this picture too: its IP-Adapter image embedding joins the prompt (encoded once)"
    )


def style_scale_opt():
    return opt(1.0, "weight of the style image in the style blocks, in [0, 2]")


def ip_adapter_opt():
    return opt("h94/IP-Adapter", "the IP-Adapter for --style-image: folder or cached hub id in the h94 layout, or "
               "tiny-ip-adapter (built in, random)")  # fmt: skip


# The video student's options (models/motion.py, runtime/windows.py), the same on stylize and export.
def motion_adapter_opt(group=None):
    return opt(None, "the video student (a LoRA distilled with --motion-adapter): the teacher's AnimateDiff motion "
               "adapter (folder, cached hub id, or tiny-motion), frames in overlapping windows", group=group)  # fmt: skip


DEFAULT_WINDOW = 16  # for a video student whose LoRA does not say its clip length


def window_opt(group=None):
    return opt(None, "frames per window of the video student (one trajectory each) [the clip length it was "
               f"distilled on; {DEFAULT_WINDOW} when its LoRA does not say]", group=group)  # fmt: skip


def check_window(window: int | None) -> None:
    if window is not None and window < 2:
        raise StdtrtError(f"--window must be at least 2, got {window}")


def resolve_window(window: int | None, trained: int | None) -> int:
    """--window as given, else the clip length the student was distilled on (its card), else 16."""
    return window or trained or DEFAULT_WINDOW


def resolve_overlap(window: int, overlap: int | None) -> int:
    """--overlap for a window (a bundle's or --window): as given, in [0, window / 2], or a quarter of it.
    More than half would blend frames already blended with the window before."""
    if overlap is None:
        return window // 4
    if not 0 <= overlap <= window // 2:
        raise StdtrtError(
            f"--overlap must be in [0, window / 2] (more blends frames that were blended already), got window "
            f"{window}, overlap {overlap}"
        )
    return overlap


# How a video's frames are noised to x_start (schedule.frame_noise): the same noise for every frame, or
# each frame its own (a video student learns one of them: distill records it, inference reads it back).
NOISE_RULES = ("shared", "per-frame")

# Cached cross-frame attention (models/attention_cache.py), the same on stylize and export.
MAX_CACHE_FRAMES = 4


def check_cache_options(frames: int, interval: int, fusion: float) -> None:
    if not 0 <= frames <= MAX_CACHE_FRAMES:
        raise StdtrtError(f"--cache-frames must be in 0..{MAX_CACHE_FRAMES}, got {frames}")
    if interval < 1:
        raise StdtrtError(f"--cache-interval must be at least 1, got {interval}")
    if not 0.0 <= fusion <= 1.0:
        raise StdtrtError(f"--feature-fusion must be in [0, 1], got {fusion}")


def check_cache_use(cfg) -> None:
    """What a cache runs with: one frame per slot of the per-frame student (StylizeConfig, ExportConfig)."""
    check_cache_options(cfg.cache_frames, cfg.cache_interval, cfg.feature_fusion)
    if not cfg.cache_frames and (cfg.cache_interval != 1 or cfg.feature_fusion):
        raise StdtrtError("--cache-interval and --feature-fusion need --cache-frames 1 or more")
    if cfg.cache_frames and cfg.motion_adapter:
        raise StdtrtError(
            "--cache-frames is for the per-frame student: the video student's motion modules already attend "
            "across its window (use one or the other)"
        )
    if cfg.cache_frames and cfg.frames_per_step != 1:
        raise StdtrtError(
            "--cache-frames attends to the frames just before each one, which a slot of several frames "
            "computes at once: drop --frames-per-step"
        )


def cache_frames_opt(group=None):
    return opt(0, "cached cross-frame attention (StreamV2V): each self-attention layer also attends to the last "
               "F frames it saw, 0 (off) to 4", group=group)  # fmt: skip


def cache_interval_opt(group=None):
    return opt(1, "the cache is written every frame and its ring advances every N frames", group=group)


def feature_fusion_opt(group=None):
    return opt(0.0, "with --cache-frames: pull output tokens (low-resolution blocks) this far towards a cached "
               "token of cosine >= 0.98, in [0, 1] (StreamV2V: 0.8)", group=group)  # fmt: skip


# ControlNet (models/controlnet.py, models/control_maps.py), the same on stylize and export.
PREPROCESSORS = (
    "canny",
    "depth",
)  # --controlnet NAME computes the maps; a path or hub id reads --control-video


def controlnet_opt():
    return opt(None, "keep the scene's structure with a ControlNet: canny or depth (maps computed from each frame, "
               "the family's ControlNet unless --controlnet-model), or a ControlNet's folder or cached hub id "
               "(maps from --control-video)")  # fmt: skip


def controlnet_model_opt():
    return opt(None, "the ControlNet for --controlnet canny|depth: folder, cached hub id, or tiny-controlnet "
               "(built in, random) [lllyasviel's v1.1 canny/depth for SD 1.x, diffusers' for SDXL]")  # fmt: skip


def control_scale_opt():
    return opt(1.0, "weight of the ControlNet's residuals, in [0, 2]")


def canny_opts():
    return (opt(100, "the Canny edge detector's lower threshold (--controlnet canny)"),
            opt(200, "the Canny edge detector's upper threshold (--controlnet canny)"))  # fmt: skip


def depth_model_opt():
    return opt("depth-anything/Depth-Anything-V2-Small-hf", "the depth model of --controlnet depth: folder, cached "
               "hub id, or tiny-depth (built in, random)")  # fmt: skip


def check_control(cfg) -> None:
    """The ControlNet options of a StylizeConfig or ExportConfig."""
    if not 0.0 <= cfg.control_scale <= 2.0:
        raise StdtrtError(f"--control-scale must be in [0, 2], got {cfg.control_scale}")
    if not 0 <= cfg.canny_low < cfg.canny_high <= 1000:
        raise StdtrtError(
            f"need 0 <= --canny-low < --canny-high <= 1000, got {cfg.canny_low}, {cfg.canny_high}"
        )
    video = getattr(cfg, "control_video", None)
    if cfg.controlnet is None and (cfg.controlnet_model or video):
        raise StdtrtError("--controlnet-model and --control-video need --controlnet")
    if cfg.controlnet in PREPROCESSORS and video:
        raise StdtrtError(
            f"--control-video brings its own maps: pass the ControlNet itself as --controlnet PATH_OR_ID, not "
            f"{cfg.controlnet}"
        )
    if cfg.controlnet is not None and cfg.controlnet not in PREPROCESSORS and cfg.controlnet_model:
        raise StdtrtError("--controlnet names the ControlNet already: drop --controlnet-model")
    if cfg.controlnet is not None and cfg.motion_adapter:
        raise StdtrtError(
            "ControlNet runs with the per-frame student, not with --motion-adapter (its windows)"
        )


STYLE_BLOCKS = ("instantstyle", "all")  # where --style-image goes (models/style.style_processors)


def style_blocks_opt():
    return opt("instantstyle", "where the style goes: the block InstantStyle found to carry style (instantstyle) "
               "or every IP-Adapter layer (all)", choices=STYLE_BLOCKS)  # fmt: skip


@dataclass(frozen=True)
class StylizeConfig:
    """How to stylize images and videos (the `stylize-image`, `stylize-video` and `demo` commands)."""

    model: str | None = opt(
        None,
        "run this model on the torch path without a bundle: diffusers folder, hub id in the local HF "
        "cache, single-file checkpoint, or a preset (tiny-sd, tiny-sdxl, random-sd15)",
        short="-m",
    )
    lora: str | None = opt(None, "a distilled student LoRA (kohya or diffusers .safetensors)")
    vae: str = opt(
        "full",
        "full (the model's own), tiny (TAESD for the model's family: a fraction of the full VAE's cost), a "
        "folder or cached hub id, or tiny-taesd (built in, random: offline runs)",
    )
    style_image: str | None = style_image_opt()
    style_scale: float = style_scale_opt()
    ip_adapter: str = ip_adapter_opt()
    style_blocks: str = style_blocks_opt()
    motion_adapter: str | None = motion_adapter_opt(group="video")
    window: int = window_opt(group="video")
    overlap: int | None = opt(
        None, "frames consecutive windows share, blended so there is no seam [a quarter of the window]",
        group="video",
    )  # fmt: skip
    bundle: str | None = opt(
        None, f"an exported engine bundle (stdtrt export) [./{DEFAULT_BUNDLE} unless --model is given]"
    )
    prompt: str = opt("", "the style prompt", short="-p")
    negative_prompt: str = opt("", "the unconditional branch's prompt (only with --guidance > 1)")
    strength: float = opt(0.75, "eta in (0, 1]: how far into the noise the content goes; STD trains 0.75")
    nfe: int = opt(4, "student steps: UNet evaluations per frame (x2 with --guidance > 1)")
    guidance: float = opt(1.0, "classifier-free guidance at inference; a distilled student wants 1 (off)")
    gamma: float = opt(0.0, "TCD stochasticity in [0, 1); 0 is deterministic (what a bundle runs)")
    seed: int = opt(0, "seeds the noise, drawn once per video so that a still scene stays still")
    fresh_noise: bool = opt(False, "new noise for every frame (it flickers: for comparisons)", group="video",
                            ablation=True)  # fmt: skip
    width: int | None = opt(None, "working width, a multiple of 8 [the input's aspect near the native area]")
    height: int | None = opt(None, "working height, a multiple of 8")
    backend: str = opt(
        "auto", "what runs a bundle; auto: tensorrt, then onnxruntime, then torch", choices=BACKENDS
    )
    device: str = opt("auto", "auto (the GPU when torch sees one), cpu, cuda or cuda:N")
    precision: str = opt(
        "auto",
        "auto: fp16 on a GPU, fp32 on the CPU (half precision runs there too, slowly)",
        choices=PRECISIONS,
    )
    frames_per_step: int = opt(
        1,
        "B frames in each stream slot: the UNet runs NFE x B latents per call, for throughput on a large GPU; "
        "1 keeps the latency of one frame (a bundle bakes its own B in)",
        group="video",
    )
    cache_frames: int = cache_frames_opt(group="video")
    cache_interval: int = cache_interval_opt(group="video")
    feature_fusion: float = feature_fusion_opt(group="video")
    controlnet: str | None = controlnet_opt()
    controlnet_model: str | None = controlnet_model_opt()
    control_scale: float = control_scale_opt()
    control_video: str | None = opt(None, "the control maps, frame by frame (a video of the input's frame count), for "
                                    "--controlnet PATH_OR_ID", group="video")  # fmt: skip
    canny_low: int = canny_opts()[0]
    canny_high: int = canny_opts()[1]
    depth_model: str = depth_model_opt()
    queue_size: int = opt(8, "frames buffered between decode, the networks and encode", group="video")
    skip_threshold: float | None = opt(
        None,
        "reuse the last output for a frame at least this similar to the last frame that went through the "
        "networks (cosine of 32x32 grey copies, in [0, 1]; 0.98 skips still stretches) [off]",
        group="video",
    )
    max_skips: int = opt(
        10, "at most this many frames in a row reuse an output (--skip-threshold)", group="video"
    )
    crf: int = opt(18, "H.264 quality of the output video (lower is better)", group="video")
    pad_odd: bool = opt(
        False, "write a video of odd width or height one pixel larger (4:2:0 needs even sizes)", group="video"
    )
    cuda_graphs: bool = opt(
        True, "torch on a GPU: capture the networks as CUDA graphs at load (static shapes)"
    )
    compile: bool = opt(False, "torch: torch.compile the networks (faster frames, minutes at the first load)")
    channels_last: bool = opt(True, "torch on a GPU: channels_last memory format for the convolutions")
    verify: bool = opt(
        False,
        "hash every file of the bundle at load (without: sizes and times, and the hash of what changed)",
    )
    trust_unvalidated: bool = opt(
        False,
        "run a bundle exported with --no-validate as it is (without: refused, with how to validate it: "
        "`stdtrt validate BUNDLE`)",
    )
    explicit: tuple[str, ...] = field(default=(), metadata={"cli": False})  # options the user set (the CLI
    # fills it): a bundle refuses those it contradicts, even when set to their default

    def __post_init__(self) -> None:
        check_student(self)
        parse_device(self.device)
        if not 0.0 <= self.gamma < 1.0:
            raise StdtrtError(f"gamma must be in [0, 1), got {self.gamma}")
        if self.backend not in BACKENDS:
            raise StdtrtError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.frames_per_step < 1 or self.queue_size < 1:
            raise StdtrtError(
                f"--frames-per-step and --queue-size must be at least 1, got {self.frames_per_step}, {self.queue_size}"
            )
        if not 0 <= self.crf <= 51:
            raise StdtrtError(f"crf must be in [0, 51], got {self.crf}")
        check_style_scale(self.style_scale)
        check_window(self.window)
        check_cache_use(self)
        check_control(self)
        if self.overlap is not None and self.overlap < 0:  # against the window where it is known: at load
            raise StdtrtError(f"--overlap must be in [0, window / 2], got {self.overlap}")
        if self.skip_threshold is not None and not 0.0 <= self.skip_threshold <= 1.0:
            raise StdtrtError(f"--skip-threshold must be in [0, 1], got {self.skip_threshold}")
        if self.max_skips < 1:
            raise StdtrtError(f"--max-skips must be at least 1, got {self.max_skips}")

    def torch_speedups(self) -> dict:
        """The torch backend's switches (runtime/backends/torch.py)."""
        return {"cuda_graphs": self.cuda_graphs, "compile": self.compile, "channels_last": self.channels_last}


# The default target window (R = ceil(N eta rho)). Images: 0.25, not std.md's 0.5: benchmarks/fidelity.py
# (results/fidelity.json, 3 seeds) found it closer to the teacher's trajectory at NFE 2, 4 and 8 (NFE 4:
# MSE 0.00498 against 0.00769), and at eta 0.75 its window (jumps of 2 to 11 grid steps) covers NFE 4's
# jumps (9 to 10) where 0.5's spreads to twice their length. Clips: the authors' 0.3 (not measured here).
RHO_IMAGES = 0.25
RHO_CLIPS = 0.3


@dataclass(frozen=True)
class DistillConfig:
    """Single Trajectory Distillation of a LoRA student (the `distill` command). Defaults follow the
    authors' SDXL run (std.md) except where a reason says otherwise."""

    model: str | None = opt(
        None,
        "the teacher (required): diffusers folder, cached hub id, single-file checkpoint, or a preset "
        "(tiny-sd: random weights, to try the plumbing offline)",
    )
    data: str = opt("", "folder of images and/or videos (recursive); captions from sidecar .txt files")
    out: str = opt("runs/std", "run folder: lora.safetensors, checkpoints/, metrics.jsonl, config.json")
    prompt: str = opt("", "caption for files without a sidecar .txt")
    prompt_template: str = opt("{caption}", "e.g. '{caption}, oil painting in the style of ...'")
    strength: float = opt(0.75, "eta: the partial-noise level the student is trained from (one LoRA per eta)")
    rho: float | None = opt(
        None,
        "target window R = ceil(N eta rho) [0.25 for images: best at NFE 2, 4 and 8 in benchmarks/fidelity.py; "
        "0.3 for clips with --motion-adapter]",
    )
    teacher_steps: int = opt(50, "N: the teacher's DDIM grid")
    mode: str = opt(
        "std",
        "the training target: 'std' (the method); baselines 'lcm', 'tcd', 'pcm' (forward-noised states, "
        "--p-bank 0; pcm's phases are the --nfe-hint plan): distill/step.py MODES",
        choices=DISTILL_MODES,
        ablation=True,
    )
    w_min: float = opt(5.0, "teacher guidance w ~ U[w_min, w_max], LCM form e_c + w (e_c - e_u)")
    w_max: float = opt(15.0, "upper end of the teacher guidance range")
    p_bank: float = opt(0.8, "probability that a batch element continues a trajectory from the bank")
    bank_size: int = opt(32, "trajectory slots per process (the authors keep 4 at batch 1)")
    huber_c: float = opt(1e-3, "pseudo-Huber constant")
    eps_units: bool = opt(
        False, "pseudo-Huber in noise units: every jump length in the window weighs alike (else long jumps "
        "dominate); with it NFE 8 stops being worse than NFE 4 (docs/fidelity.md)",
    )  # fmt: skip
    teacher_target: bool = opt(
        False, "the window also reaches the teacher's own step (s = t_{n-1}), an exact target"
    )
    target: str = opt(
        "student", "'student' (stop-gradient, as the authors' code) or 'ema' (the paper's figure)",
        choices=("student", "ema"),
    )  # fmt: skip
    ema_decay: float = opt(0.95, "only for target = 'ema'")
    lora_rank: int = opt(64, "LoRA rank (the authors: 64)")
    lora_alpha: float = opt(64.0, "LoRA alpha; scale = alpha / rank")
    lr: float = opt(
        1e-4, "the authors use 5e-6 at effective batch 128; small runs want a larger lr (LCM-LoRA: 1e-4)"
    )
    adam_beta1: float = opt(0.9, "AdamW beta1")
    adam_beta2: float = opt(0.999, "AdamW beta2")
    weight_decay: float = opt(0.0, "AdamW weight decay (the authors: none)")
    warmup_steps: int = opt(100, "the authors warm up 500 steps of a much longer run")
    max_steps: int = opt(1000, "optimiser steps in total (a resumed run may raise it)")
    batch_size: int = opt(4, "batch per process and micro-step")
    grad_accum: int = opt(1, "gradient accumulation micro-steps per optimiser step")
    grad_clip: float = opt(10.0, "gradient norm clip (the authors: 10)")
    resolution: int = opt(512, "training crop side (the authors train SDXL at 512 px too)")
    crop_zoom: float = opt(1.25, "random zoom in [1, crop_zoom] before the random crop (1: none)")
    mixed_precision: str = opt(
        "auto",
        "auto: bf16 on a GPU that has it, else fp16; none on the CPU",
        choices=("auto", "no", "fp16", "bf16"),
    )
    gradient_checkpointing: bool = opt(False, "trade compute for memory on large UNets")
    teacher: str = opt("shared", "'shared': one UNet, adapters off for the teacher; 'copy': a second UNet",
                       choices=("shared", "copy"), ablation=True)  # fmt: skip
    compile_loss: bool = opt(True, "fuse the jump + pseudo-Huber loss with torch.compile (eager fallback)")
    frames_per_video: int = opt(8, "frames sampled evenly from each video in the data folder (image mode)")
    motion_adapter: str = opt(
        "",
        "train the video student: the teacher with this AnimateDiff motion adapter (folder, cached hub id, "
        "or tiny-motion), on clips of the videos in --data",
    )
    clip_frames: int = opt(8, "frames per training clip (the authors: 8)")
    clip_noise: str = opt("per-frame", "the video student's noise rule: each frame of a clip its own noise (as "
                          "AnimateDiff trains), or the same for all (shared); inference follows the LoRA's record",
                          choices=NOISE_RULES)  # fmt: skip
    frame_stride: int = opt(4, "frames between the frames of a clip (the authors: 4)")
    clips_per_video: int = opt(4, "clips taken evenly from each video")
    adv_frames: int = opt(2, "frames of each clip the discriminator sees (the authors: 2)")
    style_images: str = opt(
        "", "folder of style images: each trajectory gets one at random, its IP-Adapter embedding seen by "
        "teacher, student and target alike (the authors train text-only) [none]",
    )  # fmt: skip
    style_scale: float = style_scale_opt()
    ip_adapter: str = ip_adapter_opt()
    style_blocks: str = style_blocks_opt()
    checkpoint_every: int = opt(250, "steps between checkpoints (one is always written at the end)")
    keep_checkpoints: int = opt(2, "checkpoints kept; older ones are deleted")
    log_every: int = opt(10, "steps between metrics.jsonl lines")
    seed: int = opt(0, "seeds data order, crops, noise, bank draws (each process adds its rank)")
    nfe_hint: int = opt(4, "the NFE the student is meant for (written into the LoRA's metadata)")
    adv_weight: float = opt(0.0, "lambda_adv of the asymmetric adversarial loss (0: off, nothing loaded)")
    adv_lr: float = opt(1e-4, "discriminator learning rate")
    adv_gp_weight: float = opt(1e-5, "gradient penalty on real/fake interpolations")
    adv_blocks: tuple[int, ...] = opt((2, 5, 8, 11), "DINOv2 blocks whose patch tokens the heads read")
    adv_mode: str = opt("asymmetric", "'asymmetric' (real at r < s) or 'symmetric' (r = s, the ablation)",
                        choices=("asymmetric", "symmetric"), ablation=True)  # fmt: skip
    adv_model: str = opt("facebook/dinov2-small", "DINOv2 backbone: folder, cached hub id, or 'tiny-dinov2'")
    adv_decode_size: int = opt(0, "decode fake/real at this side for the discriminator (0: full size)")
    adv_vae: str = opt(
        "full", "the VAE the adversarial branch decodes with: full (the model's own), tiny (TAESD for the "
        "model's family: a fraction of the decode cost), a folder or cached hub id, tiny-taesd, random-taesd",
    )  # fmt: skip
    adv_max_images: int = opt(0, "use at most this many batch elements for the adversarial branch (0: all)")

    def __post_init__(self) -> None:
        if not self.model:  # a default teacher would be the random tiny model: a day of training noise
            raise StdtrtError(
                "no teacher given: pass --model PATH_OR_ID (your SD 1.x or SDXL checkpoint), or --model "
                "tiny-sd to try the plumbing offline (random weights: the student learns nothing useful)"
            )
        check_strength(self.strength)
        if self.rho is None:  # resolved here, so the saved config says what ran
            object.__setattr__(self, "rho", RHO_CLIPS if self.motion_adapter else RHO_IMAGES)
        if min(self.clip_frames, self.frame_stride, self.clips_per_video, self.adv_frames) < 1:
            raise StdtrtError("clip-frames, frame-stride, clips-per-video and adv-frames must be at least 1")
        if self.adv_frames > self.clip_frames:
            raise StdtrtError(f"--adv-frames {self.adv_frames} exceeds --clip-frames {self.clip_frames}")
        check_style_scale(self.style_scale)
        if not 0 < self.rho <= 1:
            raise StdtrtError(f"rho must be in (0, 1], got {self.rho}")
        if not 0 <= self.p_bank <= 1:
            raise StdtrtError(f"p_bank must be in [0, 1], got {self.p_bank}")
        if not 0 <= self.w_min <= self.w_max:
            raise StdtrtError(f"need 0 <= w_min <= w_max, got {self.w_min}, {self.w_max}")
        if self.batch_size < 1 or self.grad_accum < 1 or self.max_steps < 1:
            raise StdtrtError("batch size, gradient accumulation and max steps must be at least 1")
        if min(self.checkpoint_every, self.keep_checkpoints, self.log_every, self.frames_per_video) < 1:
            raise StdtrtError(
                "checkpoint-every, keep-checkpoints, log-every and frames-per-video must be at least 1"
            )
        if self.bank_size < self.batch_size:
            raise StdtrtError(
                f"a bank of {self.bank_size} slots cannot serve a batch of {self.batch_size}: "
                f"raise --bank-size to at least the batch size"
            )
        if self.target not in ("student", "ema"):
            raise StdtrtError(f"target must be 'student' or 'ema', got {self.target!r}")
        if self.teacher not in ("shared", "copy"):
            raise StdtrtError(f"teacher must be 'shared' or 'copy', got {self.teacher!r}")
        if self.mixed_precision not in ("auto", "no", "fp16", "bf16"):
            raise StdtrtError(f"mixed precision must be auto, no, fp16 or bf16, got {self.mixed_precision!r}")
        if self.crop_zoom < 1:
            raise StdtrtError(f"crop zoom must be >= 1, got {self.crop_zoom}")
        check_size("resolution", self.resolution)
        if self.lora_rank < 1 or self.lr <= 0:
            raise StdtrtError("LoRA rank must be >= 1 and lr > 0")
        if "{caption}" not in self.prompt_template:
            raise StdtrtError("prompt template must contain {caption}")
        if self.adv_weight < 0:
            raise StdtrtError(f"adv weight must be >= 0, got {self.adv_weight}")
        if self.mode not in DISTILL_MODES:
            raise StdtrtError(f"mode must be one of {', '.join(DISTILL_MODES)}, got {self.mode!r}")
        if self.mode != "std" and self.p_bank > 0:
            raise StdtrtError(f"mode {self.mode!r} trains forward-noised states only: set --p-bank 0")
        if self.adv_mode not in ("asymmetric", "symmetric"):
            raise StdtrtError(f"adv mode must be 'asymmetric' or 'symmetric', got {self.adv_mode!r}")
        check_nfe(self.nfe_hint)
        if self.teacher_steps < 2 or 1000 % self.teacher_steps:
            raise StdtrtError(f"teacher steps must divide 1000, got {self.teacher_steps}")

    # Fields that may change when a run is resumed (everything else must match the checkpoint).
    RESUMABLE_CHANGES = (
        "out",
        "max_steps",
        "checkpoint_every",
        "keep_checkpoints",
        "log_every",
        "compile_loss",
    )


@dataclass(frozen=True)
class ExportConfig:
    """What to export (the `export` command): a fused, fixed-timestep student as an engine bundle."""

    model: str | None = opt(
        None,
        "diffusers folder, hub id in the local HF cache, single-file checkpoint, or a preset",
        short="-m",
    )
    lora: str | None = opt(None, "the student LoRA to fuse (none: the plain teacher at --nfe steps)")
    vae: str = opt(
        "full",
        "full, tiny (TAESD for the model's family), a folder or cached hub id, tiny-taesd or random-taesd",
    )
    prompt: str = opt("", "the style prompt: its embeddings become constants of the UNet graph", short="-p")
    style_image: str | None = style_image_opt()
    style_scale: float = style_scale_opt()
    ip_adapter: str = ip_adapter_opt()
    style_blocks: str = style_blocks_opt()
    motion_adapter: str | None = motion_adapter_opt()
    window: int = window_opt()
    negative_prompt: str = opt("", "the unconditional branch's prompt (baked in only with --guidance > 1)")
    strength: float = opt(0.75, "eta; the start timestep and x_start's coefficients are baked into the graph")
    nfe: int = opt(4, "student steps = slots of the stream-form UNet graph")
    guidance: float = opt(1.0, "> 1 bakes both CFG branches into the graph (UNet batch 2 x NFE)")
    frames_per_step: int = opt(
        1, "B frames in each stream slot (the UNet graph runs NFE x B latents per call): throughput for files"
    )
    cache_frames: int = cache_frames_opt()
    cache_interval: int = cache_interval_opt()
    feature_fusion: float = feature_fusion_opt()
    controlnet: str | None = controlnet_opt()
    controlnet_model: str | None = controlnet_model_opt()
    control_scale: float = control_scale_opt()
    canny_low: int = canny_opts()[0]
    canny_high: int = canny_opts()[1]
    depth_model: str = depth_model_opt()
    width: int | None = opt(None, "working width, a multiple of 8 [the model's native size]")
    height: int | None = opt(None, "working height, a multiple of 8 [the model's native size]")
    precision: str = opt(
        "auto",
        "the graphs' precision; auto: fp16 for a GPU (--device is one, or TensorRT builds engines here), "
        "else fp32",
        choices=PRECISIONS,
    )
    out: str = opt(DEFAULT_BUNDLE, "the bundle folder", short="-o")
    tensorrt: bool | None = opt(
        None, "build TensorRT engines [when CUDA and TensorRT are here]; --tensorrt fails without them"
    )
    overwrite: bool = opt(False, "replace a folder that holds a different bundle")
    opset: int = opt(18, "ONNX opset: 17+ has LayerNormalization; TensorRT parses up to 20")
    workspace_gb: float = opt(8.0, "TensorRT builder workspace limit (GB)")
    validate: bool = opt(True, "check every graph and one frame against torch (fails over tolerance)")
    device: str = opt(
        "auto",
        "where the float32 validation reference and the validating backends run: auto (the GPU when torch "
        "sees one: onnxruntime's CUDA provider and TensorRT validate there, the CPU only without them), cpu, "
        "cuda or cuda:N",
    )
    seed: int = opt(0, "seeds the validation inputs")

    def __post_init__(self) -> None:
        check_style_scale(self.style_scale)
        if not self.model:
            raise StdtrtError(
                "no model given: pass --model PATH_OR_ID (or --model tiny-sd to try it offline)"
            )
        parse_device(self.device)
        check_student(self)
        if self.frames_per_step < 1:
            raise StdtrtError(f"--frames-per-step must be at least 1, got {self.frames_per_step}")
        check_window(self.window)
        if self.window is not None and not self.motion_adapter:
            raise StdtrtError("--window is the video student's: it needs --motion-adapter")
        if self.motion_adapter and self.frames_per_step != 1:
            raise StdtrtError(
                "a video student's slot is one window (--window frames): drop --frames-per-step"
            )
        check_cache_use(self)
        check_control(self)
        if self.opset < 17:
            raise StdtrtError(f"opset must be 17 or newer (LayerNormalization), got {self.opset}")
        if self.workspace_gb <= 0:
            raise StdtrtError(f"workspace must be positive, got {self.workspace_gb} GB")
        if not self.out:
            raise StdtrtError("the bundle folder (--out) must not be empty")


@dataclass(frozen=True)
class BenchConfig:
    """What `stdtrt bench` measures: every usable backend on one bundle, and diffusers' img2img pipeline."""

    bundles: tuple[str, ...] = opt(
        (),
        f"the bundle(s) to time, side by side (e.g. one with each --vae) [./{DEFAULT_BUNDLE}]",
        flag="--bundle",
    )
    frames: int = opt(12, "frames of the generated test clip at the bundle's size (> NFE for a steady state)")
    backends: tuple[str, ...] = opt(
        (),
        "backends to time (comma-separated: tensorrt, onnxruntime, torch) [every one that loads]",
        flag="--backend",
    )
    baseline: bool = opt(True, "also time diffusers' own img2img pipeline (TCD scheduler) on the same frames")
    verify: bool = opt(False, "hash every file of each bundle at load")
    device: str = opt("auto", "auto, cpu, cuda or cuda:N")
    plot: str | None = opt(None, "write a PNG chart here")
    json: str | None = opt(None, "write the results as JSON here")

    def __post_init__(self) -> None:
        parse_device(self.device)
        if self.frames < 2:
            raise StdtrtError(f"bench needs at least 2 frames, got {self.frames}")
        bad = [b for b in self.backends if b not in BACKENDS or b == "auto"]
        if bad:
            raise StdtrtError(f"unknown backend {bad[0]!r}; choose from tensorrt, onnxruntime, torch")
        if self.plot and not self.plot.lower().endswith(".png"):
            raise StdtrtError(f"--plot must name a .png file, got {self.plot}")


LIVE_SINK_FORMATS = ("y4m", "rgb24")


@dataclass(frozen=True)
class LiveConfig:
    """`stdtrt live`: where frames come from and go to, and the real-time rules; how they are stylized is
    the StylizeConfig it holds (the same options as stylize-video)."""

    source: str = opt(
        "web",
        "where frames come from: web (the page's webcam, over WebRTC), - (a pipe on stdin: y4m, or raw rgb24 "
        "with --size), /dev/videoN (a V4L2 camera), a URL PyAV opens (rtsp://, rtmp://, srt://, udp://, "
        "http://), or a video file",
    )
    sink: str = opt(
        "web",
        "where stylized frames go: web (the page: WebRTC, MJPEG as the fallback), - (a pipe on stdout), a URL "
        "PyAV muxes (udp:// and srt:// as MPEG-TS, rtsp://, rtmp://), virtualcam (pyvirtualcam), or a file",
    )
    size: str | None = opt(None, "WxH of raw rgb24 frames on a pipe source (a y4m pipe says its own)")
    fps: float = opt(30.0, "frame rate of raw rgb24 frames on a pipe source (y4m and containers say theirs)")
    sink_format: str = opt(
        "y4m", "what a pipe sink writes: y4m, or raw rgb24 frames", choices=LIVE_SINK_FORMATS
    )
    realtime: bool = opt(
        False,
        "play a file or pipe at its own frame rate, the newest frame winning (a camera, a URL and the page's "
        "webcam always are); without it every frame is stylized, as fast as the networks go",
    )
    host: str = opt("127.0.0.1", "the page's address; any other than the loopback needs a token")
    port: int = opt(8188, "the page's port (0: any free one)")
    token: str | None = opt(
        None, "the token the page asks for [generated and printed when --host is not local]"
    )
    timeout: float = opt(10.0, "seconds a camera or URL may take to answer (open, and between frames)")
    reconnects: int = opt(5, "times a dropped URL stream is reopened, waiting 1, 2, 4 ... 8 s between tries")
    batch_latency: bool = opt(
        False, "allow --frames-per-step > 1 live: each frame then waits for B - 1 more before it goes in"
    )
    stylize: StylizeConfig = field(default_factory=StylizeConfig, metadata={"cli": False})

    def __post_init__(self) -> None:
        if self.size is not None:
            self.frame_size()
        if not self.fps > 0:
            raise StdtrtError(f"--fps must be positive, got {self.fps}")
        if not self.timeout > 0:
            raise StdtrtError(f"--timeout must be positive, got {self.timeout}")
        if self.reconnects < 0:
            raise StdtrtError(f"--reconnects must be at least 0, got {self.reconnects}")
        if not 0 <= self.port <= 65535:
            raise StdtrtError(f"--port must be in [0, 65535], got {self.port}")
        if self.token is not None and len(self.token) < 8:
            raise StdtrtError("--token must be at least 8 characters (or leave it out: one is generated)")
        if self.stylize.frames_per_step > 1 and not self.batch_latency:
            raise StdtrtError(
                f"--frames-per-step {self.stylize.frames_per_step} makes each frame wait for "
                f"{self.stylize.frames_per_step - 1} more before the networks take it: refused live; pass "
                f"--batch-latency to accept that"
            )

    def frame_size(self) -> tuple[int, int]:
        """--size as (width, height), or one line saying how to write it."""
        m = re.fullmatch(r"(\d+)x(\d+)", self.size or "")
        if not m or not int(m[1]) or not int(m[2]):
            raise StdtrtError(f"--size must be WIDTHxHEIGHT in pixels (e.g. 640x480), got {self.size!r}")
        return int(m[1]), int(m[2])

    @property
    def local(self) -> bool:
        """Whether the page is bound to the loopback only (no token needed)."""
        return self.host in ("127.0.0.1", "localhost", "::1")


def defaults(cls) -> dict:
    """Field name -> default, for click options."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            out[f.name] = f.default_factory()  # type: ignore[misc]
    return out


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


__all__ = [
    "BenchConfig",
    "DistillConfig",
    "DEFAULT_BUNDLE",
    "ExportConfig",
    "LiveConfig",
    "StylizeConfig",
    "StdtrtError",
    "defaults",
    "field",
    "to_dict",
]
