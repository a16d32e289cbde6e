"""DistillConfig: `stdtrt distill`."""

from __future__ import annotations

from dataclasses import dataclass

from stdtrt.config.base import DISTILL_MODES, check_nfe, check_size, check_strength, opt
from stdtrt.config.parts import (
    NOISE_RULES,
    check_style_scale,
    ip_adapter_opt,
    style_blocks_opt,
    style_scale_opt,
)
from stdtrt.errors import StdtrtError

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
