"""One interface, three backends: torch (the fused model: the reference), onnxruntime (TensorRT EP, CUDA
or CPU providers) and tensorrt (the bundle's .plan engines, preallocated device buffers, CUDA graphs).

A backend is picked once, when a bundle is loaded (`load_backend`): `auto` tries tensorrt, then
onnxruntime, then torch, and logs why each faster one was skipped; a backend named explicitly never falls
back. The frame loop only ever calls `encode`, `step` and `decode`: float32 tensors on `backend.device`,
owned by the caller (a backend never hands out a buffer it will overwrite).
"""

from __future__ import annotations

import abc
import logging
from pathlib import Path

import numpy as np
import torch

from stdtrt.errors import StdtrtError
from stdtrt.export.manifest import Bundle
from stdtrt.runtime.networks import GRAPHS

log = logging.getLogger(__name__)

ORDER = ("tensorrt", "onnxruntime", "torch")  # what `auto` tries, fastest first


class Backend(abc.ABC):
    """encode: images in [-1, 1] (1, 3, H, W) -> z0 (1, 4, h, w); step: slots (NFE, 4, h, w) -> slots one
    jump further (slot i at plan.timesteps[i]); decode: latents (1, 4, h, w) -> images in [-1, 1]."""

    name = "?"
    device = torch.device("cpu")
    # Whether VAE encode, UNet and VAE decode run in threads of their own (overlapping) or one after the
    # other in one thread. torch on a CPU: one thread (its intra-op thread pool is per process, and three
    # stages sharing it oversubscribe the cores).
    concurrent_stages = False

    def __init__(self, plan, width: int, height: int, latent_shape):
        self.plan, self.width, self.height = plan, width, height
        self.latent_shape = tuple(latent_shape)  # (4, h, w)

    @abc.abstractmethod
    def encode(self, images: torch.Tensor) -> torch.Tensor: ...

    @abc.abstractmethod
    def step(self, slots: torch.Tensor) -> torch.Tensor: ...

    @abc.abstractmethod
    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...

    def describe(self) -> str:
        return f"{self.name} on {self.device}"


# -- torch -----------------------------------------------------------------------------------------------
class TorchBackend(Backend):
    name = "torch"

    def __init__(self, networks, plan, width: int, height: int, latent_shape, device, dtype):
        super().__init__(plan, width, height, latent_shape)
        self.networks, self.device, self.dtype = networks, torch.device(device), dtype
        self.concurrent_stages = self.device.type == "cuda"

    @classmethod
    def from_model(
        cls, model, plan, prompt: str, negative_prompt: str, guidance: float, width: int, height: int
    ):
        """From a loaded model whose LoRA (if any) is already fused."""
        from stdtrt.runtime.networks import build_networks

        nets = build_networks(model, plan, prompt, negative_prompt, guidance, width, height)
        latent_shape = (4, height // model.vae_scale, width // model.vae_scale)
        return cls(nets, plan, width, height, latent_shape, model.device, model.dtype)

    @classmethod
    def from_bundle(cls, bundle: Bundle, device: str = "auto", model=None):
        """Rebuild the bundle's fused model from its model and LoRA, refusing any that hash differently."""
        from stdtrt.export.bundle import load_fused_model

        model = model or load_fused_model(bundle, device)
        m = bundle.manifest
        return cls.from_model(
            model,
            bundle.plan(),
            m["prompt"],
            m["negative_prompt"],
            m["guidance"],
            bundle.width,
            bundle.height,
        )

    @torch.inference_mode()
    def encode(self, images):
        return self.networks.encoder(images.to(self.device, self.dtype)).float()

    @torch.inference_mode()
    def step(self, slots):
        return self.networks.unet(slots.to(self.device, self.dtype)).float()

    @torch.inference_mode()
    def decode(self, latents):
        return self.networks.decoder(latents.to(self.device, self.dtype)).float()

    def describe(self) -> str:
        return f"torch {torch.__version__} on {self.device} ({str(self.dtype).replace('torch.', '')})"


# -- onnxruntime -----------------------------------------------------------------------------------------
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
        from stdtrt.presets import cache_root

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


# -- loading ---------------------------------------------------------------------------------------------
def _load_tensorrt(bundle: Bundle, device: str) -> Backend:
    from stdtrt.runtime.trt_engine import TensorRTBackend, tensorrt_unusable

    reason = tensorrt_unusable(bundle, device)
    if reason:
        raise StdtrtError(f"backend tensorrt cannot run {bundle.path}: {reason}")
    return TensorRTBackend(bundle, device)


def _load_onnxruntime(bundle: Bundle, device: str) -> Backend:
    from stdtrt.runtime.availability import is_onnxruntime_available

    ok, why = is_onnxruntime_available()
    if not ok:
        raise StdtrtError(f"backend onnxruntime cannot run {bundle.path}: {why}")
    return OnnxRuntimeBackend(bundle, device)


def load_backend(bundle: Bundle, name: str = "auto", device: str = "auto", model=None) -> Backend:
    """Pick and load a backend for a verified bundle (see the module doc). `model`: an already loaded and
    fused model for the torch backend (bench shares it with the diffusers baseline)."""
    loaders = {
        "tensorrt": _load_tensorrt,
        "onnxruntime": _load_onnxruntime,
        "torch": lambda b, d: TorchBackend.from_bundle(b, d, model=model),
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
