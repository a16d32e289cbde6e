"""The tensorrt backend: the bundle's .plan engines with preallocated device buffers, replayed as CUDA
graphs (shapes are static, so each engine's launch sequence is captured once at load)."""

from __future__ import annotations

import logging

import numpy as np
import torch

from stdtrt.bundle.networks import GRAPHS
from stdtrt.errors import StdtrtError
from stdtrt.runtime.backends.base import Backend

log = logging.getLogger(__name__)


def tensorrt_unusable(bundle, device: str) -> str | None:
    """Why the bundle's engines cannot run here (None when they can)."""
    from stdtrt.availability import is_tensorrt_available

    if device == "cpu":
        return "TensorRT needs CUDA and --device cpu was asked for"
    built = bundle.tensorrt
    if not built:
        return "the bundle has no TensorRT engines (run `stdtrt export --tensorrt` on this GPU machine)"
    ok, why = is_tensorrt_available()
    if not ok:
        return why
    from stdtrt.availability import tensorrt_identity

    here = tensorrt_identity(device)
    if (built["version"], built["arch"]) != (here["version"], here["arch"]):
        return (
            f"its engines were built with TensorRT {built['version']} for {built['arch']} ({built['gpu']}); this "
            f"is TensorRT {here['version']} on {here['arch']} ({here['gpu']}): export again with --tensorrt here"
        )
    return None


class _Engine:
    """One deserialized engine: a context, a device buffer per input/output tensor, its own stream."""

    def __init__(self, trt, runtime, path, device: torch.device):
        try:
            engine = runtime.deserialize_cuda_engine(path.read_bytes())
        except Exception as exc:  # a corrupt or foreign plan: TensorRT raises or returns None
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise StdtrtError(
                f"TensorRT could not load {path}: {first}; export the bundle again here"
            ) from None
        if engine is None:
            raise StdtrtError(
                f"TensorRT could not load {path} (built by another TensorRT or GPU?); export the bundle again here"
            )
        self.engine, self.context = engine, engine.create_execution_context()
        self.buffers, self.inputs, self.outputs = {}, [], []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            dtype = torch.from_numpy(np.empty(0, dtype=trt.nptype(engine.get_tensor_dtype(name)))).dtype
            buf = torch.empty(tuple(engine.get_tensor_shape(name)), dtype=dtype, device=device)
            self.context.set_tensor_address(name, buf.data_ptr())
            self.buffers[name] = buf
            is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (self.inputs if is_input else self.outputs).append(name)
        self.stream = torch.cuda.Stream(device)
        self.graph = self._capture()

    def _enqueue(self) -> None:
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")

    def _capture(self):
        with torch.cuda.stream(self.stream):
            self._enqueue()  # the first launch does TensorRT's deferred set-up; it must not be captured
        self.stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=self.stream, capture_error_mode="thread_local"):
                self._enqueue()
        except Exception as exc:  # an engine with a non-capturable layer
            log.warning("CUDA graph capture failed (%s); launching the engine directly", exc)
            return None
        return graph

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        caller = torch.cuda.current_stream(x.device)
        with torch.cuda.stream(self.stream):
            self.stream.wait_stream(caller)
            self.buffers[self.inputs[0]].copy_(x)
            if self.graph is not None:
                self.graph.replay()
            else:
                self._enqueue()
            out = self.buffers[self.outputs[0]].float().clone()  # the caller owns what it gets
        self.stream.synchronize()
        return out


class TensorRTBackend(Backend):
    name = "tensorrt"
    concurrent_stages = True

    def __init__(self, bundle, device: str = "auto"):
        import tensorrt as trt

        super().__init__(bundle.plan(), bundle.width, bundle.height, bundle.latent_shape)
        self.device = torch.device(device if device.startswith("cuda") else "cuda")
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        with torch.cuda.device(self.device):
            self.engines = {
                g: _Engine(trt, runtime, bundle.graph_file(g, "plan"), self.device) for g in GRAPHS
            }
        self.cuda_graphs = all(e.graph is not None for e in self.engines.values())
        self.version = trt.__version__

    def encode(self, images):
        return self.engines["vae_encoder"](images.to(self.device))

    def step(self, slots):
        return self.engines["unet"](slots.to(self.device))

    def decode(self, latents):
        return self.engines["vae_decoder"](latents.to(self.device))

    def describe(self) -> str:
        graphs = "CUDA graphs" if self.cuda_graphs else "no CUDA graphs"
        return f"TensorRT {self.version} on {torch.cuda.get_device_name(self.device)} ({graphs})"
