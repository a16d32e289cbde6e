"""A LoRA whose alpha is not its rank (scale alpha / r = 3) through every load path stdtrt has, against the
merge computed here by hand: W + (alpha / r) B A for every adapted layer of a fresh base UNet, from the A
and B the adapter was made with. With alpha equal to the rank a path that drops (or squares, or inverts)
the factor passes any test; here it is off by 3x.

Paths: the kohya file onto SD 1.x (diffusers' kohya reader), onto SDXL (SGM names), onto a motion UNet
(models/lora.kohya_to_diffusers), and the diffusers form (alpha in diffusers' adapter metadata) onto SD 1.x
and a motion UNet; each unfused (the LoRA layers) and fused (the export's merge)."""

from __future__ import annotations

import pytest
import torch

from stdtrt.models.conditioning import encode_prompt, predict_eps
from stdtrt.models.load import load_model
from stdtrt.models.lora import add_lora, fuse_lora, lora_layers, save_diffusers, save_kohya

pytestmark = pytest.mark.usefixtures("one_cpu_thread")

RANK, ALPHA = 4, 12.0  # scale 3


def _made(preset: str, motion: str | None):
    """A fresh model with a random non-zero LoRA of rank 4, alpha 12."""
    model = load_model(preset, motion_adapter=motion)
    torch.manual_seed(5)
    add_lora(model.unet, rank=RANK, alpha=ALPHA, init=False)
    assert {layer.scaling["stdtrt"] for layer in lora_layers(model.unet).values()} == {ALPHA / RANK}
    return model


def _merged_by_hand(preset: str, motion: str | None, made, scale: float):
    """A fresh base model whose adapted weights are W + scale * B A, from the made adapter's own A and B."""
    base = load_model(preset, motion_adapter=motion)
    modules = dict(base.unet.named_modules())
    with torch.no_grad():
        for name, layer in lora_layers(made.unet).items():
            a, b = (
                layer.lora_A["stdtrt"].weight,
                layer.lora_B["stdtrt"].weight,
            )  # (r, in[, k, k]), (out, r[, 1, 1])
            w = modules[name].weight
            w += scale * (b.flatten(1) @ a.flatten(1)).view(w.shape)
    return base


def _eps(model, motion: str | None):
    g = torch.Generator().manual_seed(9)
    x = torch.randn((1, 4, 2, 8, 8) if motion else (1, 4, 8, 8), generator=g)
    return predict_eps(model.unet, x, 600, encode_prompt(model.pipe, "an oil painting", 64, 64)).float()


PATHS = [
    ("tiny-sd", None, "kohya"),
    ("tiny-sdxl", None, "kohya"),
    ("tiny-sd", "tiny-motion", "kohya"),
    ("tiny-sd", None, "diffusers"),
    ("tiny-sd", "tiny-motion", "diffusers"),
]


@pytest.mark.parametrize("preset,motion,form", PATHS)
def test_a_lora_with_alpha_other_than_its_rank_loads_as_merged_by_hand(preset, motion, form, tmp_path):
    made = _made(preset, motion)
    path = tmp_path / f"{form}.safetensors"
    if form == "kohya":
        save_kohya(made.unet, path, {"eta": 0.75, "motion_adapter": motion})
    else:
        save_diffusers(made.unet, type(made.pipe), path, {"eta": 0.75, "motion_adapter": motion})
    want = _eps(_merged_by_hand(preset, motion, made, ALPHA / RANK), motion)
    unscaled = _eps(_merged_by_hand(preset, motion, made, 1.0), motion)  # what dropping alpha / r gives
    plain = _eps(load_model(preset, motion_adapter=motion), motion)
    scale = max(1.0, float(want.abs().max()))
    assert (want - unscaled).abs().max() > 1e-2 * scale and (want - plain).abs().max() > 1e-2 * scale

    loaded = load_model(preset, motion_adapter=motion, lora=str(path))
    assert len(lora_layers(loaded.unet)) == len(lora_layers(made.unet))
    assert (_eps(loaded, motion) - want).abs().max() < 1e-4 * scale, "unfused"
    fuse_lora(loaded)
    assert (_eps(loaded, motion) - want).abs().max() < 1e-4 * scale, "fused"
