"""The tensorrt backend: the bundle's .plan engines with preallocated device buffers, replayed as CUDA
graphs (shapes are static, so each engine's launch sequence is captured once at load)."""

from __future__ import annotations

import logging

import numpy as np
import torch

from stdtrt.availability import is_tensorrt_available, tensorrt_identity
from stdtrt.bundle.networks import GRAPHS
from stdtrt.config import parse_device
from stdtrt.errors import StdtrtError
from stdtrt.models.load import resolve_device
from stdtrt.runtime.backends.base import Backend, bundle_step_io

log = logging.getLogger(__name__)


def tensorrt_unusable(bundle, device: str) -> str | None:
    """Why the bundle's engines cannot run here (None when they can)."""

    if parse_device(device).kind == "cpu":
        return "TensorRT needs CUDA and --device cpu was asked for"
    built = bundle.tensorrt
    if not built:
        return "the bundle has no TensorRT engines (run `stdtrt export --tensorrt` on this GPU machine)"
    ok, why = is_tensorrt_available()
    if not ok:
        return why

    here = tensorrt_identity(device)
    if (built["version"], built["arch"]) != (here["version"], here["arch"]):
        return (
            f"its engines were built with TensorRT {built['version']} for {built['arch']} ({built['gpu']}); this "
            f"is TensorRT {here['version']} on {here['arch']} ({here['gpu']}): export again with --tensorrt here"
        )
    return None


class _Engine:
    """One deserialized engine: a context and a device buffer per input/output tensor, replayed as a CUDA
    graph on the caller's current stream (no stream of its own, no host synchronisation)."""

    def __init__(self, trt, runtime, path, device: torch.device, inputs: list[str], outputs: list[str]):
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
        self.device, self.inputs, self.outputs = device, inputs, outputs  # in the manifest's order
        self.engine, self.context = engine, engine.create_execution_context()
        self.buffers = {}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            dtype = torch.from_numpy(np.empty(0, dtype=trt.nptype(engine.get_tensor_dtype(name)))).dtype
            buf = torch.empty(tuple(engine.get_tensor_shape(name)), dtype=dtype, device=device)
            self.context.set_tensor_address(name, buf.data_ptr())
            self.buffers[name] = buf
        if set(self.buffers) != {*inputs, *outputs}:
            raise StdtrtError(
                f"{path} has tensors {sorted(self.buffers)}, its manifest {[*inputs, *outputs]}"
            )
        self.graph = self._capture()

    def _enqueue(self, stream) -> None:
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")

    def _capture(self):
        side = torch.cuda.Stream(self.device)
        with torch.cuda.stream(side):
            self._enqueue(side)  # the first launch does TensorRT's deferred set-up; it must not be captured
        side.synchronize()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=side, capture_error_mode="thread_local"):
                self._enqueue(side)
        except Exception as exc:  # an engine with a non-capturable layer
            log.warning("CUDA graph capture failed (%s); launching the engine directly", exc)
            return None
        return graph

    def __call__(self, *xs: torch.Tensor):
        """Copy the inputs in, run, and hand out copies of the outputs, all queued on the current stream."""
        with torch.cuda.device(self.device):
            for name, x in zip(self.inputs, xs, strict=True):
                self.buffers[name].copy_(x)
            if self.graph is not None:
                self.graph.replay()
            else:
                self._enqueue(torch.cuda.current_stream(self.device))
            outs = tuple(self.buffers[name].clone() for name in self.outputs)  # the caller owns what it gets
        return outs[0] if len(outs) == 1 else outs


class TensorRTBackend(Backend):
    name = "tensorrt"
    concurrent_stages = True

    def __init__(self, bundle, device: str = "auto"):
        import tensorrt as trt

        super().__init__(bundle.plan(), bundle.width, bundle.height, bundle.latent_shape, bundle.batch,
                         *bundle_step_io(bundle))  # fmt: skip
        self.device = resolve_device(f"cuda:{parse_device(device).gpu}")
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        graphs = bundle.manifest.graphs
        with torch.cuda.device(self.device):
            self.engines = {
                g: _Engine(
                    trt,
                    runtime,
                    bundle.graph_file(g, "plan"),
                    self.device,
                    [i["name"] for i in graphs[g]["inputs"]],
                    [o["name"] for o in graphs[g]["outputs"]],
                )  # fmt: skip
                for g in GRAPHS
            }
        self.cuda_graphs = all(e.graph is not None for e in self.engines.values())
        self.version = trt.__version__

    def encode(self, frames):
        return self.engines["vae_encoder"](frames.to(self.device))

    def step(self, *inputs):
        return self.engines["unet"](*(x.to(self.device) for x in inputs))

    def decode(self, latents):
        return self.engines["vae_decoder"](latents.to(self.device))

    def describe(self) -> str:
        graphs = "CUDA graphs" if self.cuda_graphs else "no CUDA graphs"
        return f"TensorRT {self.version} on {torch.cuda.get_device_name(self.device)} ({graphs})"
