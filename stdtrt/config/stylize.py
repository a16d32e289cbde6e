"""StylizeConfig: `stylize-image`, `stylize-video` and `demo`."""

from __future__ import annotations

from dataclasses import dataclass, field

from stdtrt.config import parts
from stdtrt.config.base import BACKENDS, DEFAULT_BUNDLE, PRECISIONS, check_student, opt, parse_device
from stdtrt.errors import StdtrtError


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
    style_image: str | None = parts.style_image_opt()
    style_scale: float = parts.style_scale_opt()
    ip_adapter: str = parts.ip_adapter_opt()
    style_blocks: str = parts.style_blocks_opt()
    motion_adapter: str | None = parts.motion_adapter_opt(group="video")
    window: int = parts.window_opt(group="video")
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
    cache_frames: int = parts.cache_frames_opt(group="video")
    cache_interval: int = parts.cache_interval_opt(group="video")
    feature_fusion: float = parts.feature_fusion_opt(group="video")
    controlnet: str | None = parts.controlnet_opt()
    controlnet_model: str | None = parts.controlnet_model_opt()
    control_scale: float = parts.control_scale_opt()
    control_video: str | None = opt(None, "the control maps, frame by frame (a video of the input's frame count), for "
                                    "--controlnet PATH_OR_ID", group="video")  # fmt: skip
    canny_low: int = parts.canny_opts()[0]
    canny_high: int = parts.canny_opts()[1]
    depth_model: str = parts.depth_model_opt()
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
        parts.check_style_scale(self.style_scale)
        parts.check_window(self.window)
        parts.check_video_slot(self)
        parts.check_cache_use(self)
        parts.check_control(self)
        if self.overlap is not None and self.overlap < 0:  # against the window where it is known: at load
            raise StdtrtError(f"--overlap must be in [0, window / 2], got {self.overlap}")
        if self.skip_threshold is not None and not 0.0 <= self.skip_threshold <= 1.0:
            raise StdtrtError(f"--skip-threshold must be in [0, 1], got {self.skip_threshold}")
        if self.max_skips < 1:
            raise StdtrtError(f"--max-skips must be at least 1, got {self.max_skips}")

    def torch_speedups(self) -> dict:
        """The torch backend's switches (runtime/backends/torch.py)."""
        return {"cuda_graphs": self.cuda_graphs, "compile": self.compile, "channels_last": self.channels_last}
