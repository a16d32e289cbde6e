"""Built-in models: real diffusers/transformers classes built from config with a fixed seed, so a preset
is the same on every machine and needs no download.

- `tiny-sd`, `tiny-sdxl`: toy sizes (about 1M UNet parameters) that run every code path in seconds.
- `random-sd15`: the full SD 1.5 architecture (860M-parameter UNet, its VAE, a CLIP ViT-L-sized text
  encoder) with random weights, for timing and memory figures without the real checkpoint.

Their weights are random: outputs look like noise. The tokenizer is a byte-level CLIP BPE vocabulary with
no merges (one token per character), generated here.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

from stdtrt.config import cache_root

PRESETS = ("tiny-sd", "tiny-sdxl", "random-sd15")
OFFLINE_HINT = "`--model tiny-sd` works offline"  # said wherever a model cannot be found
SEED = 0
TEXT_HIDDEN = 32

# The SD 1.x / SDXL noise schedule (scaled-linear betas, epsilon prediction, T = 1000).
SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "timestep_spacing": "leading",
}


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte -> printable-character table (the GPT-2 scheme)."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def tokenizer_files() -> Path:
    """Write (once) the tiny vocabulary and an empty merge list; return their folder."""
    chars = list(_bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": i + len(chars) for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)

    folder = cache_root() / "tiny-tokenizer"
    vocab_text = json.dumps(vocab, ensure_ascii=False)
    vocab_file = folder / "vocab.json"
    if not vocab_file.exists() or vocab_file.read_text(encoding="utf-8") != vocab_text:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            (Path(tmp) / "vocab.json").write_text(vocab_text, encoding="utf-8")
            (Path(tmp) / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
            os.replace(Path(tmp) / "merges.txt", folder / "merges.txt")
            os.replace(Path(tmp) / "vocab.json", vocab_file)
    return folder


def _tokenizer():
    from transformers import CLIPTokenizer

    folder = tokenizer_files()
    return CLIPTokenizer(
        str(folder / "vocab.json"),
        str(folder / "merges.txt"),
        pad_token="<|endoftext|>",
        model_max_length=77,
    )


def _text_config(vocab_size: int, full: bool = False, **extra):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=768 if full else TEXT_HIDDEN,
        intermediate_size=3072 if full else 37,
        num_hidden_layers=12 if full else 2,
        num_attention_heads=12 if full else 4,
        max_position_embeddings=77,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
        **extra,
    )


def _vae(full: bool = False):
    from diffusers import AutoencoderKL

    torch.manual_seed(SEED)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        # four blocks: downsample by 8, like SD's VAE
        block_out_channels=(128, 256, 512, 512) if full else (16, 16, 32, 32),
        layers_per_block=2 if full else 1,
        latent_channels=4,
        norm_num_groups=32 if full else 8,
        sample_size=512 if full else 256,
        scaling_factor=0.18215,
    )


def _sd15_unet():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(SEED)
    return UNet2DConditionModel(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=768,
        attention_head_dim=8,
    )


def _unet(sdxl: bool):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(SEED)
    common = dict(
        sample_size=32,  # latent size: 256 px images
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        norm_num_groups=8,
        attention_head_dim=8,
    )
    if not sdxl:
        return UNet2DConditionModel(cross_attention_dim=TEXT_HIDDEN, **common)
    return UNet2DConditionModel(
        cross_attention_dim=2 * TEXT_HIDDEN,  # both text encoders' hidden states, concatenated
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + TEXT_HIDDEN,  # six time ids + pooled embedding
        **common,
    )


def build(name: str):
    """A diffusers pipeline (StableDiffusionPipeline or StableDiffusionXLPipeline) for a preset, float32.
    Its weights come from fixed seeds, drawn inside a fork of the global RNG: the caller's random state is
    left as it was (a run seeded with --seed before it loads a preset keeps that seed for its LoRA)."""
    with torch.random.fork_rng(devices=[]):
        return _build(name)


def _build(name: str):
    from diffusers import DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    tokenizer = _tokenizer()
    vocab_size = len(tokenizer)
    scheduler = DDIMScheduler.from_config(SCHEDULER_CONFIG)
    full = name == "random-sd15"
    torch.manual_seed(SEED)
    text_encoder = CLIPTextModel(_text_config(vocab_size, full=full)).eval()
    if name in ("tiny-sd", "random-sd15"):
        pipe = StableDiffusionPipeline(
            vae=_vae(full).eval(),
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=(_sd15_unet() if full else _unet(sdxl=False)).eval(),
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    else:
        torch.manual_seed(SEED + 1)
        text_encoder_2 = CLIPTextModelWithProjection(
            _text_config(vocab_size, projection_dim=TEXT_HIDDEN)
        ).eval()
        pipe = StableDiffusionXLPipeline(
            vae=_vae().eval(),
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=_tokenizer(),
            unet=_unet(sdxl=True).eval(),
            scheduler=scheduler,
            force_zeros_for_empty_prompt=False,
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe
