"""The baseline stdtrt is measured against: diffusers' own img2img pipeline (TCD scheduler) on the same
model, LoRA, VAE, timesteps, guidance and size, with forward hooks saying where its time goes. Imports
nothing of the video path, so benchmarks/gpu_check.py runs it where PyAV is not installed."""

from __future__ import annotations

import time

import numpy as np
import torch

from stdtrt.models.conditioning import encode_prompt


def img2img_pipeline(
    model, plan, prompt: str, negative_prompt: str, guidance: float, width: int, height: int
):
    """(diffusers' own img2img pipeline on the model's components with TCDScheduler, the call's keyword
    arguments): strength 1 over the plan's timesteps from x_start, eta 0, prompt embeddings passed in.
    The baseline of `stdtrt bench` and of benchmarks/gpu_check.py."""
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionXLImg2ImgPipeline, TCDScheduler

    components = dict(model.pipe.components)
    components["scheduler"] = TCDScheduler.from_config(model.pipe.scheduler.config)
    cond = encode_prompt(model.pipe, prompt, height, width)
    uncond = encode_prompt(model.pipe, negative_prompt, height, width)
    kwargs = {"prompt_embeds": cond.embeds, "negative_prompt_embeds": uncond.embeds}
    if model.kind == "sdxl":
        pipe = StableDiffusionXLImg2ImgPipeline(**components, requires_aesthetics_score=False)
        kwargs.update(pooled_prompt_embeds=cond.pooled, negative_pooled_prompt_embeds=uncond.pooled)
    else:
        components.pop("image_encoder", None)
        pipe = StableDiffusionImg2ImgPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    kwargs.update(strength=1.0, timesteps=list(plan.timesteps), guidance_scale=guidance, eta=0.0)
    return pipe, kwargs


def diffusers_baseline(model, bundle, frames: list[np.ndarray]) -> dict:
    """The same frames through diffusers' img2img pipeline with TCDScheduler over the bundle's timesteps."""
    from PIL import Image

    m, plan = bundle.manifest, bundle.plan()
    pipe, kwargs = img2img_pipeline(
        model, plan, m.prompt, m.negative_prompt, m.guidance, bundle.width, bundle.height
    )
    kwargs["output_type"] = "np"
    for module in (pipe.unet, pipe.vae):  # diffusers as it comes (the torch backend may have made it NHWC)
        module.to(memory_format=torch.contiguous_format)

    def run(rgb):
        g = torch.Generator().manual_seed(0)
        return pipe(image=Image.fromarray(rgb), generator=g, **kwargs).images

    run(frames[0])  # warm-up
    timer = ForwardTimer({"vae_encode": pipe.vae.encoder, "unet": pipe.unet, "vae_decode": pipe.vae.decoder})
    with timer:
        start = time.perf_counter()
        for rgb in frames:
            run(rgb)
        ms = 1000 * (time.perf_counter() - start) / len(frames)
    stages = {k: 1000 * v / len(frames) for k, v in timer.spent.items()}  # per frame (the UNet: nfe calls)
    calls = {
        k: v / len(frames) for k, v in timer.calls.items()
    }  # per frame: the UNet nfe (x2 with CFG batched)
    describe = f"img2img + TCDScheduler, {plan.nfe} steps ({type(pipe).__name__})"
    return {"ms_per_frame": ms, "fps": 1000 / ms, "describe": describe, "stages_ms_per_frame": stages,
            "calls_per_frame": calls}  # fmt: skip


class ForwardTimer:
    """Seconds spent in each module's forward (by forward hooks) inside a `with` block."""

    def __init__(self, modules: dict):
        self.modules, self.spent, self._start = modules, dict.fromkeys(modules, 0.0), {}
        self.calls = dict.fromkeys(modules, 0)

    def __enter__(self):
        self.handles = []
        for name, module in self.modules.items():
            self.handles.append(module.register_forward_pre_hook(lambda *_, n=name: self._begin(n)))
            self.handles.append(module.register_forward_hook(lambda *_, n=name: self._end(n)))
        return self

    def _begin(self, name: str) -> None:
        self._start[name] = time.perf_counter()

    def _end(self, name: str) -> None:
        self.spent[name] += time.perf_counter() - self._start[name]
        self.calls[name] += 1

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
