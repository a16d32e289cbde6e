"""ControlNet in the stream (issue 24): the student with a ControlNet against diffusers' own ControlNet
pipelines, the stream form against the sequential student with each frame's own map, the maps (canny, depth,
a control video), the bundle on every backend, half precision, and one line for each bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import frames_of, make_video

from stdtrt import schedule
from stdtrt.config import ExportConfig, StylizeConfig
from stdtrt.errors import StdtrtError
from stdtrt.io.samples import sample_frames
from stdtrt.models.control_maps import ControlMaps, MapSpec, canny
from stdtrt.models.controlnet import Control, load_controlnet
from stdtrt.models.load import load_model
from stdtrt.runtime.student import Student

pytestmark = pytest.mark.usefixtures("one_cpu_thread")
W, H = 64, 48
PRESET = {"tiny-sd": "tiny-controlnet", "tiny-sdxl": "tiny-controlnet-xl"}


def _control(model, scale=0.8, spec=None):
    name = PRESET[model.name]
    return Control(load_controlnet(name, model), name, scale, spec or MapSpec("canny"), model.kind == "sdxl")


def _diffusers_latents(kind, x_start, plan, guidance, control_map):
    """diffusers' own ControlNet pipeline (TCD over the plan's timesteps, from the same x_start) on a freshly
    loaded model and ControlNet."""
    from diffusers import StableDiffusionControlNetPipeline, StableDiffusionXLControlNetPipeline, TCDScheduler
    from PIL import Image

    from stdtrt.models.conditioning import encode_prompt

    model = load_model(kind)
    components = dict(model.pipe.components)
    components["scheduler"] = TCDScheduler.from_config(model.pipe.scheduler.config)
    components["controlnet"] = load_controlnet(PRESET[kind], model)
    components["image_encoder"] = None
    if kind == "tiny-sd":
        components["feature_extractor"] = None
    cls = StableDiffusionControlNetPipeline if kind == "tiny-sd" else StableDiffusionXLControlNetPipeline
    pipe = cls(**components)
    pipe.set_progress_bar_config(disable=True)
    cond, uncond = encode_prompt(pipe, "an oil painting", 64, 64), encode_prompt(pipe, "", 64, 64)
    extra = (
        {}
        if kind == "tiny-sd"
        else {"pooled_prompt_embeds": cond.pooled, "negative_pooled_prompt_embeds": uncond.pooled}
    )
    out = pipe(image=Image.fromarray(control_map), latents=x_start, height=64, width=64, timesteps=list(plan.timesteps),
               prompt_embeds=cond.embeds, negative_prompt_embeds=uncond.embeds, guidance_scale=guidance, eta=0.0,
               output_type="latent", controlnet_conditioning_scale=0.8, **extra)  # fmt: skip
    return out.images


@pytest.mark.parametrize("kind", ["tiny-sd", "tiny-sdxl"])
@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_the_controlnet_student_equals_diffusers(kind, guidance):
    model = load_model(kind)
    plan = schedule.student_plan(model.alphas_cumprod(), 0.75, 4)
    student = Student(model, plan, "an oil painting", 64, 64, "", guidance, None, None, _control(model))
    control_map = canny(next(sample_frames(1, 64, 64)), 100, 200)
    z0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    noise = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(11))
    ours = student.sample(z0, noise, None, torch.from_numpy(control_map[None]))
    theirs = _diffusers_latents(
        kind, schedule.x_start(z0, noise, plan.a_start, plan.b_start), plan, guidance, control_map
    )
    assert (ours - theirs).abs().max() < 1e-4
    plain = Student(load_model(kind), plan, "an oil painting", 64, 64, "", guidance).sample(z0, noise)
    assert (ours - plain).abs().max() > 1e-2  # the ControlNet acts


def _stream_latents(backend, z0s, maps):
    from stdtrt.runtime.stream import StreamState

    noise = schedule.make_noise(backend.latent_shape, 0)
    state, out = StreamState(backend, lambda n: noise.expand(n, -1, -1, -1)), []
    for i, (z0, m) in enumerate(zip(z0s, maps, strict=True)):
        out += [lat for lat, _ in state.push(z0, [i], control=torch.from_numpy(m[None]))]
    return torch.cat(out + [lat for lat, _ in state.flush()]), noise


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.float16, 2e-2), (torch.bfloat16, 8e-2)])
def test_each_slot_gets_its_own_frames_map(dtype, tol):
    """In the stream batch every slot holds another frame: the stream form gives each frame what the
    sequential student gives it with that frame's own map (and in half precision close to float32's)."""
    from stdtrt.models.load import placement_for
    from stdtrt.runtime.backends.torch import TorchBackend
    from stdtrt.runtime.student import to_tensor

    model = load_model("tiny-sd")
    model.place(placement_for(torch.device("cpu"), dtype, model.kind, model.vae.config))
    plan = schedule.student_plan(model.alphas_cumprod(), 0.75, 4)
    control = _control(model, 1.0)
    control.place(model.device, dtype)
    frames = list(sample_frames(5, W, H))
    maps = [canny(f, 100, 200) for f in frames]
    student = Student(model, plan, "ink", W, H, "", 1.0, None, None, control)
    z0s = [student.encode(to_tensor(f[None], "cpu")) for f in frames]
    backend = TorchBackend.from_model(model, plan, "ink", "", 1.0, W, H, 1, None, None, control)
    stream, noise = _stream_latents(backend, z0s, maps)
    seq = torch.cat(
        [student.sample(z, noise, None, torch.from_numpy(m[None])) for z, m in zip(z0s, maps, strict=True)]
    )
    scale = max(1.0, float(seq.abs().max()))
    assert (stream - seq).abs().max() <= 1e-4 * scale  # the same module, the same maps per frame
    if dtype != torch.float32:  # and half precision near float32's
        ref_model = load_model("tiny-sd")
        ref_control = _control(ref_model, 1.0)
        ref = Student(ref_model, plan, "ink", W, H, "", 1.0, None, None, ref_control)
        full = torch.cat(
            [
                ref.sample(z.float(), noise, None, torch.from_numpy(m[None]))
                for z, m in zip(z0s, maps, strict=True)
            ]
        )
        err = (seq - full).abs().max() / max(1.0, float(full.abs().max()))
        assert torch.isfinite(seq).all() and 0 < err < tol, err


def test_canny_maps_are_edges_and_depth_maps_are_normalised():
    square = np.zeros((40, 48, 3), np.uint8)
    square[10:30, 12:36] = 255
    edges = canny(square, 100, 200)
    assert edges.shape == (40, 48, 3) and (edges[..., 0] == edges[..., 2]).all()
    ys, xs = np.nonzero(edges[..., 0])
    on_border = (np.isin(ys, [9, 10, 29, 30]) & (xs >= 11) & (xs <= 36)) | (
        np.isin(xs, [11, 12, 35, 36]) & (ys >= 9) & (ys <= 30)
    )
    assert len(ys) > 40 and on_border.all()  # edges on the square's border, nowhere else
    depth = ControlMaps(MapSpec("depth", depth_model="tiny-depth"), W, H)(next(sample_frames(1, W, H)))
    assert depth.shape == (H, W, 3) and depth.dtype == np.uint8 and depth.min() == 0 and depth.max() == 255


def test_a_control_video_gives_the_maps_frame_by_frame(tmp_path):
    maps_video = make_video(tmp_path / "maps.mp4", frames=3, size=(W, H), audio=False)
    maps = ControlMaps(MapSpec("video", video=str(maps_video)), W, H)
    expected = frames_of(maps_video)
    got = [maps(np.zeros((H, W, 3), np.uint8)) for _ in range(3)]
    assert all(np.array_equal(a, b) for a, b in zip(got, expected, strict=True))
    maps.finish()
    with pytest.raises(StdtrtError, match="fewer frames than the input"):
        maps(np.zeros((H, W, 3), np.uint8))


@pytest.fixture(scope="module")
def control_bundle(tmp_path_factory):
    from stdtrt.export.export import export_bundle

    out = tmp_path_factory.mktemp("cn") / "bundle"
    cfg = ExportConfig(model="tiny-sd", out=str(out), width=W, height=H, controlnet="canny",
                       controlnet_model="tiny-controlnet", control_scale=0.9, guidance=2.0, tensorrt=False)  # fmt: skip
    return export_bundle(cfg, progress=False)


def test_a_controlnet_bundle_runs_as_the_model_path_on_every_backend(control_bundle, tmp_path):
    from stdtrt.bundle.manifest import read_bundle
    from stdtrt.runtime.stylize import stylize_video

    bundle = read_bundle(control_bundle.path)
    control = bundle.manifest.control
    assert control["maps"] == {"kind": "canny", "low": 100, "high": 200} and control["scale"] == 0.9
    assert bundle.manifest.key_fields["control"]["hash"] == control["hash"]
    rows = {r["name"]: r["ok"] for r in bundle.manifest.validation["rows"]}
    assert rows["unet (control maps' shift)"] and rows["frames (stream vs sequential torch)"]
    src = make_video(tmp_path / "in.mp4", frames=6, size=(W, H), audio=False)
    outs = {}
    for name, cfg in {
        "onnxruntime": StylizeConfig(bundle=str(bundle.path), backend="onnxruntime"),
        "torch": StylizeConfig(bundle=str(bundle.path), backend="torch"),
        "model": StylizeConfig(model="tiny-sd", width=W, height=H, controlnet="canny", controlnet_model="tiny-controlnet",
                               control_scale=0.9, guidance=2.0),
        "without": StylizeConfig(model="tiny-sd", width=W, height=H, guidance=2.0),
    }.items():  # fmt: skip
        outs[name] = np.stack(
            frames_of(stylize_video(cfg, src, tmp_path / f"{name}.mp4", progress=False).output)
        )
    for name in ("torch", "model"):
        assert np.abs(outs["onnxruntime"].astype(int) - outs[name]).max() <= 2, name
    assert np.abs(outs["onnxruntime"].astype(int) - outs["without"]).max() > 8  # the ControlNet acts


@pytest.mark.parametrize(
    "changes,match",
    [
        ({"control_scale": 0.5}, "control scale 0.9, not 0.5"),
        ({"canny_high": 150}, "canny high 200, not 150"),
        ({"controlnet": "depth"}, "controlnet 'canny', not 'depth'"),
    ],
)
def test_a_controlnet_bundle_refuses_other_control_options(changes, match, control_bundle, tmp_path):
    from stdtrt.runtime.stylize import stylize_video

    src = make_video(tmp_path / "in.mp4", frames=2, size=(W, H), audio=False)
    with pytest.raises(StdtrtError, match=match):
        stylize_video(StylizeConfig(bundle=str(control_bundle.path), explicit=tuple(changes), **changes), src,
                      tmp_path / "o.mp4")  # fmt: skip


def test_stylize_image_with_edges(tmp_path):
    from PIL import Image

    from stdtrt.runtime.stylize import stylize_image

    Image.fromarray(next(sample_frames(1, W, H))).save(tmp_path / "in.png")
    common = dict(model="tiny-sd", width=W, height=H)
    out = stylize_image(StylizeConfig(**common, controlnet="canny", controlnet_model="tiny-controlnet"),
                        tmp_path / "in.png", tmp_path / "a.png")  # fmt: skip
    plain = stylize_image(StylizeConfig(**common), tmp_path / "in.png", tmp_path / "b.png")
    a, b = (np.asarray(Image.open(p)).astype(int) for p in (out, plain))
    assert a.shape == (H, W, 3) and np.abs(a - b).max() > 8


def test_bad_control_input_is_one_line(tmp_path):
    from stdtrt.runtime.stylize import load_runner, stylize_video

    sdxl_net = tmp_path / "sdxl-controlnet"
    load_controlnet("tiny-controlnet-xl", load_model("tiny-sdxl")).save_pretrained(sdxl_net)
    src = make_video(tmp_path / "in.mp4", frames=3, size=(W, H), audio=False)
    short = make_video(tmp_path / "short.mp4", frames=2, size=(W, H), audio=False)
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    cases = [
        (
            dict(controlnet=str(sdxl_net), control_video=str(src)),
            "is made for a UNet of cross attention dim 64; tiny-sd.s is 32",
        ),
        (
            dict(controlnet="tiny-controlnet", control_video=str(short)),
            "control video .*short.mp4 has 2 frames",
        ),
        (
            dict(controlnet="tiny-controlnet", control_video=str(tmp_path / "broken.mp4")),
            "not a readable video",
        ),
        (
            dict(controlnet="depth", controlnet_model="tiny-controlnet", depth_model="nobody/depth"),
            "hf download nobody/depth",
        ),
        (dict(controlnet="cany"), "ControlNet 'cany' is neither a folder nor a hub id"),
    ]
    for options, match in cases:
        with pytest.raises(StdtrtError, match=match):
            stylize_video(
                StylizeConfig(model="tiny-sd", width=W, height=H, **options), src, tmp_path / "o.mp4"
            )
    with pytest.raises(StdtrtError, match=r"--control-scale must be in \[0, 2\]"):
        StylizeConfig(model="tiny-sd", controlnet="canny", control_scale=2.5)
    with pytest.raises(StdtrtError, match="reads its maps from --control-video"):
        load_runner(
            StylizeConfig(model="tiny-sd", width=W, height=H, controlnet="tiny-controlnet"), W, H, image=True
        )
    with pytest.raises(StdtrtError, match="not with --motion-adapter"):
        StylizeConfig(model="tiny-sd", controlnet="canny", motion_adapter="tiny-motion")
    assert not Path(tmp_path / "o.mp4").exists()
