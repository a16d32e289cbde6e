"""One interface, three backends: torch (the fused model: the reference), onnxruntime (TensorRT EP, CUDA
or CPU providers) and tensorrt (the bundle's .plan engines, preallocated device buffers, CUDA graphs).

A backend is picked once, when a bundle is loaded (`load_backend`): `auto` tries tensorrt, then
onnxruntime, then torch, and logs why each faster one was skipped; a backend named explicitly never falls
back. The frame loop only ever calls `encode`, `step` and `decode`: float32 tensors on `backend.device`,
owned by the caller (a backend never hands out a buffer it will overwrite).
"""

from __future__ import annotations

import logging

from stdtrt.availability import is_onnxruntime_available
from stdtrt.bundle.manifest import Bundle
from stdtrt.errors import StdtrtError
from stdtrt.runtime.backends.base import Backend
from stdtrt.runtime.backends.onnxruntime import OnnxRuntimeBackend
from stdtrt.runtime.backends.tensorrt import TensorRTBackend, tensorrt_unusable
from stdtrt.runtime.backends.torch import TorchBackend

log = logging.getLogger(__name__)

ORDER = ("tensorrt", "onnxruntime", "torch")  # what `auto` tries, fastest first


def _load_tensorrt(bundle: Bundle, device: str) -> Backend:
    reason = tensorrt_unusable(bundle, device)
    if reason:
        raise StdtrtError(f"backend tensorrt cannot run {bundle.path}: {reason}")
    return TensorRTBackend(bundle, device)


def _load_onnxruntime(bundle: Bundle, device: str) -> Backend:
    ok, why = is_onnxruntime_available()
    if not ok:
        raise StdtrtError(f"backend onnxruntime cannot run {bundle.path}: {why}")

    return OnnxRuntimeBackend(bundle, device)


def _load_torch(bundle: Bundle, device: str, model, speedups: dict, verify: bool, style_image) -> Backend:
    return TorchBackend.from_bundle(
        bundle, device, model=model, verify=verify, style_image=style_image, **speedups
    )


def load_backend(
    bundle: Bundle,
    name: str = "auto",
    device: str = "auto",
    model=None,
    torch_speedups: dict | None = None,
    verify: bool = False,
    style_image: str | None = None,
) -> Backend:
    """Pick and load a backend for a verified bundle (see the module doc). `model`: an already loaded and
    fused model for the torch backend (bench shares it with the diffusers baseline); `torch_speedups`: its
    switches (StylizeConfig.torch_speedups); `verify`: the torch backend hashes the model it rebuilds;
    `style_image`: where the bundle's style image is now (else the path recorded at export)."""
    loaders = {
        "tensorrt": _load_tensorrt,
        "onnxruntime": _load_onnxruntime,
        "torch": lambda b, d: _load_torch(b, d, model, torch_speedups or {}, verify, style_image),
    }
    if name != "auto":
        if name not in loaders:
            raise StdtrtError(f"unknown backend {name!r}; choose auto, {', '.join(ORDER)}")
        backend = loaders[name](bundle, device)
        log.info("backend: %s", backend.describe())
        return backend
    skipped = []
    for candidate in ORDER:
        try:
            backend = loaders[candidate](bundle, device)
        except StdtrtError as exc:
            skipped.append(
                f"{candidate}: {str(exc).removeprefix(f'backend {candidate} cannot run {bundle.path}: ')}"
            )
            log.info("backend auto: skipped %s", skipped[-1])
            continue
        log.info("backend auto: using %s", backend.describe())
        return backend
    raise StdtrtError(f"no backend can run bundle {bundle.path}: " + "; ".join(skipped))
