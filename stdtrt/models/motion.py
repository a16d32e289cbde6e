"""Motion modules (`--motion-adapter`): the image teacher with an AnimateDiff-style motion adapter, as the
STD authors' video mode uses (std.md, "Video STD").

diffusers' `MotionAdapter` joins the model's UNet2DConditionModel into a `UNetMotionModel`
(`from_unet2d`): the same spatial weights, temporal attention between the frames of a clip. It takes
latents (B, 4, F, h, w): B clips of F frames. The adapter comes from a folder or the local Hugging Face cache
(never downloaded), or a built-in random preset: `tiny-motion` fits `tiny-sd`; `random-motion-sd15` has the
architecture of AnimateDiff's SD 1.5 adapter (v1-5-2) and fits `random-sd15`, for timing and memory.
"""

from __future__ import annotations

import json
import logging

import torch

from stdtrt.errors import StdtrtError
from stdtrt.models.hub import local_folder

log = logging.getLogger(__name__)

MOTION_PRESETS = {
    # tiny-sd's UNet: two blocks of 32 and 64 channels, one motion layer each
    "tiny-motion": dict(
        block_out_channels=(32, 64),
        motion_layers_per_block=1,
        motion_num_attention_heads=2,
        motion_norm_num_groups=8,
        motion_max_seq_length=32,
        use_motion_mid_block=False,
    ),
    # AnimateDiff's SD 1.5 adapter, v1-5-2 (guoyww/animatediff-motion-adapter-v1-5-2)
    "random-motion-sd15": dict(
        block_out_channels=(320, 640, 1280, 1280),
        motion_layers_per_block=2,
        motion_num_attention_heads=8,
        motion_norm_num_groups=32,
        motion_max_seq_length=32,
        use_motion_mid_block=True,
    ),
}


def is_motion_unet(unet) -> bool:
    """A UNet that takes clips (B, 4, F, h, w): diffusers' UNetMotionModel."""
    return type(unet).__name__ == "UNetMotionModel"


def check_motion_window(
    model, frames: int, adapter: str, option: str = "--window", trained: int | None = None
):
    """A window (or training clip) the motion modules can attend over; a window other than the clip length
    the student was distilled on (`trained`: its models.card.StudentCard's clip_frames) is said in one line."""
    longest = model.unet.config.motion_max_seq_length
    if frames > longest:
        raise StdtrtError(f"{option} {frames} is longer than the {longest} frames {adapter} attends over")
    if trained and frames != trained:
        log.warning("%s %d: the student was distilled on clips of %d frames (its LoRA says)",
                    option, frames, trained)  # fmt: skip


def motion_preset(name: str):
    """A built-in MotionAdapter (MOTION_PRESETS), random weights from a fixed seed."""
    from diffusers import MotionAdapter

    with torch.random.fork_rng(devices=[]):  # the run's own random state is left as it was
        torch.manual_seed(0)
        return MotionAdapter(**MOTION_PRESETS[name]).eval()


def load_adapter(name: str):
    """A MotionAdapter by name: a preset, a folder, or a hub id in the local HF cache."""
    if name in MOTION_PRESETS:
        return motion_preset(name)
    from diffusers import MotionAdapter

    path = local_folder(
        name, "motion adapter", name, "`--motion-adapter tiny-motion` (with `--model tiny-sd`) works offline"
    )
    if (
        not (path / "config.json").is_file()
        or json.loads((path / "config.json").read_text()).get("_class_name") != "MotionAdapter"
    ):
        raise StdtrtError(f"{path} is not a diffusers MotionAdapter (its config.json says otherwise)")
    try:
        return MotionAdapter.from_pretrained(path, local_files_only=True).eval()
    except Exception as exc:
        raise StdtrtError(f"could not load motion adapter {path}: {str(exc).splitlines()[0][:200]}") from None


def motion_unet(unet, adapter, adapter_name: str, model_name: str):
    """UNetMotionModel.from_unet2d, refusing an adapter made for another base in one line."""
    from diffusers import UNetMotionModel

    theirs, ours = list(adapter.config.block_out_channels), list(unet.config.block_out_channels)
    if theirs != ours:
        raise StdtrtError(
            f"motion adapter {adapter_name} is made for a UNet with blocks of {theirs} channels; {model_name}'s "
            f"have {ours} (an SD 1.5 adapter on SDXL, or the other way round?)"
        )
    try:
        motion = UNetMotionModel.from_unet2d(unet, adapter)
    except ValueError as exc:
        raise StdtrtError(f"motion adapter {adapter_name} does not fit {model_name}'s UNet: {exc}") from None
    if getattr(unet, "add_embedding", None) is not None:
        # SDXL's added (pooled text + size) embedding: from_unet2d (diffusers 0.42) builds it but does not
        # copy its weights, which would leave it random
        motion.add_embedding.load_state_dict(unet.add_embedding.state_dict())
    return motion.to(device=unet.device, dtype=unet.dtype).eval().requires_grad_(False)
