"""The torch backend: the bundle's fused model running the very modules the graphs were traced from.

On CUDA it is made fast the way StreamDiffusion's and stable-fast's users expect, each step chosen once at
load, said in the log, and each with a switch: channels_last memory format for the convolutions, SDPA
attention (diffusers' default processor), `torch.compile` of the three networks (off by default: minutes
at the first load), and CUDA graphs (static shapes: each network's launches are captured once and
replayed). The eager path is the reference the others are checked against.
"""

from __future__ import annotations

import logging

import torch

from stdtrt.bundle.manifest import Bundle
from stdtrt.bundle.model import load_bundle_control, load_bundle_style, load_fused_model
from stdtrt.bundle.networks import build_networks
from stdtrt.models.attention_cache import CacheSettings
from stdtrt.runtime.backends.base import Backend

log = logging.getLogger(__name__)


class CudaGraphed:
    """A network on static-shape inputs, captured as a CUDA graph and replayed: one launch per call, on
    the caller's current stream, no host synchronisation."""

    def __init__(self, fn, examples: tuple[torch.Tensor, ...], device: torch.device):
        self.device = device
        with torch.cuda.device(device):  # capture and replay on this GPU's streams (cuda:N)
            self.static_in = [torch.zeros_like(x) for x in examples]
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side), torch.inference_mode():
                for _ in range(3):  # warm-up outside the capture: cudnn/cublas plans, compile, allocations
                    fn(*self.static_in)
            torch.cuda.current_stream(device).wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, stream=side), torch.inference_mode():
                self.static_out = fn(*self.static_in)

    def __call__(self, *xs: torch.Tensor):
        with torch.cuda.device(self.device):
            for buf, x in zip(self.static_in, xs, strict=True):
                buf.copy_(x)
            self.graph.replay()
            # the caller owns what it gets: a copy on its stream (the next replay overwrites static_out)
            if isinstance(self.static_out, tuple):
                return tuple(t.clone() for t in self.static_out)
            return self.static_out.clone()


class TorchBackend(Backend):
    name = "torch"

    def __init__(
        self,
        networks,
        plan,
        width: int,
        height: int,
        latent_shape,
        placement,
        *,
        cuda_graphs: bool = True,
        compile: bool = False,
        channels_last: bool = True,
        compile_mode: str | None = None,
    ):
        """`compile_mode`: torch.compile's mode (None: its default; benchmarks/gpu_check.py compares
        "max-autotune-no-cudagraphs" against it before it is made the default)."""
        unet = networks.unet
        specs, outputs = unet.specs(latent_shape, width, height), unet.io()[1]
        super().__init__(plan, width, height, latent_shape, unet.batch, specs, outputs)
        self.networks, self.placement, self.device = networks, placement, placement.device
        self.concurrent_stages = self.device.type == "cuda"
        cuda = self.device.type == "cuda"
        self.speedups = []
        if cuda:  # static shapes: cudnn's autotuner picks each convolution's fastest kernel once, at warm-up
            torch.backends.cudnn.benchmark = True
            self.speedups.append("cudnn.benchmark")
        if channels_last and cuda:  # cudnn's NHWC convolutions; on the CPU it does not help
            for module in (networks.unet.unet, networks.encoder.vae):
                module.to(memory_format=torch.channels_last)
            self.speedups.append("channels_last")
        self.fns = {"encode": networks.encoder, "step": networks.unet, "decode": networks.decoder}
        if compile:
            self.fns = {k: torch.compile(f, dynamic=False, mode=compile_mode) for k, f in self.fns.items()}
            self.speedups.append(f"torch.compile ({compile_mode})" if compile_mode else "torch.compile")
        if cuda_graphs and cuda:
            examples = self.example_inputs()
            self.fns = {k: CudaGraphed(f, examples[k], self.device) for k, f in self.fns.items()}
            self.speedups.append("CUDA graphs")
        log.info("torch backend: %s", ", ".join(self.speedups) or "eager")

    @classmethod
    def from_model(
        cls, model, plan, prompt: str, negative_prompt: str, guidance: float, width: int, height: int,
        batch: int = 1, style=None, cache=None, control=None, **speed,
    ):  # fmt: skip
        """From a loaded model whose LoRA (if any) is already fused; B = `batch` frames per slot; `style`: a
        loaded models.style.Style; `cache`: attention cache settings (models.attention_cache.CacheSettings);
        `control`: a ControlNet (models.controlnet.Control). `speed`: cuda_graphs, compile, channels_last
        (see the class)."""

        nets = build_networks(
            model, plan, prompt, negative_prompt, guidance, width, height, batch, style, cache, control
        )
        return cls(nets, plan, width, height, model.latent_shape(width, height), model.placement, **speed)

    @classmethod
    def from_bundle(
        cls, bundle: Bundle, device: str = "auto", model=None, verify: bool = False, style_image=None, **speed
    ):
        """Rebuild the bundle's fused model from its model, VAE and LoRA (and its style image, at
        `style_image` or where it was at export), refusing any that changed since the export (`verify`:
        hash them all, not only those whose files changed)."""

        model = model or load_fused_model(bundle, device, full=verify)
        style = load_bundle_style(bundle, model, style_image)
        cache = (
            CacheSettings(**{k: bundle.cache[k] for k in ("frames", "interval", "fusion")})
            if bundle.cache
            else None
        )
        m = bundle.manifest
        return cls.from_model(
            model, bundle.plan(), m.prompt, m.negative_prompt, m.guidance, bundle.width,
            bundle.height, bundle.batch, style, cache, load_bundle_control(bundle, model), **speed,
        )  # fmt: skip

    @torch.inference_mode()
    def encode(self, frames):
        return self.fns["encode"](frames.to(self.device, torch.uint8))

    @torch.inference_mode()
    def step(self, *inputs):
        return self.fns["step"](
            *(x.to(self.device, dtype) for x, (_, _, dtype) in zip(inputs, self.step_specs, strict=True))
        )

    @torch.inference_mode()
    def decode(self, latents):
        return self.fns["decode"](latents.to(self.device, torch.float32))

    def describe(self) -> str:
        p = self.placement
        dtypes = p.precision if p.vae == p.unet else f"{p.precision}, VAE {p.as_dict()['vae']}"
        extra = f"; {', '.join(self.speedups)}" if self.speedups else ""
        return f"torch {torch.__version__} on {self.device} ({dtypes}{extra})"
