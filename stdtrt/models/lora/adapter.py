"""The LoRA adapter on a UNet (peft): which modules it adapts (the STD authors' set), attaching it, and
finding its layers."""

from __future__ import annotations

from stdtrt.models.motion import is_motion_unet

ADAPTER = "stdtrt"
# The module types the STD authors adapt (std.md, "Training defaults").
TARGET_MODULES = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "proj_in",
    "proj_out",
    "ff.net.0.proj",
    "ff.net.2",
    "conv1",
    "conv2",
    "conv_shortcut",
    "downsamplers.0.conv",
    "upsamplers.0.conv",
    "time_emb_proj",
)


def add_lora(unet, rank: int = 64, alpha: float = 64.0, targets=TARGET_MODULES, init: bool | str = True):
    """Attach a trainable LoRA adapter named `stdtrt` to the UNet (base weights frozen).

    init=True is peft's default (B = 0: the student starts as the teacher); init=False gives a random
    non-zero adapter (for tests that must see the LoRA act).
    """
    from peft import LoraConfig

    unet.requires_grad_(False)
    config = LoraConfig(
        r=rank, lora_alpha=alpha, target_modules=_target_names(unet, targets), init_lora_weights=init
    )
    unet.add_adapter(config, adapter_name=ADAPTER)
    unet.set_adapter(ADAPTER)
    return unet


def _target_names(unet, targets) -> list[str]:
    """peft's target list: the suffixes themselves for an image UNet; for a motion UNet every matching
    module by full name except the motion modules' proj_in and proj_out, which diffusers calls with a
    keyword argument (`proj_in(input=...)`) that a peft LoRA layer does not take."""
    targets = list(targets)
    if not is_motion_unet(unet):
        return targets
    return [
        name
        for name, _ in unet.named_modules()
        if any(name == t or name.endswith("." + t) for t in targets)
        and not ("motion_modules" in name and name.endswith((".proj_in", ".proj_out")))
    ]


def lora_layers(unet, adapter: str = ADAPTER) -> dict[str, object]:
    """module path -> peft LoraLayer holding `adapter`."""
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in unet.named_modules() if isinstance(m, LoraLayer) and adapter in m.lora_A}
