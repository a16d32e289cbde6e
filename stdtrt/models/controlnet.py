"""ControlNet in the student's UNet calls: a diffusers `ControlNetModel` reads each frame's control map (its
edges, its depth, or a map the user made) and adds residuals to the UNet's skip connections and middle, so
the stylized frame keeps the scene's structure (Zhang et al., "Adding Conditional Control to Text-to-Image
Diffusion Models", 2023).

A ControlNet comes from a folder or the local Hugging Face cache (never downloaded), or a built-in random
preset (`tiny-controlnet` fits tiny-sd, `tiny-controlnet-xl` tiny-sdxl, `random-controlnet-sd15` has SD
1.5's size and fits random-sd15); one made for the other family is refused by its widths. `Control` is the
one object of a run: the network, its scale and where its maps come from; it encodes a frame's map into
the UNet call (`residuals`, inside models/conditioning.predict_eps) and describes itself for the manifest
and the cache key (`record`). Maps are computed by models/control_maps.py.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from stdtrt.config import PREPROCESSORS, cache_root
from stdtrt.errors import StdtrtError
from stdtrt.io.hashing import module_hash
from stdtrt.models.control_maps import MapSpec, to_unit
from stdtrt.models.hub import local_folder

log = logging.getLogger(__name__)

# preset -> the model preset whose UNet it is made from
CONTROLNET_PRESETS = {"tiny-controlnet": "tiny-sd", "tiny-controlnet-xl": "tiny-sdxl",
                      "random-controlnet-sd15": "random-sd15"}  # fmt: skip
# The ControlNet a preprocessor uses by default, per family (hub ids; `hf download` them once).
DEFAULT_CONTROLNETS = {
    ("sd", "canny"): "lllyasviel/control_v11p_sd15_canny",
    ("sd", "depth"): "lllyasviel/control_v11f1p_sd15_depth",
    ("sdxl", "canny"): "diffusers/controlnet-canny-sdxl-1.0",
    ("sdxl", "depth"): "diffusers/controlnet-depth-sdxl-1.0",
}
OFFLINE = "`--controlnet canny --controlnet-model tiny-controlnet` (with `--model tiny-sd`) works offline"


def _preset(name: str, model):
    """A built-in random ControlNet: diffusers' ControlNetModel.from_unet of the preset's UNet, its
    conditioning embedding downsampling as the VAE does, and the zero-initialised output convolutions
    given seeded random weights (else the residuals are zero and the ControlNet does nothing)."""
    from diffusers import ControlNetModel

    from stdtrt.models.load import load_model

    base = CONTROLNET_PRESETS[name]
    if model.name != base:
        raise StdtrtError(f"{name} fits --model {base} (a random preset), not {model.name}")
    folder = cache_root() / name
    if (folder / "config.json").is_file():
        return ControlNetModel.from_pretrained(folder)
    unet = load_model(base).unet
    steps = int(torch.log2(torch.tensor(float(model.vae_scale)))) + 1  # one more channel entry per halving
    width = unet.config.block_out_channels[0]
    channels = tuple(min(width, 8 * 2**i) for i in range(steps))
    with torch.random.fork_rng(devices=[]):  # the run's own random state is left as it was
        torch.manual_seed(0)
        net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=channels)
        for module in [
            *net.controlnet_down_blocks,
            net.controlnet_mid_block,
            net.controlnet_cond_embedding.conv_out,
        ]:
            torch.nn.init.normal_(module.weight, std=0.02)
            torch.nn.init.zeros_(module.bias)
    folder.parent.mkdir(parents=True, exist_ok=True)
    net.save_pretrained(folder)
    return net


def load_controlnet(name: str, model):
    """A ControlNetModel for `model`'s UNet from a preset, a folder or the local HF cache, in float32 on
    the CPU (placed with the model), refused when made for another family."""
    from diffusers import ControlNetModel

    if name in CONTROLNET_PRESETS:
        net = _preset(name, model)
    else:
        folder = local_folder(name, "ControlNet", name, OFFLINE)
        try:
            net = ControlNetModel.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise StdtrtError(
                f"{folder} is not a diffusers ControlNet ({str(exc).splitlines()[0][:200]})"
            ) from None
    check_fits(net, model, name)
    return net.eval().requires_grad_(False)


def check_fits(net, model, name: str) -> None:
    """A ControlNet works with the UNet whose blocks and text it was trained beside: the same block widths
    and cross-attention width (an SD 1.5 ControlNet on SDXL is refused here, not midway through a frame)."""
    ours, theirs = model.unet.config, net.config
    for key in ("block_out_channels", "cross_attention_dim"):
        if tuple(_tuple(getattr(theirs, key))) != tuple(_tuple(getattr(ours, key))):
            raise StdtrtError(
                f"ControlNet {name} is made for a UNet of {key.replace('_', ' ')} {getattr(theirs, key)}; "
                f"{model.name}'s is {getattr(ours, key)} (a ControlNet of the other family?)"
            )


def _tuple(value):
    return value if isinstance(value, list | tuple) else [value]


@dataclass
class Control:
    """A run's ControlNet: the network (placed as the UNet), its scale and where its maps come from."""

    net: object  # diffusers ControlNetModel
    name: str  # what the user passed (preset, folder or hub id)
    scale: float  # conditioning_scale in [0, 2]
    spec: MapSpec  # where its maps come from: the preprocessor and its settings
    sdxl: bool

    def record(self) -> dict:
        """What the manifest and the cache key say of it (the weights by content)."""
        source = (
            str(Path(self.name).expanduser().resolve())
            if Path(self.name).expanduser().exists()
            else self.name
        )
        return {"controlnet": self.name, "source": source, "hash": module_hash(self.net), "scale": self.scale,
                "maps": self.spec.record()}  # fmt: skip

    def key(self) -> dict:
        """What the graphs' cache key holds of it: the weights by their hash, not where they lie."""
        return {k: v for k, v in self.record().items() if k != "source"}

    def place(self, device, dtype) -> None:
        self.net.to(device=device, dtype=dtype)

    # -- in a stream UNet graph (models.conditioning.GraphCall): each new frame's map and the maps of the
    # frames in the slots in (uint8), the maps shifted down a slot out; each slot's own frame's map
    inputs, outputs = ("control", "control_slots"), ("control_slots_next",)

    def graph_specs(self, call, width: int, height: int) -> list[tuple[str, tuple, torch.dtype]]:
        b, n = call.batch, call.nfe * call.batch
        return [("control", (b, height, width, 3), torch.uint8),
                ("control_slots", (n, height, width, 3), torch.uint8)]  # fmt: skip

    def enter(self, named: dict, call, stack):
        b = call.batch
        maps = torch.cat([named["control"], named["control_slots"][b:]])  # the new frames' enter slot 0
        return {"control": (self, to_unit(maps))}, lambda: [
            torch.cat([torch.zeros_like(maps[:b]), maps[:-b]])
        ]

    def residuals(self, x: torch.Tensor, t, kwargs: dict, images: torch.Tensor) -> dict:
        """The UNet call's extra arguments for latents x (B, 4, h, w) at timesteps t with the call's own
        text conditioning (`kwargs`: encoder_hidden_states, and for SDXL added_cond_kwargs) and the maps
        of its rows (B, 3, H, W) in [0, 1]: down_block_additional_residuals, mid_block_additional_residual.
        Runs in the UNet's dtype; diffusers' ControlNet pipelines call it the same way (the IP-Adapter's
        image embedding is not part of a ControlNet's input)."""
        dtype = next(self.net.parameters()).dtype
        added = kwargs.get("added_cond_kwargs") or {}
        extra = {"added_cond_kwargs": {k: added[k] for k in ("text_embeds", "time_ids")}} if self.sdxl else {}
        down, mid = self.net(
            x.to(dtype), t, encoder_hidden_states=kwargs["encoder_hidden_states"], controlnet_cond=images.to(dtype),
            conditioning_scale=self.scale, return_dict=False, **extra,
        )  # fmt: skip
        return {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}


def setup_control(cfg, model) -> Control | None:
    """The Control of a StylizeConfig or ExportConfig on a loaded (fused) model, placed as its UNet (None
    without --controlnet). `--controlnet canny|depth` takes the family's ControlNet for that preprocessor
    (or --controlnet-model); a path or hub id takes its maps from --control-video."""
    if cfg.controlnet is None:
        return None
    if cfg.controlnet in PREPROCESSORS:
        name = cfg.controlnet_model or DEFAULT_CONTROLNETS[(model.kind, cfg.controlnet)]
        spec = MapSpec(cfg.controlnet, cfg.canny_low, cfg.canny_high, cfg.depth_model)
    else:
        name = cfg.controlnet
        spec = MapSpec("video", video=getattr(cfg, "control_video", None))
    control = Control(
        load_controlnet(name, model), name, float(cfg.control_scale), spec, model.kind == "sdxl"
    )
    control.place(model.device, model.dtype)
    return control
