"""`stdtrt info`: what is installed, which devices are visible, which backends can run and why not."""

from __future__ import annotations

import importlib.metadata
import platform

from stdtrt import __version__
from stdtrt.availability import is_cuda_available, is_onnxruntime_available, is_tensorrt_available


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def describe() -> str:
    import torch

    lines = [f"stdtrt {__version__} on Python {platform.python_version()} ({platform.machine()})"]
    for dist in (
        "torch",
        "diffusers",
        "transformers",
        "peft",
        "accelerate",
        "av",
        "onnx",
        "onnxruntime",
        "onnxruntime-gpu",
        "tensorrt",
        "polygraphy",
    ):
        lines.append(f"  {dist:<16} {_version(dist)}")
    cuda_ok, cuda_why = is_cuda_available()
    lines.append("devices:")
    lines.append(f"  cpu              {torch.get_num_threads()} threads")
    if cuda_ok:
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            lines.append(
                f"  cuda:{i}           {p.name}, {p.total_memory / 2**30:.0f} GiB, sm_{p.major}{p.minor}"
            )
    else:
        lines.append(f"  cuda             unavailable: {cuda_why}")
    lines.append("backends (auto tries them in this order):")
    for name, (ok, why) in (
        ("tensorrt", is_tensorrt_available()),
        ("onnxruntime", is_onnxruntime_available()),
        ("torch", (True, f"torch {torch.__version__}, {'cuda' if cuda_ok else 'cpu'}")),
    ):
        lines.append(f"  {name:<16} {'usable' if ok else 'unusable'}: {why}")
    return "\n".join(lines)
