"""`stdtrt export` on tiny-sd and tiny-sdxl: the fused UNet equals the LoRA model, every ONNX graph equals
the torch module it was traced from (checked here with plain onnxruntime sessions, independently of the
export's own validation), the bundle is reused only on a matching key, and bad input leaves nothing."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import export_tiny, make_lora

from stdtrt import schedule
from stdtrt.bundle.manifest import read_bundle
from stdtrt.bundle.networks import build_networks
from stdtrt.config import ExportConfig
from stdtrt.errors import StdtrtError
from stdtrt.export.export import export_bundle
from stdtrt.models.conditioning import encode_prompt, predict_eps
from stdtrt.models.load import load_model
from stdtrt.models.lora import fuse_lora

pytestmark = pytest.mark.usefixtures("one_cpu_thread")

BUNDLES = ["sd_bundle", "sdxl_bundle"]


@pytest.mark.parametrize("preset", ["tiny-sd", "tiny-sdxl"])
def test_fused_unet_equals_the_lora_model(preset, tmp_path):
    lora = make_lora(preset, tmp_path)
    base, model = load_model(preset), load_model(preset, lora=str(lora))
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    cond = encode_prompt(model.pipe, "ink", 64, 64)
    with torch.no_grad():
        unfused = predict_eps(model.unet, x, 599, cond)
        report = fuse_lora(model)
        fused = predict_eps(model.unet, x, 599, cond)
        teacher = predict_eps(base.unet, x, 599, cond)
    assert report.layers > 0 and report.max_abs < 1e-4 and report.mean_abs <= report.max_abs
    assert (fused - unfused).abs().max() < 1e-4
    assert (fused - teacher).abs().max() > 1e-2  # the adapter is non-zero: the merge really happened
    assert not any("lora" in name for name, _ in model.unet.named_parameters())


def _fused_networks(cfg):
    model = load_model(cfg.model, lora=cfg.lora)
    fuse_lora(model)
    plan = schedule.student_plan(model.alphas_cumprod(), cfg.strength, cfg.nfe)
    nets = build_networks(model, plan, cfg.prompt, cfg.negative_prompt, cfg.guidance, cfg.width, cfg.height)
    return model, plan, nets


@pytest.mark.parametrize("fixture", BUNDLES)
def test_each_onnx_graph_equals_its_torch_module(fixture, request):
    cfg, result = request.getfixturevalue(fixture)
    bundle = read_bundle(result.path)
    _, _, nets = _fused_networks(cfg)
    g = torch.Generator().manual_seed(123)  # not the export's validation seed
    inputs = {
        "vae_encoder": (nets.encoder, (torch.randint(0, 256, (1, 64, 64, 3), generator=g, dtype=torch.uint8),)),
        "unet": (nets.unet, tuple(torch.randn(*shape, generator=g) for shape in ((4, 4, 8, 8), (1, 4, 8, 8), (1, 4, 8, 8)))),
        "vae_decoder": (nets.decoder, (torch.randn(1, 4, 8, 8, generator=g),)),
    }  # fmt: skip
    for graph, (module, xs) in inputs.items():
        session = ort.InferenceSession(str(bundle.graph_file(graph)), providers=["CPUExecutionProvider"])
        spec = bundle.manifest.graphs[graph]
        assert [i.name for i in session.get_inputs()] == [i["name"] for i in spec["inputs"]]
        ours = session.run(None, {i.name: x.numpy() for i, x in zip(session.get_inputs(), xs, strict=True)})
        with torch.no_grad():
            ref = module(*xs)
        ref = ref if isinstance(ref, tuple) else (ref,)
        for a, b in zip(ours, ref, strict=True):
            b = b.numpy()
            assert a.shape == b.shape and a.dtype == b.dtype
            if b.dtype == np.uint8:  # frames: rounding can differ by one level
                assert np.abs(a.astype(int) - b.astype(int)).max() <= 1, graph
            else:
                assert np.abs(a - b).max() < 1e-4 * max(1.0, np.abs(b).max()), graph


def assert_uint8_only_at_the_edges(folder: Path) -> None:
    """TensorRT takes UINT8 only as a network input or output converted at once: the encoder's `frames`
    feeds a Cast to float and nothing else, the decoder's `frames` comes straight out of a Cast, and no
    uint8 tensor lies inside either graph (the layout permute runs in float)."""
    import onnx

    for graph, consumes in (("vae_encoder", True), ("vae_decoder", False)):
        proto = onnx.load(str(folder / f"{graph}.onnx"), load_external_data=False)
        if consumes:
            users = [n for n in proto.graph.node if "frames" in n.input]
            assert [n.op_type for n in users] == ["Cast"], graph
            assert users[0].attribute[0].i == onnx.TensorProto.FLOAT, graph
        else:
            (producer,) = [n for n in proto.graph.node if "frames" in n.output]
            assert producer.op_type == "Cast", graph
        inferred = onnx.shape_inference.infer_shapes(proto).graph.value_info
        inner = [v.name for v in inferred if v.type.tensor_type.elem_type == onnx.TensorProto.UINT8]
        assert inner == [], (graph, inner)


def test_uint8_is_cast_at_the_graph_edges(sd_bundle):
    assert_uint8_only_at_the_edges(sd_bundle[1].path)


@pytest.mark.parametrize("fixture", BUNDLES)
def test_unet_graph_is_the_stream_step(fixture, request):
    """One graph call: slot 0 takes x_start of the new frame, slot i jumps as the student's step i (the
    timesteps, the jump coefficients and the prompt, both CFG branches for sdxl, are baked in), and the
    slots move down one."""
    from stdtrt.runtime.student import Student

    cfg, result = request.getfixturevalue(fixture)
    bundle = read_bundle(result.path)
    model, plan, _ = _fused_networks(cfg)
    student = Student(model, plan, cfg.prompt, 64, 64, cfg.negative_prompt, cfg.guidance)
    g = torch.Generator().manual_seed(9)
    slots, z0, noise = (torch.randn(*s, generator=g) for s in ((4, 4, 8, 8), (1, 4, 8, 8), (1, 4, 8, 8)))
    session = ort.InferenceSession(str(bundle.graph_file("unet")), providers=["CPUExecutionProvider"])
    slots_next, done = (
        torch.from_numpy(a)
        for a in session.run(None, {"slots": slots.numpy(), "z0": z0.numpy(), "noise": noise.numpy()})
    )
    entered = student.step(plan.a_start * z0 + plan.b_start * noise, 0)
    refs = [entered, student.step(slots[1:2], 1), student.step(slots[2:3], 2)]
    for i, ref in enumerate(refs):
        assert (slots_next[i + 1 : i + 2] - ref).abs().max() < 1e-4 * max(1.0, float(ref.abs().max())), i
    last = student.step(slots[3:4], 3)
    assert (done - last).abs().max() < 1e-4 * max(1.0, float(last.abs().max()))
    assert (slots_next[2] - student.step(slots[1:2], 2)[0]).abs().max() > 1e-2  # slot 1 is not at step 2


@pytest.mark.parametrize("fixture", BUNDLES)
def test_manifest_describes_the_bundle(fixture, request):
    cfg, result = request.getfixturevalue(fixture)
    m = read_bundle(result.path).manifest  # verifies every sha256
    assert m.schedule["timesteps"] == [779, 599, 399, 219] and m.guidance == cfg.guidance
    assert [i["shape"] for i in m.graphs["unet"]["inputs"]] == [[4, 4, 8, 8], [1, 4, 8, 8], [1, 4, 8, 8]]
    assert m.graphs["vae_encoder"]["inputs"][0] == {
        "name": "frames",
        "shape": [1, 64, 64, 3],
        "dtype": "uint8",
    }
    assert m.graphs["vae_decoder"]["outputs"][0] == {
        "name": "frames",
        "shape": [1, 64, 64, 3],
        "dtype": "uint8",
    }
    assert m.graphs["unet"]["opset"] >= 17 and m.precision == "fp32"
    assert m.placement == {"unet": "fp32", "vae": "fp32"} and m.schedule["num_steps"] == 50
    assert m.lora["fused"]["max_abs"] < 1e-4 and len(m.lora["hash"]) == 64
    assert m.model["scaling_factor"] == 0.18215 and m.versions["torch"] == torch.__version__
    assert set(m.files) == {"vae_encoder.onnx", "unet.onnx", "vae_decoder.onnx", "validation.txt"}
    rows = m.validation["rows"]
    assert [r["name"].split()[0] for r in rows] == ["vae_encoder", "unet", "unet", "vae_decoder", "frames"]
    assert all(r["ok"] for r in rows) and all(
        r["max_abs"] < 1e-3 for r in rows if "vae_decoder" not in r["name"] and "frames" not in r["name"]
    )
    assert all(r["max_abs"] <= 1 for r in rows)  # uint8 frames: at most a level of rounding
    assert {r["backend"] for r in rows} == {"onnxruntime CPU"}  # no GPU provider here
    assert m.validation["reference"] == "the fused model's torch modules in float32 on cpu (TF32 off)"
    assert m.config["device"] == "auto"
    assert (result.path / "validation.txt").read_text().startswith("validation against torch (float32)")
    assert m.tensorrt is None  # the fixture turns TensorRT off: skipped, said in one line
    assert (
        result.tensorrt == "TensorRT engines skipped (--no-tensorrt)"
    )  # the fixture pins it off; decide() is tested on its own


def test_validation_catches_a_timestep_off_by_one_grid_step_or_another_prompt(tiny_sd):
    """The tolerances are tight enough to fail what a wrong bake would give, even at fp16's: each slot's
    timestep one grid step off, or the graph baked with another prompt (measured: 3 to 5 times the bound)."""
    from types import SimpleNamespace

    from stdtrt.export.validate import TOLERANCES, compare, reference

    abar = tiny_sd.alphas_cumprod()
    plan = schedule.student_plan(abar, 0.75, 4)
    cfg = SimpleNamespace(prompt="an oil painting", negative_prompt="", guidance=1.0, seed=0)
    ref = reference(build_networks(tiny_sd, plan, cfg.prompt, "", 1.0, 64, 64), tiny_sd, plan, cfg, 64, 64)
    wrong = {
        "timesteps one grid step off": build_networks(
            tiny_sd, schedule.plan_from_indices(abar, 0.75, [37, 28, 18, 9]), cfg.prompt, "", 1.0, 64, 64
        ),
        "another prompt": build_networks(tiny_sd, plan, "a photo", "", 1.0, 64, 64),
    }
    for name, nets in wrong.items():
        with torch.no_grad():
            slots_next, done = nets.unet(ref.step_in["slots"], ref.z0, ref.step_in["noise"])
        for ours, want in ((slots_next, ref.step_out["slots_next"]), (done, ref.step_out["done"])):
            row = compare("torch", name, ours, want, TOLERANCES["fp16"][0])
            assert not row.ok and row.max_abs > 2 * row.tolerance, (name, row)


def test_a_matching_bundle_is_reused_and_a_different_one_refused(sd_bundle, tmp_path):
    cfg, result = sd_bundle
    out = tmp_path / "copy"
    shutil.copytree(result.path, out)
    before = (out / "manifest.json").read_text()
    (out / "stray.txt").write_text("x")  # a bundle is replaced whole: nothing else may be in its folder
    with pytest.raises(StdtrtError, match=r"not part of an stdtrt bundle \(stray.txt\)"):
        export_bundle(ExportConfig(**{**cfg.__dict__, "out": str(out)}), progress=False)
    (out / "stray.txt").unlink()
    again = export_bundle(ExportConfig(**{**cfg.__dict__, "out": str(out)}), progress=False)
    assert again.reused and (out / "manifest.json").read_text() == before
    with pytest.raises(StdtrtError, match="holds a different bundle.*--overwrite"):
        export_bundle(ExportConfig(**{**cfg.__dict__, "out": str(out), "nfe": 2}), progress=False)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("mine")
    with pytest.raises(StdtrtError, match="not part of an stdtrt bundle"):
        export_bundle(ExportConfig(**{**cfg.__dict__, "out": str(tmp_path / "junk")}), progress=False)
    assert (tmp_path / "junk" / "notes.txt").read_text() == "mine"


def test_overwrite_replaces_a_different_bundle(tmp_path):
    cfg, first = export_tiny(tmp_path, "tiny-sd", 1.0, nfe=2, validate=False)
    assert read_bundle(first.path).nfe == 2 and first.table is None
    cfg = ExportConfig(**{**cfg.__dict__, "nfe": 3, "overwrite": True, "lora": None})
    second = export_bundle(cfg, progress=False)
    m = read_bundle(second.path).manifest
    assert m.schedule["nfe"] == 3 and m.lora is None and m.graphs["unet"]["inputs"][0]["shape"][0] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "tiny-sd-lora.safetensors"]


def test_failed_validation_leaves_no_bundle(tmp_path, monkeypatch):
    from stdtrt.export import validate

    monkeypatch.setitem(validate.TOLERANCES, "fp32", (1e-12, 1e-12))  # nothing passes this
    with pytest.raises(StdtrtError, match="validation failed.*nothing was written"):
        export_tiny(tmp_path, "tiny-sd", 1.0, nfe=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-sd-lora.safetensors"]  # no half bundle


@pytest.mark.parametrize(
    "changes,match",
    [
        ({"nfe": 40}, "nfe 40 cannot be served"),
        ({"lora": "WRONG"}, "does not fit the UNet"),
        ({"model": "nobody/nothing"}, "hf download"),
    ],
)
def test_bad_export_input_is_one_clear_error(changes, match, tmp_path):
    if changes.get("lora") == "WRONG":
        changes["lora"] = str(make_lora("tiny-sdxl", tmp_path))
    cfg = ExportConfig(
        **{"model": "tiny-sd", "width": 64, "height": 64, "out": str(tmp_path / "b"), **changes}
    )
    with pytest.raises(StdtrtError, match=match):
        export_bundle(cfg, progress=False)
    assert not (tmp_path / "b").exists()


def test_export_config_validation():
    with pytest.raises(StdtrtError, match="no model"):
        ExportConfig()
    with pytest.raises(StdtrtError, match="opset"):
        ExportConfig(model="tiny-sd", opset=13)
    with pytest.raises(StdtrtError, match="multiple of 8"):
        ExportConfig(model="tiny-sd", width=30)


def test_fp16_graphs_run_and_stay_close(tmp_path):
    """fp16 weights with float32 inputs and outputs (what TensorRT builds fp16 engines from)."""
    _, result = export_tiny(tmp_path, "tiny-sd", 1.0, precision="fp16", nfe=2)
    m = read_bundle(result.path).manifest
    assert m.precision == "fp16" and m.graphs["unet"]["inputs"][0]["dtype"] == "float32"
    assert all(m.graphs[g]["precision"] == "fp16" for g in m.graphs)
    assert all(r["ok"] for r in m.validation["rows"])
    assert_uint8_only_at_the_edges(result.path)
    import onnx

    weights = onnx.load(str(result.path / "unet.onnx")).graph.initializer
    floats = {t.data_type: 0 for t in weights}
    for t in weights:
        floats[t.data_type] += int(np.prod(t.dims))
    fp16, fp32 = floats.get(onnx.TensorProto.FLOAT16, 0), floats.get(onnx.TensorProto.FLOAT, 0)
    assert fp16 > 100 * fp32  # the weights really are half precision


def test_polygraphy_accepts_the_graphs(sd_bundle):
    pytest.importorskip("polygraphy", reason="polygraphy is not installed (pip install polygraphy)")
    _, result = sd_bundle
    for graph in ("vae_encoder", "unet", "vae_decoder"):
        run = subprocess.run(
            [
                str(Path(sys.executable).parent / "polygraphy"),
                "run",
                str(result.path / f"{graph}.onnx"),
                "--onnxrt",
            ],
            capture_output=True,
            text=True,
        )
        assert run.returncode == 0 and "PASSED" in run.stdout + run.stderr, (
            run.stdout[-2000:] + run.stderr[-2000:]
        )


def test_validation_runs_on_the_gpu_backends_of_a_gpu_export_and_on_the_cpu_only_without_them():
    """Which backends validate: on a GPU its GPU backends only (onnxruntime's CUDA provider, TensorRT's
    engines), onnxruntime on the CPU only where neither is there; a CPU export validates on the CPU (and on
    the engines, which run only on their GPU)."""
    from stdtrt.export.validate import validation_backends

    gpu, cpu = torch.device("cuda", 1), torch.device("cpu")
    assert validation_backends(gpu, build_trt=True, ort_cuda=True) == ["onnxruntime CUDA", "tensorrt"]
    assert validation_backends(gpu, build_trt=True, ort_cuda=False) == ["tensorrt"]
    assert validation_backends(gpu, build_trt=False, ort_cuda=True) == ["onnxruntime CUDA"]
    assert validation_backends(gpu, build_trt=False, ort_cuda=False) == ["onnxruntime CPU"]
    assert validation_backends(cpu, build_trt=False, ort_cuda=True) == ["onnxruntime CPU"]
    assert validation_backends(cpu, build_trt=True, ort_cuda=True) == ["onnxruntime CPU", "tensorrt"]


def test_auto_precision_is_the_gpu_s_whatever_backend_runs_it():
    from stdtrt.export.export import export_precision

    gpu, cpu = torch.device("cuda"), torch.device("cpu")
    assert export_precision("auto", False, gpu) == "fp16"  # onnxruntime-gpu or torch on the GPU: fp16
    assert export_precision("auto", True, cpu) == "fp16"  # TensorRT's engines run on the GPU
    assert export_precision("auto", False, cpu) == "fp32"
    assert export_precision("fp32", True, gpu) == "fp32"


def test_the_reference_is_exact_float32_on_its_device_and_leaves_tf32_as_it_was(tiny_sd):
    """The reference runs on the model's device with TF32 off (cudnn allows it by default), recorded as
    such; the caller's settings come back after."""
    from stdtrt.export.validate import reference
    from stdtrt.models.load import exact_float32

    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        plan = schedule.student_plan(tiny_sd.alphas_cumprod(), 0.75, 2)
        cfg = ExportConfig(model="tiny-sd", prompt="ink", width=32, height=32, nfe=2)
        nets = build_networks(tiny_sd, plan, "ink", "", 1.0, 32, 32)
        with exact_float32():
            assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
            ref = reference(nets, tiny_sd, plan, cfg, 32, 32)
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        assert ref.device == str(tiny_sd.device) and not ref.tf32 and ref.z0.device.type == "cpu"
        assert "TF32 on" in reference(nets, tiny_sd, plan, cfg, 32, 32).describe()  # what the record tells
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_export_says_each_long_stage_with_its_time(tmp_path, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="stdtrt")
    export_tiny(tmp_path, "tiny-sd", 1.0, precision="fp16", nfe=2)
    said = [r.getMessage() for r in caplog.records]
    for stage in ("loading tiny-sd", "validation reference (float32 on cpu, TF32 off)", "tracing unet",
                  "validation on onnxruntime CPU"):  # fmt: skip
        assert any(m.startswith(stage) and "done in" in m for m in said), stage
    assert any("nodes kept in float32 in" in m for m in said)  # the fp16 pass
