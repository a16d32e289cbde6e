"""The onnxruntime backend: the bundle's ONNX graphs with the TensorRT, CUDA or CPU execution provider."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from stdtrt.bundle.manifest import Bundle
from stdtrt.bundle.networks import GRAPHS
from stdtrt.config import cache_root, parse_device
from stdtrt.errors import StdtrtError
from stdtrt.runtime.backends.base import TORCH_DTYPES, Backend, bundle_step_io

log = logging.getLogger(__name__)


GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
# a manifest's dtype names -> torch's and numpy's
NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16, "uint8": np.uint8, "int64": np.int64}


def tensorrt_provider_unusable() -> str | None:
    """Why onnxruntime's TensorRT provider cannot load here (None when it can), found by loading its
    library as onnxruntime would: every onnxruntime-gpu wheel checked (1.22 to 1.31) links TensorRT 10
    (libnvinfer.so.10), so with TensorRT 11 alone it fails, and onnxruntime then falls back on its own,
    dropping every provider option (a cuda:1 request runs on GPU 0). Asked first, so that the provider is
    never requested where it cannot load."""
    import ctypes

    import onnxruntime as ort

    lib = Path(ort.__file__).parent / "capi" / "libonnxruntime_providers_tensorrt.so"
    if not lib.is_file():
        return f"this onnxruntime has no TensorRT provider library ({lib.name})"
    try:
        ctypes.CDLL(str(lib))
    except OSError as exc:
        return f"onnxruntime's TensorRT provider cannot load here: {str(exc).splitlines()[0][:200]}"
    return None


def ort_providers(
    device: str, cache_dir: Path, allowed: tuple[str, ...] | None = None, stream: int | None = None
) -> tuple[list, list[str]]:
    """(the providers to ask for, best first, with their options; notes on the GPU providers left out).

    TensorRT EP (where it can load), CUDA EP, each on the GPU asked for (`cuda:N` -> device_id N), unless
    the device is the CPU; the CPU provider last (it runs what a GPU provider does not). No weak-typing
    option: the graphs carry their own precision. `allowed` limits the providers by name; `stream` (a CUDA
    stream's handle, torch's) is the one the GPU providers compute on."""
    import onnxruntime as ort

    available = [p for p in ort.get_available_providers() if allowed is None or p in allowed]
    providers: list = []
    notes: list[str] = []
    on_stream = {} if stream is None else {"has_user_compute_stream": "1", "user_compute_stream": str(stream)}
    asked = parse_device(device)
    if asked.kind != "cpu":
        index = asked.gpu
        if "TensorrtExecutionProvider" in available:
            reason = tensorrt_provider_unusable()
            if reason:
                notes.append(f"TensorrtExecutionProvider not used: {reason}")
            else:
                cache_dir.mkdir(parents=True, exist_ok=True)
                options = {
                    "device_id": index,
                    "trt_engine_cache_enable": True,
                    "trt_engine_cache_path": str(cache_dir),
                    "trt_timing_cache_enable": True,
                    **on_stream,
                }
                providers.append(("TensorrtExecutionProvider", options))
        if "CUDAExecutionProvider" in available:
            providers.append(("CUDAExecutionProvider", {"device_id": index, **on_stream}))
        if asked.kind == "cuda" and not providers:
            raise StdtrtError(
                f"device {device} requested but onnxruntime {ort.__version__} has no CUDA provider "
                f"(available: {', '.join(ort.get_available_providers())}); install onnxruntime-gpu"
            )
    providers.append("CPUExecutionProvider")
    return providers, notes


def _names(providers) -> list[str]:
    return [p if isinstance(p, str) else p[0] for p in providers]


def create_session(path: Path, options, providers: list) -> tuple[object, list[str]]:
    """An InferenceSession on exactly the providers asked for (with their options), or the same list
    without a GPU provider that failed to start, said in a note. onnxruntime's own fallback (which prints
    a banner to stdout and retries without any provider option) is switched off, or, in versions without
    the switch, caught and redone with the options kept."""
    import contextlib
    import io

    import onnxruntime as ort

    notes = []
    while True:
        printed = io.StringIO()
        try:
            with contextlib.redirect_stdout(printed):
                sess = ort.InferenceSession(str(path), options, providers=providers, enable_fallback=0)
        except Exception as exc:
            failed = _names(providers)[0]
            if failed not in GPU_PROVIDERS or len(providers) == 1:
                raise
            notes.append(f"{failed} failed to start: {str(exc).strip().splitlines()[0][:200]}")
            providers = providers[1:]
            continue
        got = sess.get_providers()
        missing = [p for p in _names(providers) if p not in got]
        if "EP Error" in printed.getvalue() or missing:  # fell back on its own, or dropped a provider
            first = missing[0] if missing else _names(providers)[0]
            reason = next(
                (ln for ln in printed.getvalue().splitlines() if "EP Error" in ln), "it did not load"
            )
            notes.append(f"{first} did not start ({reason.strip()[:200]})")
            if first in GPU_PROVIDERS and len(providers) > 1:
                providers = [p for p in providers if _names([p])[0] != first]
                continue
        return sess, notes


def vae_is_small(bundle: Bundle) -> bool:
    """Whether the VAE graphs cost little beside the UNet (TAESD: a few MB of weights against gigabytes):
    judged by the graphs' files, as recorded in the manifest."""
    files = bundle.manifest.files

    def size(graph: str) -> int:
        entry = bundle.manifest.graphs[graph]
        return sum(files.get(n, {}).get("bytes", 0) for n in (entry["onnx"], entry.get("external_data")) if n)

    return size("vae_encoder") + size("vae_decoder") < 0.1 * size("unet")


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

    def __init__(
        self,
        bundle: Bundle,
        device: str = "auto",
        threads: int | None = None,
        concurrent: bool | None = None,
        providers: tuple[str, ...] | None = None,
    ):
        """`concurrent`: the three graphs in threads of their own (the default; on a CPU each gets half the
        cores); `providers`: only these GPU providers (validation asks for CUDA alone)."""
        super().__init__(bundle.plan(), bundle.width, bundle.height, bundle.latent_shape, bundle.batch,
                         *bundle_step_io(bundle))  # fmt: skip

        cache = cache_root() / "ort-trt" / bundle.key[:16]
        allowed = None if providers is None else (*providers, "CPUExecutionProvider")
        asked, notes = ort_providers(device, cache, allowed)
        cpu_only = asked == ["CPUExecutionProvider"]
        if concurrent is None:
            concurrent = not cpu_only or not vae_is_small(bundle)
        if cpu_only and threads is None and concurrent:
            # On a CPU the three graphs run concurrently (a stage each), each with half the cores: the full
            # VAE pair and the UNet take about as long, and pipelining them beat one graph at a time with
            # every core (0.153 against 0.121 fps, SD-1.5-sized, 2 cores). With a tiny VAE the UNet is
            # nearly all of a frame: the graphs run one after the other, each with every core.
            threads = max(1, torch.get_num_threads() // 2)
        self.sessions, self.io, self.streams = {}, {}, {}
        gpu = not cpu_only and torch.cuda.is_available()
        for graph in GRAPHS:
            if gpu:  # each graph computes on a torch stream of its own, ordered against the caller's
                index = parse_device(device).gpu
                self.streams[graph] = torch.cuda.Stream(torch.device("cuda", index))
                asked, _ = ort_providers(device, cache, allowed, self.streams[graph].cuda_stream)
            try:
                sess, more = create_session(bundle.graph_file(graph), session_options(threads), asked)
            except Exception as exc:  # a graph this onnxruntime cannot load
                raise StdtrtError(
                    f"onnxruntime cannot load {bundle.graph_file(graph)}: {str(exc)[:300]}"
                ) from None
            notes += [n for n in more if n not in notes]
            on_gpu = sess.get_providers()[0] != "CPUExecutionProvider"
            if parse_device(device).kind == "cuda" and not on_gpu:  # asked for the GPU: never the CPU quietly
                raise StdtrtError(
                    f"onnxruntime could not start a GPU provider for {graph} ({'; '.join(notes) or sess.get_providers()}); "
                    f"check onnxruntime-gpu and CUDA, or run with --device cpu"
                )
            dev = torch.device("cuda", parse_device(device).gpu) if on_gpu else torch.device("cpu")
            spec = bundle.manifest.graphs[graph]
            options = sess.get_provider_options().get(sess.get_providers()[0], {})
            if str(options.get("has_user_compute_stream", "0")) != "1":
                self.streams.pop(graph, None)  # it did not take torch's stream: each call waits on the host
            self.sessions[graph] = sess
            self.io[graph] = (spec["inputs"], spec["outputs"], dev)
        self.providers = self.sessions["unet"].get_providers()  # what the session really got
        self.notes = notes
        for note in notes:
            log.warning("onnxruntime: %s", note)
        self.device = self.io["unet"][2]
        self.concurrent_stages = concurrent

    def _run(self, graph: str, *xs: torch.Tensor):
        """One graph call with IO binding on the tensors themselves (the manifest's names, shapes, dtypes)."""
        inputs, outputs, dev = self.io[graph]
        binding = self.sessions[graph].io_binding()
        index = dev.index or 0
        xs = [x.to(dev, TORCH_DTYPES[spec["dtype"]]).contiguous() for x, spec in zip(xs, inputs, strict=True)]
        for x, spec in zip(xs, inputs, strict=True):
            binding.bind_input(
                spec["name"], dev.type, index, NUMPY_DTYPES[spec["dtype"]], list(x.shape), x.data_ptr()
            )
        ys = [torch.empty(spec["shape"], dtype=TORCH_DTYPES[spec["dtype"]], device=dev) for spec in outputs]
        for y, spec in zip(ys, outputs, strict=True):
            binding.bind_output(
                spec["name"], dev.type, index, NUMPY_DTYPES[spec["dtype"]], list(y.shape), y.data_ptr()
            )
        stream = self.streams.get(graph) if dev.type == "cuda" else None
        if stream is not None:  # on torch's stream for this graph: ordered by events, no host wait
            import onnxruntime as ort

            caller = torch.cuda.current_stream(dev)
            stream.wait_stream(caller)
            run = ort.RunOptions()
            run.add_run_config_entry("disable_synchronize_execution_providers", "1")
            self.sessions[graph].run_with_iobinding(binding, run)
            caller.wait_stream(stream)
            for t in (*xs, *ys):
                t.record_stream(stream)  # the allocator keeps them until that stream is past them
        else:
            if dev.type == "cuda":
                # onnxruntime on a stream of its own: the inputs must be written first (one host wait)
                torch.cuda.current_stream(dev).synchronize()
            self.sessions[graph].run_with_iobinding(binding)
            binding.synchronize_outputs()
        ys = [y.to(self.device) for y in ys]
        return ys[0] if len(ys) == 1 else tuple(ys)

    def encode(self, frames):
        return self._run("vae_encoder", frames)

    def step(self, *inputs):
        return self._run("unet", *inputs)

    def decode(self, latents):
        return self._run("vae_decoder", latents)

    def describe(self) -> str:
        import onnxruntime as ort

        return f"onnxruntime {ort.__version__} with {', '.join(self.providers)}"
