"""The one interface every backend implements (see runtime/backends/__init__.py for how one is picked).

All tensors are on `backend.device`; B = `backend.batch` frames per stream slot (the bundle's):
- `encode(frames)`: uint8 frames (B, H, W, 3) -> content latents z0 (B, 4, h, w), float32;
- `step(*inputs)`: the UNet graph's named inputs (`step_specs`: slots (NFE*B, 4, h, w), z0 and noise
  (B, 4, h, w), float32, then what cached attention and a ControlNet add) -> its named outputs
  (`step_outputs`: slots_next, done (B, 4, h, w), then the next state of those additions): the new frames
  enter, every slot makes one jump, the last slot leaves clean (bundle/networks.py, StreamUNet);
- `decode(latents)`: (B, 4, h, w) -> uint8 frames (B, H, W, 3).
An input X whose X_next is among the outputs is state the caller hands back at the next call
(runtime/stream.py StreamState). A backend runs on the caller's current CUDA stream, never synchronises the
host, and hands out tensors the caller owns (never a buffer it will overwrite).
"""

from __future__ import annotations

import abc

import torch

# a manifest's dtype names -> torch's
TORCH_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "uint8": torch.uint8,
    "int64": torch.int64,
}


def bundle_step_io(bundle) -> tuple[list, list[str]]:
    """(the UNet graph's input specs (name, shape, torch dtype), its output names), as the manifest says."""
    graph = bundle.manifest.graphs["unet"]
    specs = [(i["name"], tuple(i["shape"]), TORCH_DTYPES[i["dtype"]]) for i in graph["inputs"]]
    return specs, [o["name"] for o in graph["outputs"]]


class Backend(abc.ABC):
    name = "?"
    device = torch.device("cpu")
    # Whether VAE encode, UNet and VAE decode run in threads of their own (overlapping) or one after the
    # other in one thread. torch on a CPU: one thread (its intra-op thread pool is per process, and three
    # stages sharing it oversubscribe the cores).
    concurrent_stages = False

    def __init__(self, plan, width: int, height: int, latent_shape, batch: int, step_specs, step_outputs):
        self.plan, self.width, self.height, self.batch = plan, width, height, batch
        self.latent_shape = tuple(latent_shape)  # (4, h, w)
        self.step_specs = list(step_specs)  # (name, shape, torch dtype) of step's inputs, in order
        self.step_outputs = list(step_outputs)  # step's output names, in order

    @property
    def step_inputs(self) -> list[str]:
        return [name for name, _, _ in self.step_specs]

    def empty_state(self) -> dict[str, torch.Tensor]:
        """The stream's state before any frame: a zero tensor for every input that comes back as X_next."""
        return {
            name: torch.zeros(shape, dtype=dtype, device=self.device)
            for name, shape, dtype in self.step_specs
            if f"{name}_next" in self.step_outputs
        }

    @abc.abstractmethod
    def encode(self, frames: torch.Tensor) -> torch.Tensor: ...

    @abc.abstractmethod
    def step(self, *inputs: torch.Tensor) -> tuple: ...

    @abc.abstractmethod
    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...

    def describe(self) -> str:
        return f"{self.name} on {self.device}"

    def example_inputs(self) -> dict[str, tuple[torch.Tensor, ...]]:
        """Zero inputs of the right shapes and dtypes for each call (warm-up, capture, timing)."""
        b, dev = self.batch, self.device
        return {
            "encode": (torch.zeros((b, self.height, self.width, 3), dtype=torch.uint8, device=dev),),
            "step": tuple(torch.zeros(shape, dtype=dtype, device=dev) for _, shape, dtype in self.step_specs),
            "decode": (torch.zeros((b, *self.latent_shape), device=dev),),
        }
