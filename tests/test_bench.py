"""`stdtrt bench` on a tiny bundle: every usable backend is timed per stage and end to end, the skipped
ones say why, and diffusers' own img2img pipeline runs on the same frames in the same run."""

import json

import pytest

from stdtrt.config import BenchConfig
from stdtrt.eval.bench import STAGES, run_bench

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


def test_bench_times_backends_and_the_diffusers_baseline(sd_bundle, tmp_path):
    cfg = BenchConfig(
        bundle=str(sd_bundle[1].path), frames=3, backends=("tensorrt", "onnxruntime", "torch"),
        plot=str(tmp_path / "bench.png"), json=str(tmp_path / "bench.json"),
    )  # fmt: skip
    result = run_bench(cfg)
    names = [r.name for r in result.runs]
    assert names == ["onnxruntime", "torch"] or names == ["tensorrt", "onnxruntime", "torch"]
    if "tensorrt" not in names:
        assert "TensorRT" in result.skipped["tensorrt"] or "CUDA" in result.skipped["tensorrt"]
    for run in result.runs:
        assert all(run.stages_ms[s] > 0 for s in STAGES)
        assert run.network_ms == sum(run.stages_ms[s] for s in ("vae_encode", "unet", "vae_decode"))
        assert run.steady_fps > 0 and run.fps > 0 and result.ratio(run) > 0
    assert result.baseline["fps"] > 0 and "TCDScheduler" in result.baseline["describe"]
    table = result.table()
    assert "onnxruntime" in table and "diffusers" in table and "vs diffusers" in table
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["setup"]["nfe"] == 4 and len(saved["runs"]) == len(names)
    assert (tmp_path / "bench.png").read_bytes()[:4] == b"\x89PNG"
