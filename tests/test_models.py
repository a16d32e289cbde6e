"""Model loading: presets, folders, the local HF cache (offline), and clear errors."""

import json
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

    from stdtrt.models.files import single_file_kind

    xl, sd, refiner = (
        tmp_path / "xl.safetensors",
        tmp_path / "sd.safetensors",
        tmp_path / "refiner.safetensors",
    )
    save_file(
        {
            "conditioner.embedders.0.transformer.w": torch.zeros(2),
            "conditioner.embedders.1.model.w": torch.zeros(2),
        },
        str(xl),
    )
    save_file({"cond_stage_model.transformer.w": torch.zeros(2)}, str(sd))
    save_file({"conditioner.embedders.0.model.w": torch.zeros(2)}, str(refiner))  # OpenCLIP bigG alone
    assert single_file_kind(xl) == "sdxl" and single_file_kind(sd) == "sd"
    with pytest.raises(StdtrtError, match="it is the SDXL refiner"):
        load_model(str(refiner))


def test_the_precision_rule_follows_diffusers():
    """One placement per run: SDXL's VAE is upcast under fp16 when its config says force_upcast (the
    fp16-fix VAEs say false); SD 1.x VAEs run in fp16 (diffusers' SD pipelines never upcast); bf16 has
    fp32's range, so nothing is upcast; auto is fp32 on the CPU."""
    from types import SimpleNamespace

    from stdtrt.models.load import resolve_placement, vae_dtype

    up, fix = SimpleNamespace(force_upcast=True), SimpleNamespace(force_upcast=False)
    assert vae_dtype(torch.float16, "sdxl", up) == torch.float32
    assert vae_dtype(torch.float16, "sdxl", fix) == torch.float16
    assert vae_dtype(torch.float16, "sd", up) == torch.float16
    assert vae_dtype(torch.bfloat16, "sdxl", up) == torch.bfloat16
    p = resolve_placement("cpu", "auto", "sdxl", up)
    assert (p.device.type, p.unet, p.vae, p.precision) == ("cpu", torch.float32, torch.float32, "fp32")


def test_load_model_places_every_network(caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="stdtrt"):
        xl = load_model("tiny-sdxl", device="cpu", precision="fp16")
    assert "fp16 on the CPU runs, but slowly" in caplog.text  # allowed on the CPU (for tests), said once
    assert xl.unet.dtype == xl.pipe.text_encoder.dtype == xl.pipe.text_encoder_2.dtype == torch.float16
    assert xl.vae.dtype == torch.float32 and xl.placement.dtypes() == {"unet": "fp16", "vae": "fp32"}
    sd = load_model("tiny-sd", device="cpu", precision="bf16")
    assert sd.unet.dtype == sd.vae.dtype == sd.pipe.text_encoder.dtype == torch.bfloat16


def test_bf16_on_a_gpu_without_it_is_one_line(monkeypatch):
    from stdtrt.models.load import resolve_dtype

    # a V100 (sm_70): torch.cuda.is_bf16_supported() says yes there (emulated, slower than fp16)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (7, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla V100")
    with pytest.raises(StdtrtError, match="Tesla V100 does not support bf16; use --precision fp16"):
        resolve_dtype("bf16", torch.device("cuda", 0))
    assert resolve_dtype("auto", torch.device("cuda", 0), training=True) == torch.float16  # not emulated bf16
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))  # an H100
    assert resolve_dtype("auto", torch.device("cuda", 0), training=True) == torch.bfloat16


def test_a_gpu_that_is_not_there_is_one_line():
    from stdtrt.models.load import resolve_device

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: cuda is a fine ask")
    with pytest.raises(StdtrtError, match="CUDA is not available"):
        resolve_device("cuda:1")
    with pytest.raises(StdtrtError, match="not one of auto, cpu, cuda"):
        resolve_device("tpu")


def _saved(model, folder: Path, **unet_changes) -> Path:
    """The preset saved as a diffusers folder, its UNet rebuilt with some config changed."""
    from diffusers import UNet2DConditionModel

    if unet_changes:
        config = {**model.unet.config, **unet_changes}
        model.pipe.unet = UNet2DConditionModel.from_config(config)
    model.pipe.save_pretrained(folder)
    return folder


def test_unets_of_other_tasks_are_refused(tmp_path):
    """Inpainting (9 input channels), InstructPix2Pix (8), depth-to-image (5), upscalers (7): one line,
    before any weight is read."""
    folder = _saved(load_model("tiny-sd"), tmp_path / "inpaint", in_channels=9)
    with pytest.raises(StdtrtError, match="takes 9 input channels .*inpainting.*4-channel text-to-image"):
        load_model(str(folder))


def test_the_sdxl_refiner_is_refused(tmp_path):
    """The refiner: no first text encoder, 5 micro-conditioning time ids (aesthetic score)."""
    model = load_model("tiny-sdxl")
    dims = model.unet.config.addition_time_embed_dim
    folder = _saved(model, tmp_path / "refiner", projection_class_embeddings_input_dim=5 * dims + 32)
    index = json.loads((folder / "model_index.json").read_text())
    index.update(text_encoder=[None, None], tokenizer=[None, None], requires_aesthetics_score=True)
    index["_class_name"] = "StableDiffusionXLImg2ImgPipeline"
    (folder / "model_index.json").write_text(json.dumps(index))
    shutil.rmtree(folder / "text_encoder")
    with pytest.raises(StdtrtError, match="no first text encoder: it is the SDXL refiner"):
        load_model(str(folder))


def test_a_preset_leaves_the_callers_random_state_and_seed_reaches_the_lora(data_dir, tmp_path):
    """Building a preset draws its weights from fixed seeds without touching the global RNG, so the
    distill run's --seed (set before the model loads) decides the LoRA's initialisation."""
    import torch
    from conftest import small, start_run

    from stdtrt.models.load import load_model
    from stdtrt.models.vae import vae_preset

    torch.manual_seed(123)
    state = torch.get_rng_state()
    load_model("tiny-sd")
    vae_preset("tiny-taesd")
    assert torch.equal(torch.get_rng_state(), state)
    lora_a = {}
    for seed in (0, 1, 0):
        run = start_run(small(data_dir, tmp_path / f"s{seed}-{len(lora_a)}", seed=seed))
        lora_a.setdefault(seed, []).append(
            next(p for n, p in run.lora_params.items() if "lora_A" in n).detach().clone()
        )
    assert torch.equal(lora_a[0][0], lora_a[0][1]) and not torch.equal(lora_a[0][0], lora_a[1][0])
