"""One training process's state and its STD step (std.md, "One training step"): the models, the data,
the trajectory bank, the optimiser and the generators, built once; `optimise` is one optimiser step.

Per step and batch element: take a trajectory state from the bank (probability p_bank) or start one at
x_start; the student jumps from (x, t_n) to a random s in the window R; the teacher takes one guided DDIM
step to t_{n-1}; the stop-gradient student (or its EMA) jumps from there to s: that is the target; the
pseudo-Huber distance is the loss; the teacher's new state goes back into the bank.

What differs between the image and the video student (data, slot shape, content, noise, what the
discriminator sees) is the run's variant (distill/variants.py), chosen once.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
from pathlib import Path

import torch

from stdtrt import schedule
from stdtrt.config import DistillConfig
from stdtrt.distill import data as data_mod
from stdtrt.distill.adversarial import AdversarialLoss
from stdtrt.distill.bank import TrajectoryBank
from stdtrt.distill.losses import FusedSTDLoss
from stdtrt.distill.step import FORWARD_NOISED, Batch, StepPlan, std_step
from stdtrt.distill.teacher import Teacher
from stdtrt.distill.variants import variant_for
from stdtrt.errors import StdtrtError
from stdtrt.io.images import IMAGE_SUFFIXES
from stdtrt.models.conditioning import Conditioning, encode_prompt, pooled_text, predict_eps
from stdtrt.models.load import load_model
from stdtrt.models.lora import ADAPTER, add_lora
from stdtrt.models.style import attach_style, encode_styles

log = logging.getLogger(__name__)


class Run:
    """Everything one training process holds: models, data, bank, optimiser, generators."""

    def __init__(self, cfg: DistillConfig, accelerator, model=None):
        self.cfg, self.acc = cfg, accelerator
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        self.device = accelerator.device
        torch.manual_seed(cfg.seed + self.rank)

        # a LoadedModel may be passed in (the fidelity benchmark's own teacher); else cfg.model is loaded,
        # placed by the one precision rule: the frozen UNet and text encoders in the mixed-precision dtype,
        # the VAE likewise unless it is SDXL's upcast one (the trainable LoRA weights stay float32)
        precision = {"no": "fp32"}.get(accelerator.mixed_precision, accelerator.mixed_precision)
        self.model = model or load_model(
            cfg.model,
            device=self.device,
            precision=precision,
            training=True,
            motion_adapter=cfg.motion_adapter or None,
        )
        self.variant = variant_for(cfg)  # images, or clips (B, 4, F, h, w) through a motion UNet
        self.variant.check(self.model)
        self.weight_dtype = self.model.dtype
        self.abar = self.model.alphas_cumprod().to(self.device)
        self.T = self.abar.shape[0]
        self.n_eta = schedule.start_index(cfg.strength, cfg.teacher_steps)
        self.window_r = schedule.window(cfg.strength, cfg.rho, cfg.teacher_steps)

        self._load_data()
        self._load_styles()  # before the LoRA and the teacher copy: both see the IP-Adapter layers
        unet = self.model.unet
        teacher_unet = copy.deepcopy(unet) if cfg.teacher == "copy" else unet
        add_lora(unet, cfg.lora_rank, cfg.lora_alpha)
        self.lora_params = {n: p for n, p in unet.named_parameters() if ADAPTER in n}
        for p in self.lora_params.values():
            p.data = p.data.float()  # trainable LoRA weights in fp32 under mixed precision
            p.requires_grad_(True)
        if cfg.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        unet.train()
        self.teacher = Teacher(teacher_unet, shared=cfg.teacher == "shared")
        self.step_plan = StepPlan(
            self.abar, cfg.teacher_steps, self.window_r, cfg.mode, cfg.huber_c,
            phase_edges=schedule.phase_edges(cfg.strength, cfg.nfe_hint, cfg.teacher_steps)
            if cfg.mode == "pcm" else (0,),
            teacher_target=cfg.teacher_target, eps_units=cfg.eps_units,
        )  # fmt: skip

        from diffusers.optimization import get_scheduler

        self.optimizer = torch.optim.AdamW(
            list(self.lora_params.values()),
            lr=cfg.lr,
            betas=(cfg.adam_beta1, cfg.adam_beta2),
            weight_decay=cfg.weight_decay,
        )
        # accelerate steps a prepared scheduler once per process per optimiser step: scale to match
        self.scheduler = get_scheduler(
            "cosine",
            self.optimizer,
            num_warmup_steps=cfg.warmup_steps * self.world,
            num_training_steps=cfg.max_steps * self.world,
        )
        self.unet, self.optimizer, self.scheduler = accelerator.prepare(unet, self.optimizer, self.scheduler)
        # after prepare: DDP has broadcast rank 0's LoRA initialisation, so every rank's EMA starts equal
        self.ema = (
            {n: p.detach().clone() for n, p in self.lora_params.items()} if cfg.target == "ema" else None
        )
        self.raw_unet = unet
        self.loss_fn = FusedSTDLoss(cfg.compile_loss)

        latent = self.variant.slot_shape(self.model.latent_shape(cfg.resolution, cfg.resolution))
        self.bank = TrajectoryBank(
            cfg.bank_size,
            latent,
            cfg.p_bank,
            (cfg.w_min, cfg.w_max),
            cfg.seed * 7919 + self.rank,
            device=self.device,
        )
        self.sampler = data_mod.Sampler(len(self.items), cfg.seed, self.rank, self.world)
        self.generator = torch.Generator().manual_seed(cfg.seed * 104729 + self.rank)  # crops, noise, s
        # which style image a new trajectory gets: a generator of its own, so that the rest of a run is
        # drawn the same with and without --style-images
        self.style_generator = torch.Generator().manual_seed(cfg.seed * 15485863 + self.rank)
        self.adv = None
        if cfg.adv_weight > 0:  # nothing DINO-related is loaded otherwise
            pooled = pooled_text(self.model.pipe, self.prompt_list)
            self.adv = AdversarialLoss(cfg, self.model, self.device, accelerator, pooled)
        self.step = 0
        self.step_calls = 0  # train_step calls (micro-batches)
        self.n_seen: list[int] = []

    def _load_data(self) -> None:
        cfg = self.cfg
        cache = Path(cfg.out) / "cache" / "frames"
        with self.acc.main_process_first():  # one process extracts video frames, the others reuse them
            self.items = self.variant.scan(cache)
        prompts = self.prompt_list = sorted({item.prompt for item in self.items})
        self.prompt_index = {p: i for i, p in enumerate(prompts)}
        res = cfg.resolution
        chunks = [
            encode_prompt(self.model.pipe, prompts[i : i + 64], res, res) for i in range(0, len(prompts), 64)
        ]
        self.prompts = Conditioning.cat(chunks).to(dtype=self.weight_dtype)  # computed once, indexed per step
        self.uncond = encode_prompt(self.model.pipe, "", res, res).to(dtype=self.weight_dtype)

    def _load_styles(self) -> None:
        """--style-images: every image in the folder encoded once (models/style.py), the IP-Adapter attached
        to the UNet with its scale and blocks; self.styles (S, 1, D) in the UNet's dtype, or None."""
        self.styles = None
        cfg = self.cfg
        if not cfg.style_images:
            return
        root = Path(cfg.style_images).expanduser()
        if not root.is_dir():
            raise StdtrtError(f"--style-images {root} is not a folder")
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise StdtrtError(f"--style-images {root} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        styles = encode_styles(self.model, [str(f) for f in files], cfg.ip_adapter, cfg.style_scale,
                               cfg.style_blocks)  # fmt: skip
        attach_style(self.model, styles[0])  # the adapter's layers and scales; embeddings are per trajectory
        self.styles = torch.cat([st.embeds for st in styles]).to(self.device, self.weight_dtype)
        log.info("%d style images from %s", len(files), root)

    def _conditionings(self, prompt: torch.Tensor, style: torch.Tensor) -> tuple[Conditioning, Conditioning]:
        """(cond, uncond) of a batch: its prompts' embeddings and the empty prompt's; with style images each
        element's image embedding in cond and zeros in uncond (as diffusers gives the unconditional branch)."""
        cond, uncond = self.prompts.map(lambda t: t[prompt]), self.uncond.repeat(len(prompt))
        if self.styles is None:
            return cond, uncond
        image = self.styles[style]  # (B, 1, D)
        return dataclasses.replace(cond, image=image), dataclasses.replace(
            uncond, image=torch.zeros_like(image)
        )

    # -- one step ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _fresh(self, count: int) -> dict[str, torch.Tensor]:
        """New trajectories: content latents of the next items, fresh noise, x_start at n_eta (STD) or,
        in the baseline modes (LCM, TCD, PCM), forward-noised to a random grid index."""
        idx = self.sampler.take(count)
        z0 = self.variant.content(self.model, [self.items[i] for i in idx], self.generator, self.device)
        noise = self.variant.noise(z0, self.generator).to(self.device)
        if self.cfg.mode in FORWARD_NOISED:
            n = torch.randint(1, self.cfg.teacher_steps, (count,), generator=self.generator)
        else:
            n = torch.full((count,), self.n_eta, dtype=torch.long)
        n = n.to(self.device)
        a, b = schedule.coefficients_tensor(
            self.abar, schedule.grid_time_tensor(n, self.T, self.cfg.teacher_steps), z0.ndim
        )
        return {
            "x": schedule.x_start(z0, noise, a, b),
            "n": n,
            "z0": z0,
            "w": self.bank.new_guidance(count).to(self.device),
            "prompt": torch.tensor(
                [self.prompt_index[self.items[i].prompt] for i in idx], device=self.device
            ),
            "style": (
                torch.zeros(count, dtype=torch.long)
                if self.styles is None
                else torch.randint(len(self.styles), (count,), generator=self.style_generator)
            ).to(self.device),
        }

    def _batch(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        slots = self.bank.draw(self.cfg.batch_size)
        old, new = (slots >= 0).nonzero().flatten(), (slots < 0).nonzero().flatten()
        parts = {}
        if len(old):
            parts["old"] = self.bank.get(slots[old])
        if len(new):
            parts["new"] = self._fresh(len(new))
        order = torch.cat([old, new]).argsort()  # back to the batch order of `slots`
        batch = {
            k: torch.cat([parts[p][k] for p in ("old", "new") if p in parts])[order.to(self.device)]
            for k in ("x", "n", "z0", "w", "prompt", "style")
        }
        return slots, batch

    @contextlib.contextmanager
    def _ema_weights(self):
        if self.ema is None:
            yield
            return
        backup = {n: p.detach().clone() for n, p in self.lora_params.items()}
        for n, p in self.lora_params.items():
            p.data.copy_(self.ema[n])
        try:
            yield
        finally:
            for n, p in self.lora_params.items():
                p.data.copy_(backup[n])

    def _student(self, x, t, cond):
        """The LoRA student's noise estimate, with grad (through the accelerate-prepared UNet)."""
        dt = self.weight_dtype
        cond = cond.for_latents(x).to(dtype=dt)
        return self.unet(x.to(dt), t, **cond.unet_kwargs(), return_dict=False)[0].float()

    @torch.no_grad()
    def _target_net(self, x, t, cond):
        """The target's noise estimate: the student under stop-gradient, or its EMA."""
        with self._ema_weights():
            return predict_eps(self.raw_unet, x, t, cond)

    def train_step(self):
        """One micro-batch: draw from the bank, the pure STD step (distill/step.py), the adversarial
        branch on the same pred, the teacher's states back into the bank."""
        self.step_calls += 1
        slots, b = self._batch()
        batch = Batch(
            b["x"], b["n"], b["z0"], b["w"], b["prompt"], *self._conditionings(b["prompt"], b["style"])
        )
        out = std_step(
            batch, self._student, self._target_net, self.teacher, self.step_plan, self.generator, self.loss_fn
        )
        loss = out.loss
        metrics = {"loss_std": loss.detach()}
        adv = None
        if self.adv is not None:
            adv = self.variant.adversarial_view(out.pred, out.s, b["z0"], b["prompt"], self.generator)
            adv_loss, adv_metrics = self.adv.generator_loss(
                adv["pred"], adv["s"], adv["z0"], adv["prompt"], self.abar
            )
            loss = loss + self.cfg.adv_weight * adv_loss
            metrics.update(adv_metrics)
        self.bank.update(slots, out.x_next, out.n_next, b["z0"], b["w"], b["prompt"], b["style"])
        self.n_seen.extend(b["n"].tolist())
        metrics["loss"] = loss.detach()
        return loss, metrics, adv

    def optimise(self) -> dict:
        """One optimiser step (grad_accum micro-batches)."""
        totals: dict[str, float] = {}
        for _ in range(self.cfg.grad_accum):
            with self.acc.accumulate(self.unet):
                loss, metrics, adv = self.train_step()
                self._check_finite(loss.detach(), "loss")
                self.acc.backward(loss)
                grad_norm = None
                if self.acc.sync_gradients:
                    grad_norm = self.acc.clip_grad_norm_(list(self.lora_params.values()), self.cfg.grad_clip)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
            if self.adv is not None:
                metrics.update(self.adv.discriminator_step(adv["z0"], adv["s"], adv["prompt"], self.abar))
            for k, v in metrics.items():
                totals[k] = totals.get(k, 0.0) + float(v) / self.cfg.grad_accum
        # Under fp16 an inf gradient norm is the loss scaler's overflow probe: the step was skipped and the
        # scale lowered. Without a scaler it is a real divergence.
        if grad_norm is not None and self.acc.scaler is None:
            self._check_finite(torch.as_tensor(float(grad_norm), device=self.device), "gradient norm")
        if self.ema is not None:
            with torch.no_grad():
                for name, p in self.lora_params.items():
                    self.ema[name].lerp_(p.detach(), 1 - self.cfg.ema_decay)
        self.step += 1
        totals["grad_norm"] = float(grad_norm) if grad_norm is not None else float("nan")
        totals["lr"] = self.scheduler.get_last_lr()[0]
        return totals

    def _check_finite(self, value: torch.Tensor, what: str) -> None:
        """Stop on NaN/inf; with several processes all of them stop together (none waits in an all-reduce)."""
        bad = (~torch.isfinite(value)).float().reshape(1)
        if self.world > 1:
            bad = self.acc.reduce(bad, reduction="sum")
        if float(bad) > 0:
            raise NonFinite(float(value), what=what)


class NonFinite(Exception):
    def __init__(self, value: float, what: str = "loss"):
        super().__init__(f"{what} is {value}")
        self.value, self.what = value, what
