"""GraphSpec -> a clean ONNX file: dynamo exporter, symbolic B/C, shape inference, onnx.checker.

`export_onnx(spec, path)` exports `spec.module` at the spec's example inputs (B, C >= 2, because exporters
silently fix dims they see as 1), then checks what it wrote and fails loudly when:
- a dim named "B" or "C" in the spec is not symbolic (with that name) in the saved graph,
- an input is named like a mask (the isolation must be inside the graph),
- the graph does not pass `onnx.checker` (full check, with strict shape inference),
- a bf16 graph computes Softmax / RMSNorm (ReduceMean, Sqrt, Reciprocal) or its float outputs in bf16.
Constant folding is the exporter's onnxscript optimizer pass (`optimize=True`); then `divide_by_sqrt` turns
the RMSNorms' x * Reciprocal(Sqrt(v)) into x / Sqrt(v), the form ONNX Runtime fuses into one
SimplifiedLayerNormalization kernel (measured: ~100 fewer operators per mini ranker call). Graphs whose weights
exceed 2 GB (the protobuf limit) keep their weights in `<file>.data` next to the graph (external data).
"""
from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

from export.graphs import GraphSpec
from phoenix_runtime.manifest import Artifact

OPSET = 18                      # TensorRT 10.0+ parses opsets 9..20; ONNX Runtime 1.18+ runs 18
EXTERNAL_DATA_ABOVE = 1800 << 20  # weight bytes; a ModelProto above 2 GiB cannot be serialized in one piece
FLOAT_ONLY_OPS = ("Softmax", "ReduceMean", "Sqrt", "Reciprocal", "RMSNormalization", "LayerNormalization")
ONNX_DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.INT32: "int32", onnx.TensorProto.INT64: "int64",
               onnx.TensorProto.BFLOAT16: "bfloat16", onnx.TensorProto.FLOAT16: "float16",
               onnx.TensorProto.BOOL: "bool"}


# Messages of the exporter that say nothing about our graphs: the torchvision op registry (not a
# dependency) and onnx_ir's note about empty attribute lists (it picks INTS, which is right here).
for _name in ("torch.onnx._internal.exporter._registration", "onnx_ir._convenience"):
    logging.getLogger(_name).setLevel(logging.ERROR)


class OnnxExportError(RuntimeError):
    """The exported graph breaks the serving contract (named in the message)."""


def module_bytes(module: torch.nn.Module) -> int:
    tensors = {id(t): t for t in [*module.parameters(), *module.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def export_onnx(spec: GraphSpec, path, opset: int = OPSET, root=None, external_data: bool | None = None) -> Artifact:
    """Export `spec` to `path`; return its artifact (path relative to `root` when given)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if external_data is None:
        external_data = module_bytes(spec.module) > EXTERNAL_DATA_ABOVE
    start = time.perf_counter()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            spec.module, tuple(spec.example_inputs[n] for n in spec.input_names), dynamo=True,
            input_names=spec.input_names, output_names=spec.output_names, opset_version=opset,
            dynamic_shapes=spec.torch_dynamic_shapes(), optimize=True, verbose=False)
    for old in path.parent.glob(path.name + ".data"):
        old.unlink()
    program.save(str(path), external_data=external_data)
    del program
    model = onnx.load(str(path), load_external_data=False)
    divide_by_sqrt(model)
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    check_graph(model, spec, opset)
    onnx.save(model, str(path))            # keeps the external-data references as they are
    onnx.checker.check_model(str(path), full_check=True)
    return Artifact(name=f"{spec.name}_onnx", model=spec.name, kind="onnx",
                    path=str(path.relative_to(root)) if root else str(path), precision=spec.precision,
                    inputs=[t.to_dict() for t in spec.inputs], outputs=[t.to_dict() for t in spec.outputs],
                    files=[path.name + ".data"] if external_data else [],
                    info={"opset": opset, "export_s": round(time.perf_counter() - start, 2)})


def divide_by_sqrt(model: onnx.ModelProto) -> int:
    """Rewrite Mul(x, Reciprocal(Sqrt(v))) as Div(x, Sqrt(v)) wherever that Reciprocal feeds only the Mul;
    returns how many. The same value up to float rounding (the build's parity check holds it to the
    tolerance), in the pattern ONNX Runtime's SimplifiedLayerNormFusion recognises."""
    graph = model.graph
    producer = {out: n for n in graph.node for out in n.output}
    uses: dict[str, int] = {}
    for n in graph.node:
        for name in n.input:
            uses[name] = uses.get(name, 0) + 1
    for out in graph.output:
        uses[out.name] = uses.get(out.name, 0) + 1
    dropped = []
    for node in graph.node:
        if node.op_type != "Mul" or node.domain not in ("", "ai.onnx"):
            continue
        for side, name in enumerate(node.input):
            recip = producer.get(name)
            if recip is None or recip.op_type != "Reciprocal" or uses.get(name) != 1:
                continue
            sqrt = producer.get(recip.input[0])
            if sqrt is None or sqrt.op_type != "Sqrt":
                continue
            other = node.input[1 - side]
            node.op_type = "Div"
            del node.input[:]
            node.input.extend([other, recip.input[0]])
            dropped.append(recip)
            break
    for recip in dropped:
        graph.node.remove(recip)
    return len(dropped)


def write_cpu_bf16(artifact: Artifact, root) -> Artifact:
    """The graph ONNX Runtime's CPU provider serves for a bf16 build (`<name>.cpu.onnx`): bf16 computed in
    float32 and rounded to bf16 where produced (emulate_bf16), the values a bf16-storage / fp32-accumulate
    device computes. The original graph stays for GPU engines (recorded with device "cuda")."""
    root = Path(root)
    src = root / artifact.path
    dst = src.with_name(src.stem + ".cpu.onnx")
    onnx.save(emulate_bf16(onnx.load(str(src))), str(dst))
    artifact.device = "cuda"
    return Artifact(name=f"{artifact.name}_cpu", model=artifact.model, kind="onnx",
                    path=str(dst.relative_to(root)), precision=artifact.precision, inputs=artifact.inputs,
                    outputs=artifact.outputs, device="cpu", info={**artifact.info, "bf16_emulated": True})


# ---------------------------------------------------------------------------------------------- checks

def graph_dims(value_info) -> list:
    """[dim_param or dim_value or None, ...] of a graph input/output."""
    return [d.dim_param or (d.dim_value if d.HasField("dim_value") else None)
            for d in value_info.type.tensor_type.shape.dim]


def elem_types(model: onnx.ModelProto) -> dict[str, int]:
    g = model.graph
    types = {t.name: t.data_type for t in g.initializer}
    for v in [*g.input, *g.output, *g.value_info]:
        types[v.name] = v.type.tensor_type.elem_type
    for n in g.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    types[n.output[0]] = a.t.data_type
    return types


def check_graph(model: onnx.ModelProto, spec: GraphSpec, opset: int):
    """Raise OnnxExportError naming the first broken rule of the serving contract."""
    g = model.graph
    opsets = {o.domain: o.version for o in model.opset_import}
    if opsets.get("", opsets.get("ai.onnx")) != opset:
        raise OnnxExportError(f"{spec.name}: graph has opset {opsets}, expected {opset}")
    names = [i.name for i in g.input]
    if names != spec.input_names:
        raise OnnxExportError(f"{spec.name}: graph inputs {names} differ from the spec {spec.input_names}")
    if [o.name for o in g.output] != spec.output_names:
        raise OnnxExportError(f"{spec.name}: graph outputs {[o.name for o in g.output]} differ from "
                              f"the spec {spec.output_names}")
    masks = [n for n in names if "mask" in n.lower()]
    if masks:
        raise OnnxExportError(f"{spec.name}: input(s) {masks} look like a mask; isolation must be in the graph")
    for vi, ts in [*zip(g.input, spec.inputs), *zip(g.output, spec.outputs)]:
        dims = graph_dims(vi)
        if len(dims) != len(ts.shape):
            raise OnnxExportError(f"{spec.name}: {ts.name} has rank {len(dims)} in the graph, {len(ts.shape)} in the spec")
        for axis, (got, want) in enumerate(zip(dims, ts.shape)):
            if isinstance(want, str) and got != want:
                raise OnnxExportError(
                    f"{spec.name}: {ts.name} axis {axis} should be the symbolic dim {want!r} but the exported "
                    f"graph has {got!r} (the exporter fixed a dynamic dim)")
            if not isinstance(want, str) and got != want:
                raise OnnxExportError(f"{spec.name}: {ts.name} axis {axis} is {got!r} in the graph, {want} in the spec")
        got_dtype = ONNX_DTYPES.get(vi.type.tensor_type.elem_type, str(vi.type.tensor_type.elem_type))
        if got_dtype != ts.dtype:
            raise OnnxExportError(f"{spec.name}: {ts.name} is {got_dtype} in the graph, {ts.dtype} in the spec")
    check_float32_islands(model, spec.name)


def check_float32_islands(model: onnx.ModelProto, name: str = "graph"):
    """Softmax, RMSNorm pieces (ReduceMean, Sqrt, Reciprocal) and float outputs must be float32."""
    types = elem_types(model)
    for node in model.graph.node:
        if node.op_type in FLOAT_ONLY_OPS:
            for t in [node.input[0], node.output[0]]:
                if types.get(t) not in (None, onnx.TensorProto.FLOAT):
                    raise OnnxExportError(
                        f"{name}: {node.op_type} node {node.name!r} runs in "
                        f"{ONNX_DTYPES.get(types[t], types[t])}; softmax and RMSNorm must stay float32")
    for o in model.graph.output:
        if o.type.tensor_type.elem_type in (onnx.TensorProto.BFLOAT16, onnx.TensorProto.FLOAT16):
            raise OnnxExportError(f"{name}: output {o.name} is not float32")


def op_types(model: onnx.ModelProto) -> set[str]:
    """Every op type in the graph, including nested subgraphs and local functions."""
    ops = set()

    def walk(graph):
        for n in graph.node:
            ops.add(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}")
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    walk(a.g)
                for sub in a.graphs:
                    walk(sub)
    walk(model.graph)
    for f in model.functions:
        ops.update(n.op_type for n in f.node)
    return ops


# ---------------------------------------------------------------------------------------------- bf16 on CPU

def emulate_bf16(model):
    """A copy of an ONNX model where bf16 tensors are computed in float32 and rounded to bf16 where produced."""
    from onnx import TensorProto, helper, numpy_helper

    bf16, f32 = TensorProto.BFLOAT16, TensorProto.FLOAT

    def as_f32(t):
        return numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32), t.name)

    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    g = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.input, *g.output, *g.value_info]}
    for i, t in enumerate(g.initializer):
        if t.data_type == bf16:
            g.initializer[i].CopyFrom(as_f32(t))
    nodes = []
    for n in g.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == bf16:
                a.t.CopyFrom(as_f32(a.t))
            if n.op_type == "Cast" and a.name == "to" and a.i == bf16:
                a.i = f32
        rounded = [(i, o) for i, o in enumerate(n.output) if types.get(o) == bf16]
        for i, o in rounded:
            n.output[i] = f"{o}__f32"
        nodes.append(n)
        for _, o in rounded:
            nodes.append(helper.make_node("Cast", [f"{o}__f32"], [f"{o}__bf16"], to=bf16))
            nodes.append(helper.make_node("Cast", [f"{o}__bf16"], [o], to=f32))
    del g.node[:]
    g.node.extend(nodes)
    for v in [*g.input, *g.output]:
        if v.type.tensor_type.elem_type == bf16:
            v.type.tensor_type.elem_type = f32
    del g.value_info[:]
    return model
