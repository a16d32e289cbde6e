"""The onnxruntime backend: the bundle's ONNX graphs with the TensorRT, CUDA or CPU execution provider."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from stdtrt.bundle.manifest import Bundle
from stdtrt.bundle.networks import GRAPHS
from stdtrt.errors import StdtrtError
from stdtrt.runtime.backends.base import Backend


def ort_providers(device: str, fp16: bool, cache_dir: Path) -> list:
    """The providers to ask for, best first: TensorRT EP, CUDA EP (unless device is cpu), then CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    providers: list = []
    if device != "cpu":
        index = int(device.split(":")[1]) if device.startswith("cuda:") else 0
        if "TensorrtExecutionProvider" in available:
            cache_dir.mkdir(parents=True, exist_ok=True)
            options = {
                "device_id": index,
                "trt_fp16_enable": fp16,
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(cache_dir),
                "trt_timing_cache_enable": True,
            }
            providers.append(("TensorrtExecutionProvider", options))
        if "CUDAExecutionProvider" in available:
            providers.append(("CUDAExecutionProvider", {"device_id": index}))
        if device.startswith("cuda") and not providers:
            raise StdtrtError(
                f"device {device} requested but onnxruntime {ort.__version__} has no CUDA provider "
                f"(available: {', '.join(available)}); install onnxruntime-gpu"
            )
    providers.append("CPUExecutionProvider")
    return providers


def session_options(threads: int | None = None):
    """CPU tuning measured on the SD-1.5-sized bundle (README, "Benchmarks"): all graph optimizations
    (the VAE runs 10-15% faster than with basic ones, the UNet the same), no spinning between calls,
    sequential execution inside a graph; `threads` intra-op threads (default: one per core)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = threads or torch.get_num_threads()
    so.log_severity_level = 3  # no per-node warnings (fp16 constant folding on CPU)
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, bundle: Bundle, device: str = "auto", threads: int | None = None):
        import onnxruntime as ort

        super().__init__(bundle.plan(), bundle.width, bundle.height, bundle.latent_shape)
        from stdtrt.config import cache_root

        cache = cache_root() / "ort-trt" / bundle.key[:16]
        cpu_only = ort_providers(device, False, cache) == ["CPUExecutionProvider"]  # fp16 changes no device
        if cpu_only and threads is None:
            # On a CPU the three graphs run concurrently (a stage each), each with half the cores: the VAE
            # pair and the UNet take about as long, and pipelining them beat one graph at a time with
            # every core (0.153 against 0.121 fps, SD-1.5-sized, 2 cores).
            threads = max(1, torch.get_num_threads() // 2)
        self.sessions, self.io = {}, {}
        for graph in GRAPHS:
            try:
                options = session_options(threads)
                # fp16 per graph: SDXL's VAE graphs stay fp32 in an fp16 bundle
                fp16 = bundle.manifest["graphs"][graph].get("precision") == "fp16"
                providers = ort_providers(device, fp16, cache)
                sess = ort.InferenceSession(str(bundle.graph_file(graph)), options, providers=providers)
            except Exception as exc:  # a graph this onnxruntime cannot load
                raise StdtrtError(
                    f"onnxruntime cannot load {bundle.graph_file(graph)}: {str(exc)[:300]}"
                ) from None
            on_gpu = sess.get_providers()[0] != "CPUExecutionProvider"
            if device.startswith("cuda") and not on_gpu:  # asked for the GPU: never run on the CPU quietly
                raise StdtrtError(
                    f"onnxruntime could not start a GPU provider for {graph} (got {sess.get_providers()}); "
                    f"check onnxruntime-gpu and CUDA, or run with --device cpu"
                )
            dev = (
                torch.device(device if device.startswith("cuda:") else "cuda")
                if on_gpu
                else torch.device("cpu")
            )
            spec = bundle.manifest["graphs"][graph]
            self.sessions[graph] = sess
            self.io[graph] = (spec["inputs"][0]["name"], spec["outputs"][0], dev)
        self.providers = self.sessions["unet"].get_providers()  # what the session really got
        self.device = self.io["unet"][2]
        self.concurrent_stages = self.device.type == "cuda" or cpu_only

    def _run(self, graph: str, x: torch.Tensor) -> torch.Tensor:
        in_name, out, dev = self.io[graph]
        x = x.to(dev, torch.float32).contiguous()
        y = torch.empty(out["shape"], dtype=torch.float32, device=dev)
        binding = self.sessions[graph].io_binding()
        index = dev.index or 0
        binding.bind_input(in_name, dev.type, index, np.float32, list(x.shape), x.data_ptr())
        binding.bind_output(out["name"], dev.type, index, np.float32, list(y.shape), y.data_ptr())
        if dev.type == "cuda":
            torch.cuda.current_stream(dev).synchronize()  # x is written before onnxruntime's stream reads it
        self.sessions[graph].run_with_iobinding(binding)
        binding.synchronize_outputs()
        return y.to(self.device)

    def encode(self, images):
        return self._run("vae_encoder", images)

    def step(self, slots):
        return self._run("unet", slots)

    def decode(self, latents):
        return self._run("vae_decoder", latents)

    def describe(self) -> str:
        import onnxruntime as ort

        return f"onnxruntime {ort.__version__} with {', '.join(self.providers)}"
