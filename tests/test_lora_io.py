"""LoRA files: the kohya form round-trips through diffusers' load_lora_weights, and a LoRA made for
another UNet is refused with a clear message."""

import pytest
import torch
from safetensors import safe_open

from stdtrt.errors import StdtrtError
from stdtrt.models.conditioning import encode_prompt, predict_eps
from stdtrt.models.load import load_model
from stdtrt.models.lora import add_lora, lora_layers, read_metadata, save_kohya, sgm_name


def _eps(model, cond):
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return predict_eps(model.unet, x, 600, cond)


@pytest.fixture(scope="module", params=["tiny-sd", "tiny-sdxl"])
def lora_file(request, tmp_path_factory):
    """A non-zero random LoRA on a fresh preset, saved in kohya form, and the student's own outputs."""
    model = load_model(request.param)
    torch.manual_seed(7)
    add_lora(model.unet, rank=4, alpha=2.0, init=False)
    cond = encode_prompt(model.pipe, "oil", 64, 64)
    path = tmp_path_factory.mktemp("lora") / "student.safetensors"
    save_kohya(model.unet, path, {"eta": 0.75, "base_model": request.param})
    student = _eps(model, cond)
    model.unet.disable_adapters()
    teacher = _eps(model, cond)
    return request.param, path, cond, student, teacher


def test_kohya_keys_map_to_unet_modules(lora_file):
    """SD 1.x files name diffusers' modules; SDXL files name the original (SGM) UNet's, every key of them
    (diffusers drops the SGM keys of a file that mixes both), which is what A1111 and ComfyUI look up."""
    name, path, *_ = lora_file
    unet = load_model(name).unet
    if name == "tiny-sdxl":
        modules = {
            sgm_name(n, unet).replace(".", "_") for n in lora_layers(load_model(name, lora=str(path)).unet)
        }
    else:
        modules = {n.replace(".", "_") for n, _ in unet.named_modules()}
    with safe_open(str(path), framework="pt") as f:
        keys = list(f.keys())
        for key in keys:
            base, _, kind = key.partition(".")
            assert base.startswith("lora_unet_") and base[len("lora_unet_") :] in modules, key
            assert kind in ("lora_down.weight", "lora_up.weight", "alpha")
        if name == "tiny-sdxl":
            assert not any(p in k for k in keys for p in ("down_blocks", "mid_block", "up_blocks"))
            assert "lora_unet_output_blocks_1_2_conv.lora_down.weight" in keys  # up_blocks.0.upsamplers.0
        alpha = f.get_tensor(keys[0].split(".")[0] + ".alpha")
    assert float(alpha) == 2.0  # the real alpha, not alpha / rank
    assert read_metadata(path)["eta"] == 0.75


def _sdxl_shaped_unet():
    """SDXL's block layout (no attention in the first down block, two resnets per block, deeper
    transformers further down) at toy widths, and SD 1.5's (attention in all but the last)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    common = dict(block_out_channels=(8, 16, 16), layers_per_block=2, norm_num_groups=8, sample_size=8,
                  attention_head_dim=4)  # fmt: skip
    sdxl = UNet2DConditionModel(
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 2), cross_attention_dim=16, use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=4, projection_class_embeddings_input_dim=40,
        **common,
    )  # fmt: skip
    sd15 = UNet2DConditionModel(
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, **common,
    )  # fmt: skip
    return sdxl, sd15


@pytest.mark.parametrize("which", [0, 1], ids=["sdxl-layout", "sd15-layout"])
def test_sgm_names_are_the_original_unets(which):
    """Every parameter renamed by sgm_name is read back by diffusers' own single-file converter (the one
    that loads original SD/SDXL checkpoints) as the same tensor under its diffusers name."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    unet = _sdxl_shaped_unet()[which]
    state = unet.state_dict()
    original = {}
    for key, value in state.items():
        module, _, param = key.rpartition(".")
        original[f"model.diffusion_model.{sgm_name(module, unet)}.{param}"] = value
    back = convert_ldm_unet_checkpoint(original, dict(unet.config))
    assert set(back) == set(state)
    assert all(torch.equal(back[k], state[k]) for k in state)


def test_reloaded_lora_reproduces_the_student(lora_file):
    name, path, cond, student, teacher = lora_file
    assert (student - teacher).abs().max() > 1e-2  # the adapter really changes the output
    reloaded = load_model(name, lora=str(path))
    assert len(lora_layers(reloaded.unet)) > 0
    assert (_eps(reloaded, cond) - student).abs().max() < 1e-5


def test_lora_for_another_unet_is_refused(lora_file):
    name, path, *_ = lora_file
    other = "tiny-sdxl" if name == "tiny-sd" else "tiny-sd"
    with pytest.raises(StdtrtError, match="does not fit the UNet"):
        load_model(other, lora=str(path))


def test_not_a_lora(tmp_path):
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"garbage")
    with pytest.raises(StdtrtError, match="not a readable safetensors"):
        load_model("tiny-sd", lora=str(bad))
    with pytest.raises(StdtrtError, match="does not exist"):
        load_model("tiny-sd", lora=str(tmp_path / "missing.safetensors"))


def test_a_lora_for_another_strength_is_flagged(lora_file, caplog):
    from stdtrt.models.card import StudentCard

    _, path, *_ = lora_file
    with caplog.at_level("WARNING"):
        assert StudentCard.read(path).grid(0.75) == 50  # no teacher_steps in this file: the default grid
        assert not caplog.records
        StudentCard.read(path).grid(0.5)
    assert "distilled for strength 0.75" in caplog.text


def test_inference_starts_on_the_grid_the_student_was_distilled_on(tmp_path, video):
    """--teacher-steps N is in the LoRA's metadata; stylize and export start at that grid's x_start."""
    from stdtrt import schedule
    from stdtrt.config import ExportConfig, StylizeConfig
    from stdtrt.export.export import export_bundle
    from stdtrt.models.card import StudentCard
    from stdtrt.models.lora import add_lora, save_kohya
    from stdtrt.runtime.stylize import load_model_backend

    model = load_model("tiny-sd")
    add_lora(model.unet, rank=2, alpha=2.0)
    path = save_kohya(model.unet, tmp_path / "n20.safetensors", {"eta": 0.75, "teacher_steps": 20})
    assert StudentCard.read(path).grid(0.75) == 20
    n20 = schedule.student_plan(model.alphas_cumprod(), 0.75, 4, num_steps=20)
    # N = 20: k = 50, n_eta = ceil(20 * 0.75) = 15, t = 50 * 16 - 1 = 799 (not the N = 50 grid's 779)
    assert n20.timesteps[0] == 799 and n20.num_steps == 20
    backend = load_model_backend(StylizeConfig(model="tiny-sd", lora=str(path), width=64, height=64), 64, 64)
    assert backend.plan == n20
    cfg = ExportConfig(model="tiny-sd", lora=str(path), width=64, height=64, out=str(tmp_path / "b"),
                       tensorrt=False, precision="fp32", validate=False)  # fmt: skip
    from stdtrt.bundle.manifest import read_bundle

    bundle = read_bundle(export_bundle(cfg, progress=False).path)
    assert bundle.plan() == n20 and bundle.manifest.schedule["num_steps"] == 20


def test_an_sdxl_layout_diffusers_cannot_read_in_sgm_keeps_diffusers_names():
    """SDXL's refiner upsamples in an up block without attention: diffusers' SGM reader would take that
    upsampler for an attention, so such a UNet's file keeps diffusers' names (which it loads)."""
    from diffusers import UNet2DConditionModel

    from stdtrt.models.lora import kohya_state_dict

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=8, sample_size=8, attention_head_dim=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, addition_embed_type="text_time", addition_time_embed_dim=4,
        projection_class_embeddings_input_dim=40,
    )  # fmt: skip
    add_lora(unet, rank=2, alpha=2.0, init=False)
    keys = kohya_state_dict(unet)
    assert "lora_unet_up_blocks_0_upsamplers_0_conv.lora_down.weight" in keys
    assert not any("output_blocks" in k for k in keys)
