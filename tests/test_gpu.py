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
    assert graphed.speedups == ["cudnn.benchmark", "CUDA graphs"] and torch.backends.cudnn.benchmark
    for name, args in calls.items():
        ours = _first(getattr(graphed, name)(*args))
        assert torch.equal(ours, ref[name]), name
        again = _first(getattr(graphed, name)(*(a // 2 if a.dtype == torch.uint8 else a * 0.5 for a in args)))
        assert not torch.equal(again, ours) and again.data_ptr() != ours.data_ptr(), name
    fast = build()
    assert fast.speedups == ["cudnn.benchmark", "channels_last", "CUDA graphs"]
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
    rows = bundle.manifest.validation["rows"]
    assert "tensorrt" in {r["backend"] for r in rows} and all(r["ok"] for r in rows)
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


def _tiny_backend(**speed):
    from stdtrt import schedule
    from stdtrt.models.load import load_model
    from stdtrt.runtime.backends.torch import TorchBackend

    model = load_model("tiny-sd", device="cuda", precision="fp16")
    plan = schedule.student_plan(model.alphas_cumprod(), 0.75, 4)
    return TorchBackend.from_model(model, plan, "ink", "", 1.0, 64, 64, **speed)


def test_the_three_cuda_lanes_give_the_single_thread_frames_and_time_them_by_events():
    """The real run_pipeline with a lane (a CUDA stream) per network stage, against the same stages
    composed in one thread: the same frames in order; the stages' times come from CUDA events."""
    import numpy as np

    from stdtrt.runtime.pipeline import StageTimes, compose, run_pipeline
    from stdtrt.runtime.stream import StreamRunner

    backend = _tiny_backend()
    g = np.random.default_rng(0)
    items = [(g.integers(0, 256, (64, 64, 3), dtype=np.uint8), i) for i in range(12)]
    single = list(compose([StreamRunner(backend, seed=1).encode, StreamRunner(backend, seed=1).unet,
                           StreamRunner(backend, seed=1).decode])(iter(items)))  # fmt: skip
    times = StageTimes()
    runner = StreamRunner(backend, seed=1, times=times)
    assert len(runner.stages()) == 3  # one thread and one CUDA stream per network
    lanes = []
    run_pipeline(iter(items), runner.stages(), lanes.append, queue_size=2)
    assert [t for _, t in lanes] == list(range(12)) == [t for _, t in single]
    assert all(np.array_equal(a, b) for (a, _), (b, _) in zip(lanes, single, strict=True))
    assert {times.clock[s] for s in ("vae_encode", "unet", "vae_decode")} == {"cuda events"}
    assert all(ms > 0 for ms in times.ms_per_call().values())


def test_fresh_noise_on_the_gpu_is_the_cpu_s_numbers():
    from stdtrt.runtime.student import VideoNoise

    gpu, cpu = VideoNoise((4, 8, 8), 3, fresh=True, device="cuda"), VideoNoise((4, 8, 8), 3, fresh=True)
    for n in (1, 2, 1):
        assert torch.equal(gpu.take(n).cpu(), cpu.take(n))


def test_an_export_on_the_gpu_validates_there(tmp_path):
    """The reference in float32 on the GPU with TF32 off; the GPU backends' rows and no CPU row where one
    of them is installed."""
    from conftest import export_tiny

    from stdtrt.bundle.manifest import read_bundle
    from stdtrt.export.validate import ort_has_cuda

    trt = is_tensorrt_available()[0]
    if not (trt or ort_has_cuda()):
        pytest.skip(
            "neither onnxruntime-gpu nor TensorRT is installed: the CPU rows validate (tested on the CPU)"
        )
    _, result = export_tiny(tmp_path, "tiny-sd", 1.0, tensorrt=trt, precision="auto", device="cuda")
    m = read_bundle(result.path).manifest
    assert m.precision == "fp16" and "on cuda:0 (TF32 off)" in m.validation["reference"]
    backends = {r["backend"] for r in m.validation["rows"]}
    assert "onnxruntime CPU" not in backends and backends <= {"onnxruntime CUDA", "tensorrt"}


def test_onnxruntime_cuda_computes_on_torch_s_streams_and_gives_the_cpu_s_frames(sd_bundle):
    """Each graph's session takes a torch stream of its own (no host wait per call: the caller's stream and
    it are ordered by events), and the three-lane pipeline gives the frames of onnxruntime on the CPU."""
    import numpy as np

    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime has no CUDA provider (install onnxruntime-gpu)")
    from stdtrt.bundle.manifest import read_bundle
    from stdtrt.runtime.backends.onnxruntime import OnnxRuntimeBackend
    from stdtrt.runtime.pipeline import run_pipeline
    from stdtrt.runtime.stream import StreamRunner

    bundle = read_bundle(sd_bundle[1].path)
    gpu = OnnxRuntimeBackend(bundle, "cuda", providers=("CUDAExecutionProvider",))
    assert set(gpu.streams) == {"vae_encoder", "unet", "vae_decoder"}
    cpu = OnnxRuntimeBackend(bundle, "cpu")
    g = np.random.default_rng(0)
    items = [(g.integers(0, 256, (64, 64, 3), dtype=np.uint8), i) for i in range(8)]
    outs = {}
    for name, backend in (("gpu", gpu), ("cpu", cpu)):
        got = []
        run_pipeline(iter(items), StreamRunner(backend, seed=1).stages(), got.append, queue_size=2)
        outs[name] = got
    assert [t for _, t in outs["gpu"]] == list(range(8))
    assert (
        max(
            np.abs(a.astype(int) - b.astype(int)).max()
            for (a, _), (b, _) in zip(outs["gpu"], outs["cpu"], strict=True)
        )
        <= 2
    )
