"""LoRA files: the kohya form round-trips through diffusers' load_lora_weights, and a LoRA made for
another UNet is refused with a clear message."""

import pytest
import torch
from safetensors import safe_open

from stdtrt.errors import StdtrtError
from stdtrt.models.conditioning import encode_prompt, predict_eps
from stdtrt.models.load import load_model
from stdtrt.models.lora import add_lora, lora_layers, read_metadata, save_kohya


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
    name, path, *_ = lora_file
    modules = {n.replace(".", "_") for n, _ in load_model(name).unet.named_modules()}
    with safe_open(str(path), framework="pt") as f:
        keys = list(f.keys())
        for key in keys:
            base, _, kind = key.partition(".")
            assert base.startswith("lora_unet_") and base[len("lora_unet_") :] in modules, key
            assert kind in ("lora_down.weight", "lora_up.weight", "alpha")
        alpha = f.get_tensor(keys[0].split(".")[0] + ".alpha")
    assert float(alpha) == 2.0  # the real alpha, not alpha / rank
    assert read_metadata(path)["eta"] == 0.75


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
    from stdtrt.models.lora import check_strength_matches

    _, path, *_ = lora_file
    with caplog.at_level("WARNING"):
        check_strength_matches(path, 0.75)
        assert not caplog.records
        check_strength_matches(path, 0.5)
    assert "distilled for strength 0.75" in caplog.text
