"""The tiny VAE (`--vae`): TAESD for the model's family from a folder or the local HF cache, built-in random
presets offline; the same VAE call for both kinds; its graphs in the bundle, validated and recorded in the
manifest and the cache key; a VAE for the other family's latents, or no VAE at all, refused in one line."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import export_tiny

from stdtrt.config import StylizeConfig
from stdtrt.errors import StdtrtError
from stdtrt.models.load import load_model
from stdtrt.models.vae import vae_decode, vae_encode, vae_preset

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


def _cache_entry(repo: str, vae) -> Path:
    """Lay a VAE out in the local Hugging Face cache as `hf download` would (refs/main -> snapshot)."""
    import huggingface_hub.constants as c

    root = Path(c.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"
    commit = "0" * 40
    vae.save_pretrained(root / "snapshots" / commit)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    return root


def test_the_tiny_vae_is_called_like_the_full_one():
    """TAESD's encoder gives latents on the scaled scale (scaling factor 1): the same call, the same shape."""
    tiny = vae_preset("tiny-taesd")
    assert type(tiny).__name__ == "AutoencoderTiny" and tiny.config.scaling_factor == 1.0
    images = torch.rand(2, 3, 64, 48, generator=torch.Generator().manual_seed(0)) * 2 - 1
    z = vae_encode(tiny, images, 1.0)
    assert z.shape == (2, 4, 8, 6) and z.dtype == torch.float32
    with torch.no_grad():
        assert torch.equal(z, tiny.encode(images).latents)  # no posterior, no extra scaling
    assert vae_decode(tiny, z, 1.0).shape == (2, 3, 64, 48)


def test_tiny_resolves_to_taesd_of_the_models_family_from_the_cache():
    from stdtrt.models.vae import TINY

    assert TINY == {"sd": "madebyollin/taesd", "sdxl": "madebyollin/taesdxl"}
    model = load_model("tiny-sd")
    with pytest.raises(StdtrtError, match="hf download madebyollin/taesd.*tiny-taesd.*work offline"):
        model.use_vae("tiny")  # not in the (empty, offline) cache
    root = _cache_entry("madebyollin/taesd", vae_preset("tiny-taesd"))
    try:
        model.use_vae("tiny")
        assert (
            model.vae_info["source"] == "madebyollin/taesd" and type(model.vae).__name__ == "AutoencoderTiny"
        )
        xl = load_model("tiny-sdxl")
        with pytest.raises(StdtrtError, match="made for SD 1.x latents and tiny-sdxl is SDXL.*taesdxl"):
            xl.use_vae("madebyollin/taesd")
    finally:
        shutil.rmtree(root)


def test_vaes_of_another_family_or_shape_are_refused(tmp_path, tiny_sd):
    from diffusers import AutoencoderKL

    model = load_model("tiny-sd")
    kl = AutoencoderKL.from_config({**tiny_sd.vae.config, "scaling_factor": 0.13025})  # SDXL's latent scale
    kl.save_pretrained(tmp_path / "sdxl-vae")
    with pytest.raises(StdtrtError, match="made for SDXL latents and tiny-sd is SD 1.x"):
        model.use_vae(str(tmp_path / "sdxl-vae"))
    taesdxl = tmp_path / "taesdxl"
    vae_preset("tiny-taesd").save_pretrained(taesdxl)
    with pytest.raises(StdtrtError, match="made for SDXL latents"):
        model.use_vae(str(taesdxl))
    from diffusers import AutoencoderTiny

    AutoencoderTiny(latent_channels=16, encoder_block_out_channels=(8,) * 4, decoder_block_out_channels=(8,) * 4,
                    num_encoder_blocks=(1,) * 4, num_decoder_blocks=(1,) * 4).save_pretrained(tmp_path / "taef1")  # fmt: skip
    with pytest.raises(StdtrtError, match="16-channel latents"):
        model.use_vae(str(tmp_path / "taef1"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(StdtrtError, match="no VAE there"):
        model.use_vae(str(tmp_path / "empty"))
    with pytest.raises(StdtrtError, match="hf download nobody/novae"):
        model.use_vae("nobody/novae")
    tiny_sd.unet.save_pretrained(tmp_path / "unet")  # a config.json, but not a VAE
    with pytest.raises(StdtrtError, match="not an AutoencoderTiny or AutoencoderKL"):
        model.use_vae(str(tmp_path / "unet"))


def test_a_tiny_vae_bundle_is_validated_recorded_and_kept(tmp_path, video):
    from stdtrt.bundle.manifest import read_bundle
    from stdtrt.runtime.stylize import stylize_video

    (tmp_path / "full").mkdir()
    (tmp_path / "tiny").mkdir()
    _, full = export_tiny(tmp_path / "full", "tiny-sd", 1.0, nfe=2)
    cfg, result = export_tiny(tmp_path / "tiny", "tiny-sd", 1.0, nfe=2, vae="tiny-taesd")
    bundle = read_bundle(result.path)
    m = bundle.manifest
    assert m.vae["spec"] == "tiny-taesd" and len(m.vae["hash"]) == 64
    assert m.key != read_bundle(full.path).key  # the VAE is in the cache key
    assert all(r["ok"] for r in m.validation["rows"]) and len(m.validation["rows"]) == 5
    sizes = {g: m.files[f"{g}.onnx"]["bytes"] for g in ("vae_encoder", "vae_decoder")}
    full_sizes = {g: read_bundle(full.path).manifest.files[f"{g}.onnx"]["bytes"] for g in sizes}
    assert all(sizes[g] < full_sizes[g] for g in sizes)  # the tiny graphs really are the tiny VAE
    out = tmp_path / "out.mp4"
    for backend in ("onnxruntime", "torch"):  # the torch backend rebuilds the same tiny VAE
        result = stylize_video(
            StylizeConfig(bundle=str(bundle.path), backend=backend), video, out, progress=False
        )
        assert result.frames == 8
    with pytest.raises(StdtrtError, match="exported for vae 'tiny-taesd', not 'full'"):
        stylize_video(StylizeConfig(bundle=str(bundle.path), vae="full", explicit=("vae",)), video, out)


def test_stylize_with_the_tiny_vae_runs_both_torch_paths():
    from stdtrt.io.samples import sample_frames
    from stdtrt.runtime.stylize import load_runner

    frame = next(sample_frames(1, 64, 64))
    outs = []
    for gamma in (0.0, 0.3):  # stream form, and the sequential student
        cfg = StylizeConfig(model="tiny-sd", vae="tiny-taesd", prompt="ink", width=64, height=64, gamma=gamma)
        runner = load_runner(cfg, 64, 64)
        outs.append(runner(frame))
    assert all(o.shape == (64, 64, 3) and o.dtype == np.uint8 for o in outs)
