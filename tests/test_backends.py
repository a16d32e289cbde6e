"""Backends behind one interface: picked once (auto says why it skipped each faster one), an explicit one
never falls back, a bundle for another model or a changed file is refused, and stylize-video/-image run
a bundle end to end with the same frames on every backend."""

import copy
import logging
import shutil

import numpy as np
import pytest
from conftest import copy_bundle, frames_of, make_video

from stdtrt.availability import is_tensorrt_available
from stdtrt.bundle import manifest as mf
from stdtrt.bundle.manifest import read_bundle
from stdtrt.config import StylizeConfig
from stdtrt.errors import StdtrtError
from stdtrt.export import tensorrt
from stdtrt.runtime.backends import load_backend
from stdtrt.runtime.backends.onnxruntime import OnnxRuntimeBackend, ort_providers, vae_is_small
from stdtrt.runtime.stylize import stylize_image, stylize_video

pytestmark = pytest.mark.usefixtures("one_cpu_thread")

NO_TRT = not is_tensorrt_available()[0]


def test_auto_picks_once_and_says_why_it_skipped(sd_bundle, caplog):
    if not NO_TRT:
        pytest.skip("TensorRT is usable here: auto picks it (tests/test_backends.py::test_tensorrt_*)")
    bundle = read_bundle(sd_bundle[1].path)
    with caplog.at_level(logging.INFO, logger="stdtrt"):
        backend = load_backend(bundle, "auto", "auto")
    assert backend.name == "onnxruntime" and backend.providers == ["CPUExecutionProvider"]
    assert backend.concurrent_stages  # on a CPU the three graphs overlap, each with half the cores
    text = caplog.text
    assert "skipped tensorrt" in text and "no TensorRT engines" in text and "using onnxruntime" in text


def test_onnxruntime_on_a_cpu_runs_a_small_vae_in_line_with_the_unet(sd_bundle):
    """Three concurrent graphs with half the cores each pay off when the VAE costs about what the UNet does;
    beside a UNet ten times its size (TAESD: 5 MB against SD 1.5's 3.4 GB), one graph at a time with every
    core is faster (README, "Benchmarks")."""
    import dataclasses

    bundle = read_bundle(sd_bundle[1].path)
    assert not vae_is_small(bundle)  # tiny-sd's VAE and UNet files are of a size
    m = copy.deepcopy(bundle.manifest)
    for name, entry in m.files.items():  # as if the UNet were SD 1.5's and the VAE graphs TAESD's
        entry["bytes"] = 3_400_000_000 if name == m.graphs["unet"]["onnx"] else 5_000_000
    small_vae = dataclasses.replace(bundle, manifest=m)
    assert vae_is_small(small_vae)
    assert not OnnxRuntimeBackend(small_vae, "cpu").concurrent_stages
    assert OnnxRuntimeBackend(bundle, "cpu").concurrent_stages


def test_an_explicit_backend_never_falls_back(sd_bundle):
    bundle = read_bundle(sd_bundle[1].path)
    with pytest.raises(StdtrtError, match="backend tensorrt cannot run .*(no TensorRT engines|CUDA)"):
        load_backend(bundle, "tensorrt", "auto")
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():  # else cuda is a fine ask
        with pytest.raises(StdtrtError, match="cuda requested but onnxruntime .* has no CUDA provider"):
            load_backend(bundle, "onnxruntime", "cuda")


def test_providers_asked_for(tmp_path):
    assert ort_providers("cpu", tmp_path) == (["CPUExecutionProvider"], [])
    providers, _ = ort_providers("auto", tmp_path)
    assert [p if isinstance(p, str) else p[0] for p in providers][-1] == "CPUExecutionProvider"


def test_torch_backend_refuses_a_bundle_of_another_model(sd_bundle, tmp_path):
    path = copy_bundle(sd_bundle, tmp_path)
    m = read_bundle(path).manifest
    m.model["hash"] = "0" * 64  # as if exported from another checkpoint under the same name
    mf.write_manifest(path, m)  # sealed, as an export would
    with pytest.raises(StdtrtError, match="is not the one bundle .* was exported with"):
        load_backend(read_bundle(path), "torch", "cpu")


def test_every_backend_gives_the_same_video(sd_bundle, tmp_path, caplog):
    src = make_video(tmp_path / "in.mp4", frames=5, size=(96, 64))
    outs = {}
    for backend in ("onnxruntime", "torch"):
        cfg = StylizeConfig(bundle=str(sd_bundle[1].path), backend=backend)
        with caplog.at_level(logging.WARNING, logger="stdtrt"):
            result = stylize_video(cfg, src, tmp_path / f"{backend}.mp4", progress=False)
        assert result.frames == 5 and result.audio == "copied" and backend in result.backend
        assert set(result.stages) >= {"video_decode", "vae_encode", "unet", "vae_decode", "video_encode"}
        outs[backend] = frames_of(result.output)
    assert caplog.text.count("fitted in whole, its aspect kept") == 2  # once per run, not per frame
    assert all(a.shape == (64, 96, 3) for a in outs["torch"])
    diffs = [np.abs(a.astype(int) - b.astype(int)).max() for a, b in zip(*outs.values(), strict=True)]
    assert max(diffs) <= 2  # codec and fp32 rounding only


def test_stylize_image_with_a_bundle(sd_bundle, tmp_path):
    from PIL import Image

    src = tmp_path / "in.png"
    Image.fromarray(next(iter(frames_of(make_video(tmp_path / "v.mp4", frames=1, audio=False))))).save(src)
    cfg = StylizeConfig(bundle=str(sd_bundle[1].path), backend="onnxruntime")
    a = np.asarray(Image.open(stylize_image(cfg, src, tmp_path / "a.png")))
    b = np.asarray(
        Image.open(stylize_image(StylizeConfig(**{**cfg.__dict__, "seed": 5}), src, tmp_path / "b.png"))
    )
    assert a.shape == (64, 96, 3) and not np.array_equal(a, b)


@pytest.mark.parametrize(
    "changes,match",
    [
        ({"nfe": 2}, "exported for nfe 4, not 2"),
        ({"model": "tiny-sdxl"}, "exported for model 'tiny-sd'"),
        ({"prompt": "ink"}, "exported for prompt 'an oil painting'"),
        ({"width": 128}, "exported for width 64"),
        ({"gamma": 0.3}, "gamma"),
        ({"frames_per_step": 2}, "exported for frames per step 1, not 2"),
    ],
)
def test_options_that_contradict_the_bundle_are_refused(changes, match, sd_bundle, video, tmp_path):
    cfg = StylizeConfig(**{"bundle": str(sd_bundle[1].path), **changes})
    with pytest.raises(StdtrtError, match=match):
        stylize_video(cfg, video, tmp_path / "out.mp4")
    assert not (tmp_path / "out.mp4").exists()


def test_an_option_set_to_its_default_still_counts_when_the_user_gave_it(sdxl_bundle, video, tmp_path):
    # the bundle bakes guidance 2.5; "--guidance 1" on the command line must be refused, not ignored
    cfg = StylizeConfig(bundle=str(sdxl_bundle[1].path), guidance=1.0, explicit=("guidance",))
    with pytest.raises(StdtrtError, match="exported for guidance 2.5, not 1.0"):
        stylize_video(cfg, video, tmp_path / "out.mp4")


def test_a_tampered_bundle_is_refused_before_any_output(sd_bundle, video, tmp_path):
    path = copy_bundle(sd_bundle, tmp_path)
    with open(path / "vae_decoder.onnx", "r+b") as f:
        f.seek(1000)
        f.write(b"\0\1\2\3")
    with pytest.raises(StdtrtError, match="vae_decoder.onnx does not match the sha256"):
        stylize_video(StylizeConfig(bundle=str(path)), video, tmp_path / "out.mp4")
    assert not (tmp_path / "out.mp4").exists()


def test_default_bundle_folder(sd_bundle, video, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StdtrtError, match="no default bundle ./stdtrt-engine.*stdtrt export.*--model"):
        stylize_video(StylizeConfig(), video, tmp_path / "out.mp4")
    with pytest.raises(StdtrtError, match="backend onnxruntime runs an exported bundle"):
        stylize_video(StylizeConfig(model="tiny-sd", backend="onnxruntime"), video, tmp_path / "out.mp4")
    shutil.copytree(sd_bundle[1].path, tmp_path / "stdtrt-engine")
    result = stylize_video(StylizeConfig(), video, tmp_path / "out.mp4", progress=False)
    assert result.frames == 8 and "onnxruntime" in result.backend


def test_a_corrupt_video_midway_leaves_no_output(sd_bundle, tmp_path):
    src = make_video(tmp_path / "in.mp4", frames=24, size=(96, 64), faststart=True)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(src.read_bytes()[: int(src.stat().st_size * 0.6)])
    with pytest.raises(StdtrtError, match="truncated|corrupt"):
        stylize_video(StylizeConfig(bundle=str(sd_bundle[1].path)), cut, tmp_path / "out.mp4", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.mp4", "in.mp4"]


# -- TensorRT: everything up to the point that needs CUDA ----------------------------------------------------
def test_tensorrt_decision_without_cuda_or_tensorrt():
    if not NO_TRT:
        pytest.skip("TensorRT and CUDA are usable here")
    assert tensorrt.decide(False) == (False, "TensorRT engines skipped (--no-tensorrt)")
    build, line = tensorrt.decide(None)
    assert not build and line.startswith("TensorRT engines skipped: ") and "\n" not in line
    with pytest.raises(StdtrtError, match="--tensorrt: cannot build engines here"):
        tensorrt.decide(True)


def test_tensorrt_build_specs(sd_bundle, tmp_path):
    graphs = read_bundle(sd_bundle[1].path).manifest.graphs
    specs = tensorrt.build_specs(tmp_path, graphs, 2.5, tmp_path / "timing.cache")
    assert [s.graph for s in specs] == ["vae_encoder", "unet", "vae_decoder"]
    assert all(
        s.workspace_bytes == int(2.5 * 2**30) and s.plan == tmp_path / f"{s.graph}.plan" for s in specs
    )
    assert specs[1].onnx == tmp_path / "unet.onnx" and specs[0].timing_cache.name == "timing.cache"


def test_tensorrt_backend_says_why_not(sd_bundle):
    from stdtrt.runtime.backends.tensorrt import tensorrt_unusable

    bundle = read_bundle(sd_bundle[1].path)
    assert "device cpu" in tensorrt_unusable(bundle, "cpu")
    assert "no TensorRT engines" in tensorrt_unusable(bundle, "auto")


# -- onnxruntime's providers, as onnxruntime-gpu would offer them (its Python API stands in for the GPU build) --
def test_the_gpu_asked_for_goes_to_every_provider_and_a_provider_that_cannot_load_is_said(
    monkeypatch, tmp_path
):
    import onnxruntime

    from stdtrt.runtime.backends import onnxruntime as ob

    gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: gpu)
    monkeypatch.setattr(ob, "tensorrt_provider_unusable", lambda: None)
    providers, notes = ort_providers("cuda:1", tmp_path)
    assert [p[0] if isinstance(p, tuple) else p for p in providers] == gpu and notes == []
    assert providers[0][1]["device_id"] == 1 and providers[1][1] == {"device_id": 1}
    assert not any("fp16" in k for k in providers[0][1])  # no weak-typing option
    providers, _ = ort_providers("cuda:1", tmp_path, stream=12345)  # torch's stream for the GPU providers
    assert all(
        p[1]["user_compute_stream"] == "12345" and p[1]["has_user_compute_stream"] == "1"
        for p in providers[:2]
    )
    monkeypatch.setattr(
        ob, "tensorrt_provider_unusable", lambda: "libnvinfer.so.10: cannot open shared object"
    )
    providers, notes = ort_providers("cuda:1", tmp_path)
    assert [p[0] if isinstance(p, tuple) else p for p in providers] == gpu[1:]
    assert notes == ["TensorrtExecutionProvider not used: libnvinfer.so.10: cannot open shared object"]


def test_a_provider_that_fails_or_falls_back_is_retried_with_the_options_kept(monkeypatch):
    """onnxruntime either raises for a provider that fails to start, or (older versions, or a provider
    whose library is missing) falls back by itself, printing a banner and dropping every option: both end
    in a session on the remaining providers with their options, and a note."""
    import onnxruntime

    from stdtrt.runtime.backends.onnxruntime import create_session

    made, state = [], {}

    class Session:  # onnxruntime's InferenceSession as a GPU build behaves
        def __init__(self, path, options, providers, enable_fallback=1):
            names = [p if isinstance(p, str) else p[0] for p in providers]
            made.append(providers)
            if names[0] == "TensorrtExecutionProvider" and state["mode"] == "raise":
                raise RuntimeError("TensorRT EP could not be created\nmore")
            if names[0] == "TensorrtExecutionProvider" and state["mode"] == "fallback":
                print("EP Error TensorRT EP could not be created when using ['TensorrtExecutionProvider']")
                names = ["CUDAExecutionProvider", "CPUExecutionProvider"]  # and every option dropped
            self.names = names

        def get_providers(self):
            return self.names

    monkeypatch.setattr(onnxruntime, "InferenceSession", Session)
    asked = [
        ("TensorrtExecutionProvider", {"device_id": 1}),
        ("CUDAExecutionProvider", {"device_id": 1}),
        "CPUExecutionProvider",
    ]
    for mode in ("raise", "fallback"):
        state["mode"] = mode
        made.clear()
        sess, notes = create_session("g.onnx", None, list(asked))
        assert sess.get_providers() == ["CUDAExecutionProvider", "CPUExecutionProvider"]
        assert made[-1] == asked[1:] and len(notes) == 1 and "TensorrtExecutionProvider" in notes[0]
        assert "could not be created" in notes[0]
