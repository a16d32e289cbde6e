"""The asymmetric adversarial loss on DINOv2 features (std.md, "Asymmetric adversarial loss").

Fake: the student's output latent at level s, VAE-decoded with gradients. Real: the content latent
forward-noised to r = floor(U s) < s, decoded without gradients: real is always less noisy than fake.
The discriminator is a frozen DINOv2 ViT with small trainable heads on the patch tokens of a few blocks,
each conditioned (projection) on the teacher pipeline's own pooled text embedding.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from stdtrt import schedule
from stdtrt.errors import StdtrtError
from stdtrt.models.load import placement_for
from stdtrt.models.vae import load_vae, vae_decode

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DINO_PRESETS = {
    # tiny: for tests and tiny-sd runs; random-dinov2-small: ViT-S/14's shape with random weights, for timing
    "tiny-dinov2": dict(hidden_size=32, num_hidden_layers=12, num_attention_heads=2, mlp_ratio=2),
    "random-dinov2-small": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4),
}


# -- the backbone ------------------------------------------------------------------------------------------
def load_dinov2(name: str, device) -> nn.Module:
    """A frozen transformers Dinov2Model: a preset built from config with a fixed seed, a local folder, or a
    hub id from the local Hugging Face cache (never downloaded)."""
    from transformers import Dinov2Config, Dinov2Model

    if name in DINO_PRESETS:
        with torch.random.fork_rng(devices=[]):  # the run's own random state is left as it was
            torch.manual_seed(0)
            model = Dinov2Model(Dinov2Config(patch_size=14, image_size=224, **DINO_PRESETS[name]))
    else:
        try:
            model = Dinov2Model.from_pretrained(name, local_files_only=True)
        except Exception as exc:
            raise StdtrtError(
                f"DINOv2 model {name!r} is not available offline ({type(exc).__name__}); run `hf download {name}` "
                f"or pass a folder with --adv-model; `--adv-model tiny-dinov2` works offline (random weights)"
            ) from None
    return model.to(device).eval().requires_grad_(False)


# -- DiffAugment (colour, translation, cutout) on [-1, 1] images ---------------------------------------------
def _rand(n: int, generator: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, 1, 1, 1, generator=generator).to(device)


def diff_augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Differentiable augmentation applied alike to real and fake images.  # (B, 3, H, W)"""
    b, _, h, w = x.shape
    x = x + (_rand(b, generator, x.device) - 0.5)  # brightness
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (_rand(b, generator, x.device) * 2) + mean  # saturation
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * (_rand(b, generator, x.device) + 0.5) + mean  # contrast
    # translation by up to 1/8 of the size, zero-filled
    sy, sx = int(h * 0.125 + 0.5), int(w * 0.125 + 0.5)
    dy = torch.randint(-sy, sy + 1, (b,), generator=generator).tolist()
    dx = torch.randint(-sx, sx + 1, (b,), generator=generator).tolist()
    padded = F.pad(x, (sx, sx, sy, sy))
    x = torch.stack(
        [padded[i, :, sy + dy[i] : sy + dy[i] + h, sx + dx[i] : sx + dx[i] + w] for i in range(b)]
    )
    # cutout: a zeroed square of half the size
    ch, cw = int(h * 0.5 + 0.5), int(w * 0.5 + 0.5)
    cy = torch.randint(0, h + (1 - ch % 2), (b,), generator=generator).tolist()
    cx = torch.randint(0, w + (1 - cw % 2), (b,), generator=generator).tolist()
    mask = torch.ones(b, 1, h, w, device=x.device, dtype=x.dtype)
    for i in range(b):
        mask[i, :, max(0, cy[i] - ch // 2) : cy[i] + ch // 2, max(0, cx[i] - cw // 2) : cx[i] + cw // 2] = 0
    return x * mask


def to_dino_input(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """[-1, 1] images -> [0, 1], 224 x 224 (a random 224 crop with p = 0.5 when larger), ImageNet-normalised."""
    x = (x + 1) / 2
    h, w = x.shape[-2:]
    if min(h, w) > 224 and float(torch.rand(1, generator=generator)) < 0.5:
        top = int(torch.randint(0, h - 224 + 1, (1,), generator=generator))
        left = int(torch.randint(0, w - 224 + 1, (1,), generator=generator))
        x = x[..., top : top + 224, left : left + 224]
    else:
        x = F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False, antialias=min(h, w) > 224)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


# -- the heads ---------------------------------------------------------------------------------------------
class LocalBatchNorm(nn.Module):
    """Batch norm over virtual batches of 8 with no running statistics (as StyleGAN-T's heads)."""

    def __init__(self, channels: int, virtual_batch: int = 8, eps: float = 1e-5):
        super().__init__()
        self.virtual_batch, self.eps = virtual_batch, eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, N)
        b, c, n = x.shape
        groups = math.ceil(b / self.virtual_batch)
        if b % groups:
            groups = 1
        g = x.view(groups, -1, c, n)
        mean = g.mean(dim=(1, 3), keepdim=True)
        var = g.var(dim=(1, 3), keepdim=True, unbiased=False)
        g = (g - mean) / torch.sqrt(var + self.eps)
        return g.view(b, c, n) * self.weight.view(1, -1, 1) + self.bias.view(1, -1, 1)


def _sn_conv(c_in: int, c_out: int, k: int) -> nn.Module:
    conv = nn.Conv1d(c_in, c_out, k, padding=k // 2, padding_mode="circular" if k > 1 else "zeros")
    return nn.utils.parametrizations.spectral_norm(conv)


def _block(channels: int, k: int) -> nn.Module:
    return nn.Sequential(_sn_conv(channels, channels, k), LocalBatchNorm(channels), nn.LeakyReLU(0.2))


class Head(nn.Module):
    """Per-block head: SN-conv(1) -> BN -> LReLU -> residual [SN-conv(9, circular) -> BN -> LReLU] / sqrt 2
    -> SN-conv to 64 channels; projection conditioning sum(out * Linear(c)) / sqrt(64), per token."""

    CMAP = 64

    def __init__(self, channels: int, c_dim: int):
        super().__init__()
        self.first = _block(channels, 1)
        self.residual = _block(channels, 9)
        self.cls = _sn_conv(channels, self.CMAP, 1)
        self.cmapper = nn.Linear(c_dim, self.CMAP)

    def forward(self, tokens: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.first(tokens.transpose(1, 2))  # (B, C, N)
        h = (h + self.residual(h)) / math.sqrt(2)
        out = self.cls(h)  # (B, 64, N)
        cmap = self.cmapper(c).unsqueeze(-1)  # (B, 64, 1)
        return (out * cmap).sum(dim=1) / math.sqrt(self.CMAP)  # (B, N) logits


class Discriminator(nn.Module):
    """Frozen DINOv2 + trainable heads on the patch tokens (no CLS) of the chosen blocks."""

    def __init__(self, dino: nn.Module, blocks: tuple[int, ...], c_dim: int):
        super().__init__()
        depth = dino.config.num_hidden_layers
        if not blocks or max(blocks) >= depth or min(blocks) < 0:
            raise StdtrtError(
                f"adv blocks {blocks} must lie in [0, {depth - 1}] for this DINOv2 ({depth} blocks)"
            )
        self.dino, self.blocks = dino, tuple(blocks)
        self.heads = nn.ModuleList(Head(dino.config.hidden_size, c_dim) for _ in blocks)

    def forward(self, images: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """DINO-normalised images (B, 3, 224, 224), text embedding (B, c_dim) -> logits (B, sum N)."""
        hidden = self.dino(
            pixel_values=images, output_hidden_states=True
        ).hidden_states  # embeddings + blocks
        logits = [head(hidden[b + 1][:, 1:], c) for head, b in zip(self.heads, self.blocks, strict=True)]
        return torch.cat(logits, dim=1)

    def head_parameters(self):
        return self.heads.parameters()


# -- the loss ----------------------------------------------------------------------------------------------
def real_level(s: torch.Tensor, generator: torch.Generator, mode: str) -> torch.Tensor:
    """r = floor(U s) < s (asymmetric: real is less noisy), or r = s (symmetric ablation). (B,) timesteps."""
    if mode == "symmetric":
        return s.clone()
    u = torch.rand(s.shape, generator=generator).to(s.device)
    return (u * s).floor().long()


class AdversarialLoss:
    """Holds the discriminator, its optimiser and its own generator (so turning the branch on or off never
    changes the STD branch's random draws)."""

    def __init__(self, cfg, model, device, accelerator, pooled_text: torch.Tensor):
        self.cfg, self.model, self.device, self.acc = cfg, model, device, accelerator
        self.pooled_text = pooled_text.float()  # (P, c_dim): the teacher's pooled text embedding per prompt
        dino = load_dinov2(cfg.adv_model, device)
        with torch.random.fork_rng(devices=[]):  # the same initial heads on every process: seed, not rank
            torch.manual_seed(cfg.seed)
            self.disc = Discriminator(dino, tuple(cfg.adv_blocks), pooled_text.shape[1])
        self.disc.heads.to(device)
        self.optimizer = torch.optim.AdamW(self.disc.head_parameters(), lr=cfg.adv_lr, weight_decay=0.0)
        self.generator = torch.Generator().manual_seed(cfg.seed * 15485863 + accelerator.process_index)
        self._last_fake: torch.Tensor | None = None
        self.vae, self.vae_scaling = model.vae, model.scaling_factor
        if cfg.adv_vae != "full":  # e.g. TAESD: it decodes the model's scaled latents as they are
            vae, _ = load_vae(cfg.adv_vae, model.kind, model.name)
            dtype = placement_for(device, model.dtype, model.kind, vae.config).vae
            self.vae, self.vae_scaling = vae.to(device, dtype), float(vae.config.scaling_factor)

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        """The VAE's one decode call (with gradients when the latents have them), at --adv-decode-size."""
        size = self.cfg.adv_decode_size
        if size:
            side = size // self.model.vae_scale
            latents = F.interpolate(latents, size=(side, side), mode="bilinear", align_corners=False)
        return vae_decode(self.vae, latents, self.vae_scaling)

    def _subset(self, n: int) -> slice:
        return slice(0, min(n, self.cfg.adv_max_images) if self.cfg.adv_max_images else n)

    def generator_loss(self, pred, s, z0, prompt, abar) -> tuple[torch.Tensor, dict]:
        """L_G = -mean D(fake), fake = decode(pred) with gradients to the student."""
        keep = self._subset(pred.shape[0])
        fake = self._decode(pred[keep])
        self._last_fake = fake.detach()
        c = self.pooled_text[prompt[keep]]
        logits = self.disc(to_dino_input(diff_augment(fake, self.generator), self.generator), c)
        loss = -logits.mean()
        return loss, {"loss_g": loss.detach()}

    def discriminator_step(self, z0, s, prompt, abar) -> dict:
        """One optimiser step of the heads: mean(max(-1, -D(real))) + mean(max(-1, D(fake))) + gp."""
        keep = self._subset(z0.shape[0])
        z0, s, prompt = z0[keep], s[keep], prompt[keep]
        fake = self._last_fake
        with torch.no_grad():
            r = real_level(s, self.generator, self.cfg.adv_mode)
            a_r, b_r = schedule.coefficients_tensor(abar, r)
            noise = torch.randn(z0.shape, generator=self.generator).to(z0.device)
            real = self._decode(schedule.x_start(z0, noise, a_r, b_r))
        c = self.pooled_text[prompt]
        real_in = to_dino_input(diff_augment(real, self.generator), self.generator)
        fake_in = to_dino_input(diff_augment(fake, self.generator), self.generator)
        self.optimizer.zero_grad(set_to_none=True)
        d_real, d_fake = self.disc(real_in, c), self.disc(fake_in, c)
        loss = torch.clamp(-d_real, min=-1).mean() + torch.clamp(d_fake, min=-1).mean()
        gp = torch.zeros((), device=z0.device)
        if self.cfg.adv_gp_weight > 0:
            eps = torch.rand(real_in.shape[0], 1, 1, 1, generator=self.generator).to(z0.device)
            mixed = (eps * real_in + (1 - eps) * fake_in).requires_grad_(True)
            # the penalty differentiates twice: fused attention kernels have no double backward
            from torch.nn.attention import SDPBackend, sdpa_kernel

            with sdpa_kernel(SDPBackend.MATH):
                (grad,) = torch.autograd.grad(self.disc(mixed, c).sum(), mixed, create_graph=True)
            gp = ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()
        # its own backward: not the student's (fp16-scaled, accumulation-divided) accelerator.backward
        (loss + self.cfg.adv_gp_weight * gp).backward()
        if self.acc.num_processes > 1:  # the heads are not DDP-wrapped: average their gradients by hand
            for p in self.disc.head_parameters():
                if p.grad is not None:
                    p.grad = self.acc.reduce(p.grad, reduction="mean")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {
            "loss_d": loss.detach(),
            "gp": gp.detach(),
            "d_real": d_real.detach().mean(),
            "d_fake": d_fake.detach().mean(),
        }

    def state_dict(self) -> dict:
        return {
            "heads": self.disc.heads.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.disc.heads.load_state_dict(state["heads"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
