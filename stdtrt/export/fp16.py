"""Half-precision graphs that keep in float32 what overflows or loses accuracy in half precision.

A half-precision graph is the half-precision torch module traced (export/onnx.py): its weights and its
compute are fp16, with the casts the module makes itself (float32 inputs and outputs, the jumps and the
guidance combine in float32). What torch computes internally in float32 even for half inputs, the graph
must say explicitly, because TensorRT 11 networks are strongly typed (TensorRT 10 ones are built so too):
every layer runs in the types the graph gives it, never in a precision a builder flag picks. So each node
in KEEP_FP32 with a half-precision input gets Cast nodes around it: its inputs cast to float32, its
outputs cast back.

- InstanceNormalization (the GroupNorm of every resnet block, as torch exports it), LayerNormalization
  (GroupNormalization where an exporter emits it): their mean and variance overflow fp16 on large
  activations (TensorRT's own warning for LayerNorm after self-attention).
- Softmax: the attention probabilities; TensorRT still fuses attention with the casts around the softmax
  (both matrix products stay fp16).

Only nodes are added: the initializers, and a graph's external data file, are left as they are.
"""

from __future__ import annotations

from pathlib import Path

KEEP_FP32 = ("InstanceNormalization", "LayerNormalization", "GroupNormalization", "Softmax")


def _types(graph) -> dict[str, object]:
    """tensor name -> its TypeProto, from the graph's inputs, outputs, value_info and initializers."""
    import onnx

    types = {v.name: v.type for v in (*graph.input, *graph.output, *graph.value_info)}
    for init in graph.initializer:
        types.setdefault(init.name, onnx.helper.make_tensor_type_proto(init.data_type, list(init.dims)))
    return types


def keep_in_fp32(model, op_types=KEEP_FP32) -> int:
    """Wrap every node of `op_types` that has a float16 input in casts to float32 and back (in place).
    Returns how many nodes were wrapped."""
    from onnx import TensorProto, helper

    graph = model.graph
    types = _types(graph)

    def is_half(name: str) -> bool:
        t = types.get(name)
        return t is not None and t.tensor_type.elem_type == TensorProto.FLOAT16

    def value_info(name: str, like: str):
        shape = types[like].tensor_type.shape if types[like].tensor_type.HasField("shape") else None
        dims = [d.dim_value or d.dim_param for d in shape.dim] if shape is not None else None
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)

    infos = []

    def to_fp32(ports, suffix: str, inward: bool) -> list:
        """Swap each half tensor of `ports` (a node's inputs or outputs, in place) for a float32 twin named
        name + suffix; returns the Casts that join them: half -> twin before the node (`inward`), twin ->
        half after it."""
        casts = []
        for k, name in enumerate(ports):
            if name and is_half(name):
                twin = name + suffix
                src, dst = (name, twin) if inward else (twin, name)
                to = TensorProto.FLOAT if inward else TensorProto.FLOAT16
                casts.append(helper.make_node("Cast", [src], [dst], to=to, name=f"{twin}_cast"))
                infos.append(value_info(twin, name))
                ports[k] = twin
        return casts

    nodes, wrapped = [], 0
    for node in graph.node:
        if node.op_type not in op_types or not any(is_half(i) for i in node.input if i):
            nodes.append(node)
            continue
        wrapped += 1
        tag = node.name or f"{node.op_type}_{wrapped}"
        before = to_fp32(node.input, f"__fp32__{tag}", inward=True)
        after = to_fp32(node.output, "__fp32", inward=False)
        nodes += [*before, node, *after]
    del graph.node[:]
    graph.node.extend(nodes)
    graph.value_info.extend(infos)
    return wrapped


def keep_file_in_fp32(path: Path) -> int:
    """keep_in_fp32 on a graph file, rewritten in place (its external data, if any, is not read)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    wrapped = keep_in_fp32(model)
    onnx.save_model(model, str(path))
    return wrapped
