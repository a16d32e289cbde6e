"""What a style image, a video student, cached attention and a ControlNet add to a run: their options
(help, choices) and their checks, one home each, shared by the stylize and export configs."""

from __future__ import annotations

from stdtrt.config.base import opt
from stdtrt.errors import StdtrtError


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


def check_video_slot(cfg) -> None:
    """A video student's stream slot is one window: --frames-per-step is the image student's."""
    if cfg.motion_adapter and cfg.frames_per_step != 1:
        raise StdtrtError("a video student's slot is one window (--window frames): drop --frames-per-step")


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
