"""The torch backend: the bundle's fused model running the very modules the graphs were traced from."""

from __future__ import annotations

import torch

from stdtrt.bundle.manifest import Bundle
from stdtrt.runtime.backends.base import Backend


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
        from stdtrt.bundle.networks import build_networks

        nets = build_networks(model, plan, prompt, negative_prompt, guidance, width, height)
        latent_shape = (4, height // model.vae_scale, width // model.vae_scale)
        return cls(nets, plan, width, height, latent_shape, model.device, model.dtype)

    @classmethod
    def from_bundle(cls, bundle: Bundle, device: str = "auto", model=None):
        """Rebuild the bundle's fused model from its model and LoRA, refusing any that hash differently."""
        from stdtrt.bundle.model import load_fused_model

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
