"""On a GPU only (skipped without CUDA, with the reason): the CUDA-graph torch backend against eager, the
TensorRT engines validated at export against torch, and onnxruntime's CUDA provider on the GPU asked for.
benchmarks/gpu_check.py times the same paths at SD 1.5's size."""

from __future__ import annotations

import pytest
import torch

from stdtrt.availability import is_tensorrt_available

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch sees none)"),
]


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_cuda_graphs_equal_eager(precision):
    from stdtrt import schedule
    from stdtrt.models.load import load_model
    from stdtrt.runtime.backends.torch import TorchBackend

    model = load_model("tiny-sd", device="cuda", precision=precision)
    plan = schedule.student_plan(model.alphas_cumprod(), 0.75, 4)
    eager = TorchBackend.from_model(
        model, plan, "ink", "", 1.0, 64, 64, cuda_graphs=False, channels_last=False
    )
    graphed = TorchBackend.from_model(model, plan, "ink", "", 1.0, 64, 64)
    assert graphed.speedups == ["channels_last", "CUDA graphs"]
    g = torch.Generator().manual_seed(0)
    image = (torch.rand(1, 3, 64, 64, generator=g) * 2 - 1).cuda()
    slots = torch.randn(4, 4, 8, 8, generator=g).cuda()
    for name, x in (("encode", image), ("step", slots), ("decode", eager.encode(image))):
        ref, ours = getattr(eager, name)(x), getattr(graphed, name)(x)
        again = getattr(graphed, name)(x * 0.5)  # a replay reads the new input, and returns a new tensor
        assert not torch.equal(again, ours)
        assert (ours - ref).abs().max() <= 3e-2 * max(1.0, float(ref.abs().max())), name


@pytest.mark.skipif(not is_tensorrt_available()[0], reason=f"needs TensorRT: {is_tensorrt_available()[1]}")
def test_tensorrt_engines_are_validated_at_export(tmp_path):
    from conftest import export_tiny

    from stdtrt.bundle.manifest import read_bundle
    from stdtrt.runtime.backends import load_backend

    _, result = export_tiny(tmp_path, "tiny-sd", 1.0, tensorrt=True, precision="fp16")
    bundle = read_bundle(result.path)
    rows = bundle.manifest["validation"]["rows"]
    assert {r["backend"] for r in rows} >= {"onnxruntime CPU", "tensorrt"} and all(r["ok"] for r in rows)
    assert bundle.tensorrt["strongly_typed"] and load_backend(bundle, "auto").name == "tensorrt"


def test_onnxruntime_cuda_keeps_the_gpu_asked_for(sd_bundle):
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime has no CUDA provider (install onnxruntime-gpu)")
    from stdtrt.bundle.manifest import read_bundle
    from stdtrt.runtime.backends.onnxruntime import OnnxRuntimeBackend

    index = torch.cuda.device_count() - 1
    backend = OnnxRuntimeBackend(read_bundle(sd_bundle[1].path), f"cuda:{index}")
    assert backend.device == torch.device("cuda", index)
    options = backend.sessions["unet"].get_provider_options()
    assert options["CUDAExecutionProvider"]["device_id"] == str(index)
