"""Small probes for the optional backends: each says whether it can run here, and if not, why."""

from __future__ import annotations

import importlib.util

from stdtrt.config import parse_device


def is_cuda_available() -> tuple[bool, str]:
    import torch

    if not torch.cuda.is_available():
        return False, f"no CUDA device visible to torch {torch.__version__}"
    return True, torch.cuda.get_device_name(0)


def is_onnxruntime_available() -> tuple[bool, str]:
    if importlib.util.find_spec("onnxruntime") is None:
        return False, "onnxruntime is not installed (pip install 'stdtrt[onnx]' or 'stdtrt[onnx-gpu]')"
    import onnxruntime as ort

    return True, f"onnxruntime {ort.__version__}, providers: {', '.join(ort.get_available_providers())}"


# The TensorRT majors stdtrt builds and runs engines with (strongly typed networks: 10.x and 11.x); the
# `tensorrt` extra in pyproject.toml names the same range (a test checks the two agree).
TENSORRT_MAJORS = (10, 11)


def tensorrt_version_problem(version: str) -> str | None:
    """Why this TensorRT version cannot be used (None when it can)."""
    try:
        major = int(version.split(".")[0])
    except ValueError:
        return f"cannot read the TensorRT version {version!r}"
    lo, hi = TENSORRT_MAJORS[0], TENSORRT_MAJORS[-1]
    if major < lo:
        return (
            f"TensorRT {version} is too old: stdtrt needs {lo}.x or {hi}.x (pip install 'stdtrt[tensorrt]')"
        )
    if major > hi:
        return f"TensorRT {version} is newer than the {lo}.x and {hi}.x stdtrt supports; pip install 'tensorrt<{hi + 1}'"
    return None


def is_tensorrt_available() -> tuple[bool, str]:
    if importlib.util.find_spec("tensorrt") is None:
        return False, "tensorrt is not installed (pip install 'stdtrt[tensorrt]' on a CUDA machine)"
    ok, why = is_cuda_available()
    if not ok:
        return False, f"TensorRT needs CUDA: {why}"
    try:
        import tensorrt as trt
    except Exception as exc:  # a broken install: missing libnvinfer, wrong CUDA
        return False, f"tensorrt failed to import: {str(exc).splitlines()[0][:200]}"
    problem = tensorrt_version_problem(trt.__version__)
    if problem:
        return False, problem
    return True, f"TensorRT {trt.__version__}"


def tensorrt_identity(device: str = "cuda") -> dict:
    """The TensorRT version and GPU (`cuda` or `cuda:N`) an engine is built for (a .plan runs only there)."""
    import tensorrt as trt
    import torch

    index = parse_device(device).gpu  # "auto", "cuda": GPU 0
    major, minor = torch.cuda.get_device_capability(index)
    gpu = torch.cuda.get_device_name(index)
    return {"version": trt.__version__, "gpu": gpu, "arch": f"sm_{major}{minor}"}
