"""Trace the bundle's torch modules (bundle/networks.py) to ONNX.

Exporter: torch 2.13's default `torch.onnx.export(..., dynamo=True)` (torch.export + onnxscript). For a
diffusers UNet it is the better of the two paths measured here (SD-1.5-sized UNet, stream form at 256x256,
2-core CPU): 25 s to export against 36 s for the TorchScript path, one `.onnx.data` file for the weights
instead of ~390 loose tensor files when the model passes 2 GB, and a graph onnxruntime runs in 2.0 s
against 4.7 s per call. The TorchScript path is deprecated in torch 2.9+ as well.

fp16: the module is traced in the dtypes it runs in (the placement: fp16 weights and compute, its own
casts to float32 at the inputs, outputs, jumps and guidance combine), then export/fp16.py casts what must
stay float32 (normalisation statistics, softmax). TensorRT builds a strongly typed network from it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings
from pathlib import Path

import torch

from stdtrt.errors import StdtrtError
from stdtrt.export.fp16 import keep_file_in_fp32

log = logging.getLogger(__name__)

# protobuf refuses messages over 2 GiB: weights go to `<name>.onnx.data` above this size.
EXTERNAL_DATA_BYTES = int(1.8 * 2**30)
_DTYPES = {1: "float32", 10: "float16", 7: "int64", 6: "int32", 2: "uint8"}  # onnx.TensorProto element types


def tensor_bytes(module: torch.nn.Module) -> int:
    """The size of a module's weights and buffers once exported."""
    tensors = [*module.parameters(), *(b for b in module.buffers() if b is not None)]
    return sum(t.numel() * t.element_size() for t in tensors)


@contextlib.contextmanager
def _quiet_exporter():
    """torch.onnx prints progress to stdout, logs every optimizer pass and warns about torchvision ops it
    cannot register: none of it is news to a user."""
    names = ("torch.onnx", "torch._export", "torch.export", "onnxscript", "onnx_ir")
    noisy = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in noisy]
    for lg in noisy:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(noisy, levels, strict=True):
            lg.setLevel(level)


def _io_spec(values) -> list[dict]:
    return [
        {
            "name": v.name,
            "shape": [d.dim_value for d in v.type.tensor_type.shape.dim],
            "dtype": _DTYPES.get(v.type.tensor_type.elem_type, str(v.type.tensor_type.elem_type)),
        }
        for v in values
    ]


def export_graph(
    module: torch.nn.Module,
    examples: tuple[torch.Tensor, ...],
    path: Path,
    input_names: list[str],
    output_names: list[str],
    opset: int,
    precision: str = "fp32",
) -> dict:
    """Export `module(*examples)` to `path` (static shapes); return its manifest entry. `precision` is the
    module's own (fp32 or fp16: it is traced as it runs); an fp16 graph then keeps in float32 what must
    stay there (export/fp16.py)."""
    import onnx

    path = Path(path)
    large = tensor_bytes(module) > EXTERNAL_DATA_BYTES
    start = time.perf_counter()
    log.info("tracing %s to ONNX (opset %d, %s) ...", path.stem, opset, precision)
    try:
        with torch.no_grad(), _quiet_exporter():
            torch.onnx.export(
                module,
                tuple(examples),
                str(path),
                dynamo=True,
                opset_version=opset,
                input_names=input_names,
                output_names=output_names,
                external_data=large,
                optimize=True,
                verbose=False,
            )
    except Exception as exc:  # an unsupported op or model: a bug or an unsupported model, said in one line
        raise StdtrtError(
            f"ONNX export of {path.stem} failed: {type(exc).__name__}: {str(exc)[:300]}"
        ) from exc
    log.info("tracing %s: done in %.1f s", path.stem, time.perf_counter() - start)
    kept = 0
    if precision == "fp16":
        start = time.perf_counter()
        kept = keep_file_in_fp32(path)
        log.info("%s: %d nodes kept in float32 in %.1f s", path.stem, kept, time.perf_counter() - start)
    data = path.with_name(path.name + ".data")
    proto = onnx.load(str(path), load_external_data=False)
    return {
        "onnx": path.name,
        "external_data": data.name if data.exists() else None,
        "precision": precision,
        "fp32_nodes": kept,  # nodes of an fp16 graph kept in float32 (export/fp16.py)
        "opset": max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
        "inputs": _io_spec(proto.graph.input),
        "outputs": _io_spec(proto.graph.output),
    }


def export_networks(networks, folder: Path, examples: dict, opset: int, precision: dict[str, str]) -> dict:
    """Export the three bundle graphs into `folder`; return graph name -> manifest entry. `examples`: the
    backend interface's inputs per call (Backend.example_inputs); `precision`: graph -> its modules' dtype."""
    modules = {"vae_encoder": networks.encoder, "unet": networks.unet, "vae_decoder": networks.decoder}
    calls = {"vae_encoder": "encode", "unet": "step", "vae_decoder": "decode"}
    graphs = {}
    for name, module in modules.items():
        inputs, outputs = module.io()  # the names the runtime binds (bundle/networks.py has their meaning)
        graphs[name] = export_graph(
            module, examples[calls[name]], folder / f"{name}.onnx", inputs, outputs, opset, precision[name]
        )
    return graphs
