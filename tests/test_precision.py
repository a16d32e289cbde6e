"""Half precision on the CPU: every path a GPU runs in fp16 or bf16 runs here in that precision too, and is
compared with float32 within a stated tolerance. The torch backend's compiled path equals eager.

Tolerances, in 0..255 output levels of the same seeded frame (and relative, for losses): fp16 keeps 11
significant bits, bf16 8, so a few tens of layers of rounding move an output pixel by about one level in
fp16 and a few in bf16 (measured here: fp16 max 1, mean 0.05; bf16 max 5, mean 0.5). The bounds below are
about twice that. What they catch is a wrong cast or a network in the wrong dtype: a half-precision tensor
fed to the wrong place raises, and a wrong scale or a lost branch moves outputs by tens of levels. Each test
also checks that the half-precision run really differs from float32 (it did not silently run in fp32).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import export_tiny, frames_of, make_lora, make_video, small

from stdtrt.config import StylizeConfig
from stdtrt.io.samples import sample_frames
from stdtrt.runtime.stylize import load_runner, stylize_video

pytestmark = pytest.mark.usefixtures("one_cpu_thread")

LEVELS = {"fp16": (3, 0.15), "bf16": (12, 1.5)}  # (max, mean) |difference| in 0..255 levels
FRAME = next(sample_frames(1, 64, 64))


def assert_close(ours: np.ndarray, ref: np.ndarray, precision: str, factor: float = 1.0) -> None:
    """Within `precision`'s bound (times factor), and not identical: the half precision really ran."""
    d = np.abs(ours.astype(int) - ref.astype(int))
    worst, mean = int(d.max()), float(d.mean())
    bound_max, bound_mean = LEVELS[precision]
    assert mean > 0 and worst <= factor * bound_max and mean <= factor * bound_mean, (worst, mean)


def _frame(**cfg) -> tuple[np.ndarray, object]:
    runner = load_runner(
        StylizeConfig(**{"prompt": "ink", "width": 64, "height": 64, "device": "cpu", **cfg}), 64, 64
    )
    return runner(FRAME), runner


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
@pytest.mark.parametrize("preset,guidance", [("tiny-sd", 1.0), ("tiny-sdxl", 3.0)])
def test_the_model_path_in_half_precision_matches_fp32(preset, guidance, precision, tmp_path):
    """--model with a LoRA, the stream form (LoRA fused) and the sequential student (gamma > 0)."""
    lora = str(make_lora(preset, tmp_path))
    ref, _ = _frame(model=preset, lora=lora, guidance=guidance, precision="fp32")
    ours, runner = _frame(model=preset, lora=lora, guidance=guidance, precision=precision)
    placement = runner.backend.placement
    assert placement.precision == precision
    assert placement.dtypes()["vae"] == (
        "fp32" if preset == "tiny-sdxl" and precision == "fp16" else precision
    )
    assert_close(ours, ref, precision)
    seq_ref, _ = _frame(model=preset, lora=lora, guidance=guidance, gamma=0.3, precision="fp32")
    seq, student = _frame(model=preset, lora=lora, guidance=guidance, gamma=0.3, precision=precision)
    assert student.student.model.dtype == {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    assert_close(seq, seq_ref, precision)


def test_stylize_video_in_fp16_matches_fp32(tmp_path):
    src = make_video(tmp_path / "in.mp4", frames=4, size=(64, 48), audio=False)
    outs = {}
    for precision in ("fp32", "fp16"):
        cfg = StylizeConfig(
            model="tiny-sd", prompt="ink", width=64, height=48, device="cpu", precision=precision, crf=0
        )  # crf 0: lossless H.264, so the frames compare as the networks made them
        result = stylize_video(cfg, src, tmp_path / f"{precision}.mp4", progress=False)
        assert result.frames == 4 and precision in result.backend
        outs[precision] = frames_of(result.output)
    # 8-bit YUV 4:2:0 (chroma shared by 2x2 pixels) turns a one-level RGB change into a few: twice the bound
    for a, b in zip(outs["fp16"], outs["fp32"], strict=True):
        assert_close(a, b, "fp16", factor=2)


def test_an_fp16_bundle_runs_in_fp16_on_the_torch_backend_and_onnxruntime(tmp_path):
    """The bundle's placement (fp16 UNet; SDXL's VAE fp32) is what its torch backend runs, on any device;
    onnxruntime runs the same fp16 graphs. Both within fp16's tolerance of the float32 model path."""
    from stdtrt.bundle.manifest import read_bundle
    from stdtrt.runtime.backends import load_backend

    cfg, result = export_tiny(tmp_path, "tiny-sdxl", 2.5, precision="fp16", nfe=2)
    bundle = read_bundle(result.path)
    assert bundle.placement == {"unet": "fp16", "vae": "fp32"}
    assert [bundle.manifest.graphs[g]["precision"] for g in ("vae_encoder", "unet", "vae_decoder")] == [
        "fp32", "fp16", "fp32"
    ]  # fmt: skip
    torch_backend = load_backend(bundle, "torch", "cpu")
    assert torch_backend.placement.unet == torch.float16 and torch_backend.placement.vae == torch.float32
    ref, _ = _frame(
        model="tiny-sdxl", lora=cfg.lora, guidance=2.5, nfe=2, precision="fp32", prompt=cfg.prompt
    )
    for backend in ("torch", "onnxruntime"):
        ours, _ = _frame(bundle=str(bundle.path), backend=backend, prompt=cfg.prompt, nfe=2, guidance=2.5)
        assert_close(ours, ref, "fp16")


def test_fp16_graphs_keep_normalisation_and_softmax_in_fp32(tmp_path):
    """The fp16 UNet graph is the fp16 module traced: fp16 weights, float32 inputs and outputs, and every
    InstanceNormalization (GroupNorm), LayerNormalization and Softmax computes in float32 (export/fp16.py)."""
    import onnx

    _, result = export_tiny(tmp_path, "tiny-sd", 1.0, precision="fp16", nfe=2)
    model = onnx.load(str(result.path / "unet.onnx"))
    g = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*g.input, *g.output, *g.value_info)}
    types.update({t.name: t.data_type for t in g.initializer})
    kept = [n for n in g.node if n.op_type in ("InstanceNormalization", "LayerNormalization", "Softmax")]
    assert len(kept) > 10
    for node in kept:
        assert {types[i] for i in node.input if i} == {onnx.TensorProto.FLOAT}, node.name
        assert {types[o] for o in node.output if o} == {onnx.TensorProto.FLOAT}, node.name
    convs = [n for n in g.node if n.op_type == "Conv"]
    assert convs and all(types[n.input[1]] == onnx.TensorProto.FLOAT16 for n in convs)  # fp16 weights
    assert types[g.input[0].name] == types[g.output[0].name] == onnx.TensorProto.FLOAT


@pytest.mark.parametrize("precision,rtol", [("fp16", 0.02), ("bf16", 0.1)])
def test_one_distill_step_under_mixed_precision_matches_fp32(precision, rtol, data_dir, tmp_path):
    """The same seeded batches and bank draws: only rounding differs. The frozen UNet, text encoder and VAE
    run in the half dtype (bf16 under autocast), the trainable LoRA weights stay float32. Two optimiser
    steps, losses and gradient norms within rtol (measured: fp16 under 1%; bf16 under 1% on the first step
    and 6% on the gradient norm of the second, whose weights already differ by one bf16-rounded update)."""
    from conftest import assert_two_steps_match_fp32

    def check_half(run):
        assert run.model.unet.conv_in.weight.dtype == run.model.dtype != torch.float32
        assert all(p.dtype == torch.float32 for p in run.lora_params.values())

    assert_two_steps_match_fp32(
        lambda mp: small(data_dir, tmp_path / mp, mixed_precision=mp), precision, rtol, check_half
    )


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_the_diffusers_baseline_in_half_precision_matches_fp32(precision):
    """bench's baseline, diffusers' img2img pipeline, on the model as placed (SD 1.x: fp16 VAE too)."""
    from PIL import Image

    from stdtrt import schedule
    from stdtrt.eval.baseline import img2img_pipeline
    from stdtrt.models.load import load_model

    images = {}
    for p in ("fp32", precision):
        model = load_model("tiny-sd", device="cpu", precision=p)
        plan = schedule.student_plan(model.alphas_cumprod(), 0.75, 2)
        pipe, kwargs = img2img_pipeline(model, plan, "ink", "", 1.0, 64, 64)
        out = pipe(image=Image.fromarray(FRAME), generator=torch.Generator().manual_seed(0), output_type="np",
                   **kwargs).images[0]  # fmt: skip
        images[p] = (out * 255).round().astype(np.uint8)
        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[p]
        assert model.unet.conv_in.weight.dtype == model.vae.dtype == dtype  # it really ran in p
    assert_close(images[precision], images["fp32"], precision)


def test_the_compiled_torch_backend_equals_eager():
    """torch.compile (inductor, on the CPU here) of the three networks against the eager modules."""
    from stdtrt import schedule
    from stdtrt.models.load import load_model
    from stdtrt.runtime.backends.torch import TorchBackend

    model = load_model("tiny-sd")
    plan = schedule.student_plan(model.alphas_cumprod(), 0.75, 2)
    eager = TorchBackend.from_model(model, plan, "ink", "", 1.0, 64, 64)
    compiled = TorchBackend.from_model(model, plan, "ink", "", 1.0, 64, 64, compile=True)
    assert compiled.speedups == ["torch.compile"] and eager.speedups == []  # CPU: no CUDA graphs
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (1, 64, 64, 3), generator=g, dtype=torch.uint8)
    slots, z = torch.randn(2, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    for name, args in (("encode", (frames,)), ("step", (slots, z, z * 0.5)), ("decode", (z,))):
        ref, ours = getattr(eager, name)(*args), getattr(compiled, name)(*args)
        for a, b in zip(
            ours if isinstance(ours, tuple) else (ours,),
            ref if isinstance(ref, tuple) else (ref,),
            strict=True,
        ):
            if b.dtype == torch.uint8:  # frames: rounding may differ by a level
                assert (a.int() - b.int()).abs().max() <= 1, name
            else:
                assert (a - b).abs().max() <= 1e-4 * max(1.0, float(b.abs().max())), name
