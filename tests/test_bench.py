"""`stdtrt bench` on tiny bundles: every usable backend is timed per stage and end to end, the skipped
ones say why, and diffusers' own img2img pipeline runs on the same frames, model and VAE in the same run;
several bundles (the full and the tiny VAE) are timed side by side."""

import json

import pytest
from conftest import export_tiny

from stdtrt.config import BenchConfig
from stdtrt.eval.bench import STAGES, run_bench

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


def test_bench_times_backends_and_the_diffusers_baseline(sd_bundle, tmp_path):
    _, tiny = export_tiny(tmp_path, "tiny-sd", 1.0, vae="tiny-taesd")
    cfg = BenchConfig(
        bundles=(str(sd_bundle[1].path), str(tiny.path)), frames=3, backends=("tensorrt", "onnxruntime", "torch"),
        plot=str(tmp_path / "bench.png"), json=str(tmp_path / "bench.json"),
    )  # fmt: skip
    result = run_bench(cfg)
    assert [b.setup["vae"] for b in result.bundles] == ["full", "tiny-taesd"]
    for one in result.bundles:
        names = [r.name for r in one.runs]
        assert names == ["onnxruntime", "torch"] or names == ["tensorrt", "onnxruntime", "torch"]
        if "tensorrt" not in names:
            assert "TensorRT" in one.skipped["tensorrt"] or "CUDA" in one.skipped["tensorrt"]
        for run in one.runs:
            assert all(run.stages_ms[s] > 0 for s in STAGES)
            assert run.network_ms == sum(run.stages_ms[s] for s in ("vae_encode", "unet", "vae_decode"))
            assert run.steady_fps > 0 and run.fps > 0 and one.ratio(run) > 0
            # what was timed is the stream form: every frame decoded, encoded by the VAE, decoded and
            # written once, one UNet call per frame plus NFE - 1 to flush the pipe; by the host's clock here
            nfe = one.setup["nfe"]
            assert run.calls == {"video_decode": 3, "vae_encode": 3, "unet": 3 + nfe - 1, "vae_decode": 3,
                                 "video_encode": 3}, run.calls  # fmt: skip
            assert set(run.clock.values()) == {"host"}
        assert one.baseline["fps"] > 0 and "TCDScheduler" in one.baseline["describe"]
        # diffusers ran the bundle's plan: NFE UNet calls per frame, one VAE encode and decode
        assert one.baseline["calls_per_frame"] == {"vae_encode": 1, "unet": one.setup["nfe"], "vae_decode": 1}
    table = result.table()
    assert (
        "onnxruntime" in table
        and "diffusers" in table
        and "vs diffusers" in table
        and "VAE tiny-taesd" in table
    )
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert [b["setup"]["nfe"] for b in saved["bundles"]] == [4, 4]
    assert (tmp_path / "bench.png").read_bytes()[:4] == b"\x89PNG"
