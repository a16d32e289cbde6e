"""Style from an image: the student with a style image equals diffusers' own img2img pipeline given the same
ip_adapter_image and scales (InstantStyle's block selection written in diffusers' own scale form), the
stream form equals the sequential student with it, and bad style input is one line each."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from stdtrt import schedule
from stdtrt.errors import StdtrtError
from stdtrt.io.samples import sample_frames
from stdtrt.models.load import load_model
from stdtrt.models.style import load_style, style_processors

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


@pytest.fixture(scope="module")
def style_png(tmp_path_factory):
    path = tmp_path_factory.mktemp("style") / "starry.png"
    Image.fromarray(next(iter(sample_frames(1, 40, 40)))).save(path)
    return path


def _diffusers_latents(z0, plan, seed, guidance, style_png, scale):
    """diffusers' StableDiffusionImg2ImgPipeline (TCD, the plan's timesteps) with its own IP-Adapter loader
    and `set_ip_adapter_scale`, on a freshly loaded tiny-sd."""
    from diffusers import StableDiffusionImg2ImgPipeline, TCDScheduler

    from stdtrt.models.conditioning import encode_prompt
    from stdtrt.models.style import LAYOUT, resolve_adapter

    model = load_model("tiny-sd")
    folder, (sub, weight, encoder) = resolve_adapter("tiny-ip-adapter", model)
    components = dict(model.pipe.components)
    components["scheduler"] = TCDScheduler.from_config(model.pipe.scheduler.config)
    components["image_encoder"] = components["feature_extractor"] = None
    pipe = StableDiffusionImg2ImgPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_ip_adapter(str(folder), subfolder=sub, weight_name=weight, image_encoder_folder=encoder)
    assert (sub, weight) == LAYOUT["sd"][:2]
    pipe.set_ip_adapter_scale(scale)
    cond, uncond = encode_prompt(pipe, "an oil painting", 64, 64), encode_prompt(pipe, "", 64, 64)
    out = pipe(
        image=z0, ip_adapter_image=Image.open(style_png).convert("RGB"), prompt_embeds=cond.embeds,
        negative_prompt_embeds=uncond.embeds, strength=1.0, timesteps=list(plan.timesteps),
        guidance_scale=guidance, eta=0.0, output_type="latent", generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip
    return out.images


@pytest.mark.parametrize("blocks", ["instantstyle", "all"])
@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_the_style_image_student_equals_diffusers_img2img(blocks, guidance, style_png):
    from stdtrt.runtime.student import Student

    model = load_model("tiny-sd")
    style = load_style(model, str(style_png), "tiny-ip-adapter", 0.8, blocks)
    plan = schedule.student_plan(model.alphas_cumprod(), 0.75, 4)
    student = Student(model, plan, "an oil painting", 64, 64, "", guidance, style)
    z0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(11)
    ours = student.sample(z0, torch.randn((1, 4, 8, 8), generator=g))
    # InstantStyle for SD 1.x in diffusers' own words: the whole first up block with attention (tiny-sd's 0)
    scale = {"up": {"block_0": 0.8}} if blocks == "instantstyle" else 0.8
    theirs = _diffusers_latents(z0, plan, 11, guidance, style_png, scale)
    assert (ours - theirs).abs().max().item() < 1e-4
    plain = Student(load_model("tiny-sd"), plan, "an oil painting", 64, 64, "", guidance)
    assert (
        plain.sample(z0, torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(11))) - ours
    ).abs().max() > 1e-3


def test_instantstyle_scales_only_the_style_block(style_png):
    from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0

    model = load_model("tiny-sd")
    load_style(model, str(style_png), "tiny-ip-adapter", 1.5, "instantstyle")
    scaled = {
        n
        for n, p in model.unet.attn_processors.items()
        if isinstance(p, IPAdapterAttnProcessor2_0) and p.scale[0]
    }
    # SD 1.x: the whole first up block with cross-attention (InstantStyle's infer_style_sd15.py, up_blocks.1
    # of SD 1.5; tiny-sd's is up block 0), both its attentions
    assert scaled == {f"up_blocks.0.attentions.{i}.transformer_blocks.0.attn2.processor" for i in (0, 1)}
    assert all(p.scale == [1.5] for n, p in model.unet.attn_processors.items() if n in scaled)
    assert len(style_processors(model.unet, "all")) == sum(
        isinstance(p, IPAdapterAttnProcessor2_0) for p in model.unet.attn_processors.values()
    )


def test_the_stream_form_equals_the_sequential_student_with_a_style(style_png):
    from stdtrt.runtime.backends.torch import TorchBackend
    from stdtrt.runtime.stream import StreamState
    from stdtrt.runtime.student import Student, to_tensor
    from stdtrt.schedule import make_noise

    model = load_model("tiny-sd")
    style = load_style(model, str(style_png), "tiny-ip-adapter", 1.0, "all")
    plan = schedule.student_plan(model.alphas_cumprod(), 0.75, 4)
    student = Student(model, plan, "an oil painting", 64, 64, "", 3.0, style)
    backend = TorchBackend.from_model(model, plan, "an oil painting", "", 3.0, 64, 64, 1, style)
    noise = make_noise(model.latent_shape(64, 64), seed=3)
    z0s = [student.encode(to_tensor(f[None], "cpu")) for f in sample_frames(3, 64, 64)]
    state = StreamState(backend, lambda n: noise.expand(n, -1, -1, -1))
    done = []
    for i, z0 in enumerate(z0s):
        done += state.push(z0, [i])
    done += state.flush()
    for z0, (ours, _) in zip(z0s, done, strict=True):
        ref = student.sample(z0, noise)
        assert (ours - ref).abs().max() < 1e-4 * max(1.0, float(ref.abs().max()))


def test_stylize_video_with_a_style_image(style_png, tmp_path):
    from conftest import frames_of, make_video

    from stdtrt.config import StylizeConfig
    from stdtrt.runtime.stylize import stylize_video

    src = make_video(tmp_path / "in.mp4", frames=3, size=(48, 40))
    outs = []
    for style in (None, str(style_png)):
        extra = {} if style is None else {"ip_adapter": "tiny-ip-adapter", "style_blocks": "all"}
        cfg = StylizeConfig(model="tiny-sd", style_image=style, **extra)
        result = stylize_video(cfg, src, tmp_path / f"out-{style is None}.mp4", progress=False)
        assert result.frames == 3
        outs.append(np.stack(frames_of(result.output)).astype(int))
    assert np.abs(outs[0] - outs[1]).max() > 0  # the style image changes the frames


@pytest.mark.parametrize(
    "what,match",
    [
        ("missing", "style image .* does not exist"),
        ("not-an-image", "is not a readable style image"),
        ("scale", r"--style-scale must be in \[0, 2\]"),
        ("other-family", "made for cross-attention of width 64; tiny-sd's is 32"),
        ("not-cached", "hf download nobody/ip-adapter --include .models/ip-adapter_sd15.safetensors"),
    ],
)
def test_bad_style_input_is_one_line(what, match, style_png, tmp_path):
    from stdtrt.models.style import _tiny_folder

    image, adapter, scale = str(style_png), "tiny-ip-adapter", 1.0
    if what == "missing":
        image = str(tmp_path / "nope.png")
    elif what == "not-an-image":
        (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
        image = str(tmp_path / "bad.png")
    elif what == "scale":
        scale = 2.5
    elif what == "other-family":
        adapter = str(_tiny_folder(64, load_model("tiny-sd").unet))  # keys for tiny-sd, width 64
    elif what == "not-cached":
        adapter = "nobody/ip-adapter"
    with pytest.raises(StdtrtError, match=match):
        load_style(load_model("tiny-sd"), image, adapter, scale, "instantstyle")


@pytest.fixture(scope="module")
def style_bundle(style_png, tmp_path_factory):
    """tiny-sd + LoRA with the style image baked in, guidance 2 (its zero image embedding in the other
    branch), validated against torch at export."""
    from conftest import export_tiny

    return export_tiny(tmp_path_factory.mktemp("style-bundle"), "tiny-sd", 2.0, style_image=str(style_png),
                       ip_adapter="tiny-ip-adapter", style_scale=1.2)  # fmt: skip


def test_export_bakes_the_style_image_and_the_backends_agree(style_bundle, style_png, tmp_path):
    from conftest import frames_of, make_video

    from stdtrt.bundle.manifest import read_bundle
    from stdtrt.config import StylizeConfig
    from stdtrt.runtime.stylize import stylize_video

    bundle = read_bundle(style_bundle[1].path)
    style = bundle.manifest.style
    assert style["scale"] == 1.2 and style["blocks"] == "instantstyle" and len(style["image_sha256"]) == 64
    assert bundle.manifest.key_fields["style"]["image_sha256"] == style["image_sha256"]
    assert all(r["ok"] for r in bundle.manifest.validation["rows"])  # the graphs equal the torch modules
    src = make_video(tmp_path / "in.mp4", frames=3, size=(64, 64))
    outs = {}
    for backend in ("onnxruntime", "torch"):
        cfg = StylizeConfig(bundle=str(bundle.path), backend=backend)
        outs[backend] = np.stack(
            frames_of(stylize_video(cfg, src, tmp_path / f"{backend}.mp4", progress=False).output)
        )
    assert np.abs(outs["onnxruntime"].astype(int) - outs["torch"].astype(int)).mean() < 1.0


def test_a_bundle_refuses_another_style(style_bundle, sd_bundle, style_png, tmp_path):
    from stdtrt.config import StylizeConfig
    from stdtrt.runtime.stylize import stylize_image

    other = tmp_path / "other.png"
    Image.fromarray(np.full((40, 40, 3), 200, np.uint8)).save(other)
    for bundle, image, match in [
        (style_bundle, other, "exported for style image .*starry.png"),
        (sd_bundle, style_png, "exported for style image None"),
        (style_bundle, tmp_path / "gone.png", "style image .*gone.png does not exist"),
    ]:
        cfg = StylizeConfig(bundle=str(bundle[1].path), style_image=str(image))
        with pytest.raises(StdtrtError, match=match):
            stylize_image(cfg, style_png, tmp_path / "out.png")
    with pytest.raises(StdtrtError, match="exported for style scale 1.2, not 0.5"):
        stylize_image(
            StylizeConfig(bundle=str(style_bundle[1].path), style_scale=0.5), style_png, tmp_path / "o.png"
        )


def test_style_options_without_a_style_image_are_one_line(tmp_path, style_png):
    from stdtrt.config import StylizeConfig
    from stdtrt.runtime.stylize import stylize_image

    with pytest.raises(StdtrtError, match="--style-scale needs --style-image"):
        stylize_image(StylizeConfig(model="tiny-sd", style_scale=0.5), style_png, tmp_path / "o.png")


def test_a_moved_style_image_is_found_where_it_is_now(style_bundle, style_png, tmp_path):
    """The torch backend rebuilds the style from the image: passed where it lies now, it is used (checked by
    its sha256), and without it the recorded path must still hold it."""
    import shutil

    from stdtrt.config import StylizeConfig
    from stdtrt.runtime.stylize import stylize_image

    moved = tmp_path / "moved.png"
    shutil.copy(style_png, moved)
    cfg = StylizeConfig(bundle=str(style_bundle[1].path), backend="torch", style_image=str(moved))
    assert stylize_image(cfg, style_png, tmp_path / "out.png").exists()


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_the_style_and_motion_paths_run_in_half_precision(precision, style_png):
    """What a GPU runs in half precision runs here in it too: the styled student and a motion clip, against
    the same in float32 (half-precision rounding only)."""
    from stdtrt.models.conditioning import Conditioning, predict_eps
    from stdtrt.runtime.student import Student

    z0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(6))
    x = torch.randn(1, 4, 3, 8, 8, generator=torch.Generator().manual_seed(7))
    cond = Conditioning(torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(8)))
    outs = {}
    for p in ("fp32", precision):
        model = load_model("tiny-sd", device="cpu", precision=p)
        style = load_style(model, str(style_png), "tiny-ip-adapter", 1.0, "all")
        plan = schedule.student_plan(model.alphas_cumprod(), 0.75, 4)
        styled = Student(model, plan, "an oil painting", 64, 64, "", 3.0, style).sample(z0, noise)
        motion = load_model("tiny-sd", device="cpu", precision=p, motion_adapter="tiny-motion")
        with torch.no_grad():
            clip = predict_eps(motion.unet, x, 500, cond)
        outs[p] = (styled, clip)
    for ref, half in zip(outs["fp32"], outs[precision], strict=True):
        assert half.dtype == torch.float32 and torch.isfinite(half).all()
        assert (half - ref).abs().max() < 0.05 * max(1.0, float(ref.abs().max()))


# -- distill --style-images ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def styles_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("styles")
    for i, frame in enumerate(sample_frames(3, 40, 40)):
        Image.fromarray(np.ascontiguousarray(frame[:, ::-1] if i % 2 else frame)).save(folder / f"s{i}.png")
    return folder


def _style_cfg(data_dir, out, styles_dir, **changes):
    from conftest import small

    base = dict(style_images=str(styles_dir), ip_adapter="tiny-ip-adapter", style_blocks="all")
    return small(data_dir, out, **{**base, **changes})


def test_distill_with_style_images_sees_them_and_resumes_exactly(data_dir, styles_dir, tmp_path):
    """At style scale 0 the IP-Adapter adds nothing: the run is the text-only run, loss for loss (so the
    style draws disturb nothing else); at scale 1 the losses move (teacher, student and target see the
    image); a resumed run equals an uninterrupted one; the LoRA says it was distilled with styles."""
    import shutil

    from conftest import losses, small

    from stdtrt.distill.trainer import distill
    from stdtrt.models.lora import read_metadata

    distill(small(data_dir, tmp_path / "text"), progress=False)
    distill(_style_cfg(data_dir, tmp_path / "zero", styles_dir, style_scale=0.0), progress=False)
    assert losses(tmp_path / "zero") == pytest.approx(losses(tmp_path / "text"), rel=1e-5, abs=1e-7)
    straight = tmp_path / "styled"
    distill(_style_cfg(data_dir, straight, styles_dir, checkpoint_every=2), progress=False)
    assert max(abs(a - b) for a, b in zip(losses(straight), losses(tmp_path / "text"), strict=True)) > 1e-4
    split = tmp_path / "split"
    shutil.copytree(straight, split)
    shutil.rmtree(split / "checkpoints" / "step-000004")
    distill(_style_cfg(data_dir, split, styles_dir, checkpoint_every=2), resume=True, progress=False)
    assert losses(split) == losses(straight)
    assert read_metadata(split / "lora.safetensors")["config"]["style_images"] == str(styles_dir)


def test_a_student_distilled_with_styles_says_so_without_one(data_dir, styles_dir, tmp_path, caplog):
    from stdtrt.config import StylizeConfig
    from stdtrt.distill.trainer import distill
    from stdtrt.runtime.stylize import load_student

    result = distill(_style_cfg(data_dir, tmp_path / "run", styles_dir, max_steps=1), progress=False)
    with caplog.at_level("WARNING"):
        load_student(StylizeConfig(model="tiny-sd", lora=str(result.lora)), 64, 64)
    assert "distilled with style images" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        load_student(StylizeConfig(model="tiny-sd", lora=str(result.lora), style_image=str(next(styles_dir.iterdir())),
                                   ip_adapter="tiny-ip-adapter"), 64, 64)  # fmt: skip
    assert "distilled with style images" not in caplog.text


@pytest.mark.parametrize(
    "what,match",
    [
        ("missing", "is not a folder"),
        ("empty", "holds no images"),
        ("broken", "is not a readable style image"),
        ("sdxl", "made for cross-attention of width|fits tiny-sd"),
    ],
)
def test_bad_style_images_are_one_line(what, match, data_dir, styles_dir, tmp_path):
    from stdtrt.distill.trainer import distill

    folder = tmp_path / "styles"
    changes = {}
    if what == "empty":
        folder.mkdir()
    elif what == "broken":
        folder.mkdir()
        (folder / "x.png").write_bytes(b"not a png")
    elif what == "sdxl":
        folder, changes = styles_dir, {"model": "tiny-sdxl"}
    with pytest.raises(StdtrtError, match=match):
        distill(_style_cfg(data_dir, tmp_path / "run", folder, **changes), progress=False)
    assert not (tmp_path / "run").exists()


def test_an_sdxl_adapter_in_instantstyle_s_vit_bigg_layout_loads(style_png, tmp_path):
    """h94/IP-Adapter's SDXL adapters: the ViT-H one (`ip-adapter_sdxl_vit-h` with models/image_encoder) and,
    when only it is there, InstantStyle's ViT-bigG one (`ip-adapter_sdxl` with sdxl_models/image_encoder);
    a random adapter of each layout for tiny-sdxl, written as the tiny preset is."""
    from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0

    from stdtrt.models.conditioning import encode_prompt, predict_eps
    from stdtrt.models.style import LAYOUT, SDXL_BIGG, _write_tiny, resolve_adapter

    model = load_model("tiny-sdxl")
    width = model.unet.config.cross_attention_dim
    _write_tiny(tmp_path / "h94", width, model.unet, *SDXL_BIGG)
    assert resolve_adapter(str(tmp_path / "h94"), model)[1] == SDXL_BIGG
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    cond = encode_prompt(model.pipe, "oil", 64, 64)
    with torch.no_grad():
        plain = predict_eps(model.unet, x, 500, cond)
        style = load_style(model, str(style_png), str(tmp_path / "h94"), 1.0, "instantstyle")
        styled = predict_eps(model.unet, x, 500, cond.with_image(style.embeds))
    assert (styled - plain).abs().max() > 1e-4
    scaled = {
        n
        for n, p in model.unet.attn_processors.items()
        if isinstance(p, IPAdapterAttnProcessor2_0) and p.scale[0]
    }
    assert scaled == {"up_blocks.0.attentions.1.transformer_blocks.0.attn2.processor"}  # InstantStyle's block
    _write_tiny(tmp_path / "both", width, model.unet, *SDXL_BIGG)
    _write_tiny(tmp_path / "vith", width, model.unet, *LAYOUT["sdxl"])
    (tmp_path / "both" / LAYOUT["sdxl"][0] / LAYOUT["sdxl"][1]).write_bytes(
        (tmp_path / "vith" / LAYOUT["sdxl"][0] / LAYOUT["sdxl"][1]).read_bytes()
    )
    import shutil

    shutil.copytree(tmp_path / "vith" / "models", tmp_path / "both" / "models")
    assert resolve_adapter(str(tmp_path / "both"), model)[1] == LAYOUT["sdxl"]  # ViT-H first
    (tmp_path / "empty").mkdir()
    with pytest.raises(StdtrtError, match="ip-adapter_sdxl_vit-h.safetensors with models/image_encoder/ or"):
        resolve_adapter(str(tmp_path / "empty"), model)


def test_a_run_from_before_the_style_options_resumes(data_dir, tmp_path):
    """A saved config without the options added since (here the style ones) counts them as defaults."""
    import json

    from conftest import losses, small

    from stdtrt.distill.trainer import distill

    out = tmp_path / "old"
    distill(small(data_dir, out, max_steps=2, checkpoint_every=1), progress=False)
    saved = json.loads((out / "config.json").read_text())
    for key in ("style_images", "style_scale", "ip_adapter", "style_blocks"):
        saved.pop(key)
    (out / "config.json").write_text(json.dumps(saved))
    distill(small(data_dir, out, max_steps=3, checkpoint_every=1), resume=True, progress=False)
    assert len(losses(out)) == 3


def test_the_bank_keeps_each_trajectory_s_style():
    from stdtrt.distill.bank import TrajectoryBank

    bank = TrajectoryBank(4, (4, 2, 2), 1.0, (1.0, 1.0), seed=0)
    x, z0 = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    fresh = torch.tensor([-1, -1, -1])
    bank.update(fresh, x, torch.tensor([30, 30, 30]), z0, torch.ones(3), torch.zeros(3, dtype=torch.long),
                torch.tensor([2, 0, 1]))  # fmt: skip
    slots = torch.tensor([0, 1, 2])
    assert bank.get(slots)["style"].tolist() == [2, 0, 1]
    bank.update(
        slots,
        x,
        torch.tensor([29, 29, 29]),
        z0,
        torch.ones(3),
        torch.zeros(3, dtype=torch.long),
        torch.tensor([0, 0, 0]),
    )  # a continued trajectory keeps the style it started with
    assert bank.get(slots)["style"].tolist() == [2, 0, 1]
    restored = TrajectoryBank(4, (4, 2, 2), 1.0, (1.0, 1.0), seed=0)
    restored.load_state_dict(bank.state_dict())
    assert restored.get(slots)["style"].tolist() == [2, 0, 1]


@pytest.mark.parametrize("precision,rtol", [("fp16", 0.02), ("bf16", 0.1)])
def test_distilling_with_style_images_under_mixed_precision_matches_fp32(
    precision, rtol, data_dir, styles_dir, tmp_path
):
    """What a GPU runs: the UNet, its IP-Adapter layers and the style embeddings in the half dtype, the
    LoRA in float32; two optimiser steps within the tolerances of the text-only mixed-precision test."""
    from conftest import assert_two_steps_match_fp32

    def check_half(run):
        assert run.styles.dtype == run.model.unet.conv_in.weight.dtype != torch.float32

    assert_two_steps_match_fp32(
        lambda mp: _style_cfg(data_dir, tmp_path / mp, styles_dir, mixed_precision=mp),
        precision,
        rtol,
        check_half,
    )
