"""ExportConfig: `stdtrt export`."""

from __future__ import annotations

from dataclasses import dataclass

from stdtrt.config import parts
from stdtrt.config.base import DEFAULT_BUNDLE, PRECISIONS, check_student, opt, parse_device
from stdtrt.errors import StdtrtError


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
    style_image: str | None = parts.style_image_opt()
    style_scale: float = parts.style_scale_opt()
    ip_adapter: str = parts.ip_adapter_opt()
    style_blocks: str = parts.style_blocks_opt()
    motion_adapter: str | None = parts.motion_adapter_opt()
    window: int = parts.window_opt()
    negative_prompt: str = opt("", "the unconditional branch's prompt (baked in only with --guidance > 1)")
    strength: float = opt(0.75, "eta; the start timestep and x_start's coefficients are baked into the graph")
    nfe: int = opt(4, "student steps = slots of the stream-form UNet graph")
    guidance: float = opt(1.0, "> 1 bakes both CFG branches into the graph (UNet batch 2 x NFE)")
    frames_per_step: int = opt(
        1, "B frames in each stream slot (the UNet graph runs NFE x B latents per call): throughput for files"
    )
    cache_frames: int = parts.cache_frames_opt()
    cache_interval: int = parts.cache_interval_opt()
    feature_fusion: float = parts.feature_fusion_opt()
    controlnet: str | None = parts.controlnet_opt()
    controlnet_model: str | None = parts.controlnet_model_opt()
    control_scale: float = parts.control_scale_opt()
    canny_low: int = parts.canny_opts()[0]
    canny_high: int = parts.canny_opts()[1]
    depth_model: str = parts.depth_model_opt()
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
        parts.check_style_scale(self.style_scale)
        if not self.model:
            raise StdtrtError(
                "no model given: pass --model PATH_OR_ID (or --model tiny-sd to try it offline)"
            )
        parse_device(self.device)
        check_student(self)
        if self.frames_per_step < 1:
            raise StdtrtError(f"--frames-per-step must be at least 1, got {self.frames_per_step}")
        parts.check_window(self.window)
        if self.window is not None and not self.motion_adapter:
            raise StdtrtError("--window is the video student's: it needs --motion-adapter")
        parts.check_video_slot(self)
        parts.check_cache_use(self)
        parts.check_control(self)
        if self.opset < 17:
            raise StdtrtError(f"opset must be 17 or newer (LayerNormalization), got {self.opset}")
        if self.workspace_gb <= 0:
            raise StdtrtError(f"workspace must be positive, got {self.workspace_gb} GB")
        if not self.out:
            raise StdtrtError("the bundle folder (--out) must not be empty")
