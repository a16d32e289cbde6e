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


def _calls(backend):
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (1, 64, 64, 3), generator=g, dtype=torch.uint8).cuda()
    slots, z = torch.randn(4, 4, 8, 8, generator=g).cuda(), torch.randn(1, 4, 8, 8, generator=g).cuda()
    return {"encode": (frames,), "step": (slots, z, z * 0.5), "decode": (z,)}


def _first(out):
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_cuda_graphs_equal_eager(precision):
    """Replaying the captured kernels gives the eager result exactly; channels_last (other convolution
    kernels) within half precision's rounding; a replay reads its new input and hands out a new tensor."""
    from stdtrt import schedule
    from stdtrt.models.load import load_model
    from stdtrt.runtime.backends.torch import TorchBackend

    model = load_model("tiny-sd", device="cuda", precision=precision)
    plan = schedule.student_plan(model.alphas_cumprod(), 0.75, 4)
    build = lambda **speed: TorchBackend.from_model(model, plan, "ink", "", 1.0, 64, 64, **speed)  # noqa: E731
    eager = build(cuda_graphs=False, channels_last=False)
    calls = _calls(eager)
    ref = {name: _first(getattr(eager, name)(*args)) for name, args in calls.items()}
    graphed = build(channels_last=False)  # before channels_last changes the model's memory format in place
    assert graphed.speedups == ["CUDA graphs"]
    for name, args in calls.items():
        ours = _first(getattr(graphed, name)(*args))
        assert torch.equal(ours, ref[name]), name
        again = _first(getattr(graphed, name)(*(a // 2 if a.dtype == torch.uint8 else a * 0.5 for a in args)))
        assert not torch.equal(again, ours) and again.data_ptr() != ours.data_ptr(), name
    fast = build()
    assert fast.speedups == ["channels_last", "CUDA graphs"]
    for name, args in calls.items():
        ours, want = _first(getattr(fast, name)(*args)).float(), ref[name].float()
        bound = 3.0 if ref[name].dtype == torch.uint8 else 3e-2 * max(1.0, float(want.abs().max()))
        assert (ours - want).abs().max() <= bound, name  # fp16 rounding; uint8 frames: a few levels


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
