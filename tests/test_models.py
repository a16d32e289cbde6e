"""Model loading: presets, folders, the local HF cache (offline), and clear errors."""

import shutil
from pathlib import Path

import pytest
import torch

from stdtrt.errors import StdtrtError
from stdtrt.io.hashing import module_hash
from stdtrt.models.load import load_model


def test_presets_are_deterministic():
    a, b = load_model("tiny-sd"), load_model("tiny-sd")
    assert module_hash(a.unet, a.vae, a.pipe.text_encoder) == module_hash(b.unet, b.vae, b.pipe.text_encoder)
    assert a.kind == "sd" and load_model("tiny-sdxl").kind == "sdxl"
    assert a.native_size == 256 and a.vae_scale == 8


def test_tiny_tokenizer_round_trips_text(tiny_sd):
    tok = tiny_sd.pipe.tokenizer
    ids = tok("an oil painting").input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert tok.decode(ids, skip_special_tokens=True).strip() == "an oil painting"


def _save_folder(model, folder: Path) -> Path:
    model.pipe.save_pretrained(folder)
    return folder


def _unet_out(model):
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    c = torch.randn(1, 77, model.unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model.unet(x, 500, encoder_hidden_states=c).sample


def test_load_from_a_diffusers_folder(tiny_sd, tmp_path):
    folder = _save_folder(tiny_sd, tmp_path / "tiny")
    loaded = load_model(str(folder))
    assert loaded.kind == "sd"
    assert torch.equal(_unet_out(loaded), _unet_out(tiny_sd))


def test_load_a_hub_id_from_the_local_cache_only(tiny_sdxl, tmp_path):
    import huggingface_hub.constants as c

    # lay the folder out as huggingface_hub caches a repo: refs/main -> snapshots/<commit>/
    repo = Path(c.HF_HUB_CACHE) / "models--someone--tiny-xl"
    commit = "0123456789abcdef0123456789abcdef01234567"
    _save_folder(tiny_sdxl, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    try:
        loaded = load_model("someone/tiny-xl")
        assert loaded.kind == "sdxl"
    finally:
        shutil.rmtree(repo)


def test_missing_model_says_how_to_get_it():
    with pytest.raises(StdtrtError) as err:
        load_model("runwayml/stable-diffusion-v1-5")
    msg = str(err.value)
    assert "hf download runwayml/stable-diffusion-v1-5" in msg and "tiny-sd" in msg


@pytest.mark.parametrize("name", ["not a model", "./missing-folder/x/y"])
def test_unknown_model_names(name):
    with pytest.raises(StdtrtError, match="tiny-sd|does not exist"):
        load_model(name)


def test_folder_without_model_index(tmp_path):
    with pytest.raises(StdtrtError, match="model_index.json"):
        load_model(str(tmp_path))


def test_working_size_keeps_aspect_near_native(tiny_sd):
    assert tiny_sd.working_size(1920, 1080, None, None) == (344, 192)  # 256^2 area, 16:9, multiples of 8
    assert tiny_sd.working_size(1920, 1080, 512, None) == (512, 288)
    assert tiny_sd.working_size(640, 480, 128, 96) == (128, 96)


def test_single_file_kind_comes_from_its_keys_not_its_size(tmp_path):
    from safetensors.torch import save_file

    from stdtrt.models.load import _single_file_is_sdxl

    xl, sd = tmp_path / "xl.safetensors", tmp_path / "sd.safetensors"
    save_file({"conditioner.embedders.1.model.w": torch.zeros(2)}, str(xl))
    save_file({"cond_stage_model.transformer.w": torch.zeros(2)}, str(sd))
    assert _single_file_is_sdxl(xl) and not _single_file_is_sdxl(sd)


def test_fp16_keeps_a_vae_that_asks_for_fp32_in_fp32():
    """models.place is the one way a loaded model moves (load_model, the bundle's torch backend): under fp16
    the UNet and text encoders halve, and a VAE whose config says force_upcast (SDXL's) stays float32."""
    from stdtrt.models.load import place

    model = load_model("tiny-sdxl")
    assert model.vae.config.force_upcast
    place(model.pipe, "cpu", torch.float16)
    assert model.unet.dtype == torch.float16 and model.pipe.text_encoder_2.dtype == torch.float16
    assert model.vae.dtype == torch.float32
    model.vae.register_to_config(force_upcast=False)  # a VAE that is fine in fp16 (e.g. sdxl-vae-fp16-fix)
    place(model.pipe, "cpu", torch.float16)
    assert model.vae.dtype == torch.float16
