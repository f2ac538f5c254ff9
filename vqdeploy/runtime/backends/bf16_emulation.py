"""Run a bfloat16 graph on ONNX Runtime CPU, which has no bf16 kernels, by emulation.

The rewritten graph computes every former bf16 tensor in fp32 and rounds it to bf16 at each node
output (a Cast to bf16 and back, which ONNX Runtime keeps through its optimizer). That is how a GPU
bf16 kernel behaves: fp32 accumulation, bf16 storage. Weights are widened exactly (every bf16
value is an fp32 value). Graph inputs and outputs keep their bf16 type, so the runtime binds the
same buffers it would bind for a native bf16 session.

A GPU runtime fuses ops and so rounds less often than this; the emulation is therefore a
slightly pessimistic stand-in for the export-time parity check, never a faster path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from vqdeploy.errors import ArtifactError

BF16 = TensorProto.BFLOAT16
FLOAT = TensorProto.FLOAT
_MAX_BYTES = 1_900_000_000  # one serialized protobuf


def _widen_tensor(t: TensorProto) -> TensorProto:
    if t.data_type != BF16:
        return t
    return numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32), t.name)


def _widen_attributes(node: onnx.NodeProto) -> None:
    for a in node.attribute:
        if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == BF16:
            a.t.CopyFrom(_widen_tensor(a.t))
        elif a.type == onnx.AttributeProto.INT and a.name in ("to", "dtype") and a.i == BF16:
            a.i = FLOAT
        elif a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
            raise ArtifactError(f"bf16 emulation: node '{node.name}' ({node.op_type}) has a subgraph; not supported")


def emulate_bf16(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose bf16 arithmetic runs in fp32 with bf16 rounding at node outputs."""
    if {v.name for v in model.graph.output} & {v.name for v in model.graph.input}:
        raise ArtifactError("bf16 emulation: a graph output is also a graph input; not supported")
    model = onnx.shape_inference.infer_shapes(model)
    g = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*g.input, *g.output, *g.value_info)}
    types.update({t.name: t.data_type for t in g.initializer})

    inits = [_widen_tensor(t) for t in g.initializer]
    del g.initializer[:]
    g.initializer.extend(inits)

    nodes: list[onnx.NodeProto] = []
    rename: dict[str, str] = {}
    for v in g.input:  # bf16 inputs: widen once at the entry
        if v.type.tensor_type.elem_type == BF16:
            rename[v.name] = f"{v.name}__fp32"
            nodes.append(helper.make_node("Cast", [v.name], [rename[v.name]], to=FLOAT, name=f"{v.name}__widen"))
    outputs = {v.name for v in g.output}
    for node in g.node:
        _widen_attributes(node)
        node.input[:] = [rename.get(i, i) for i in node.input]
        nodes.append(node)
        for k, out in enumerate(node.output):
            if types.get(out) != BF16:
                continue
            raw = f"{out}__fp32raw"
            node.output[k] = raw
            if out in outputs:  # graph output: stays bf16; later nodes read it widened
                rename[out] = f"{out}__fp32"
                nodes.append(helper.make_node("Cast", [raw], [out], to=BF16, name=f"{out}__out"))
                nodes.append(helper.make_node("Cast", [out], [rename[out]], to=FLOAT, name=f"{out}__widen"))
                continue
            nodes.append(helper.make_node("Cast", [raw], [f"{out}__bf16"], to=BF16, name=f"{out}__round"))
            nodes.append(helper.make_node("Cast", [f"{out}__bf16"], [out], to=FLOAT, name=f"{out}__widen"))
    del g.node[:]
    g.node.extend(nodes)
    del g.value_info[:]  # stale types; ONNX Runtime infers them again
    return model


def load_emulated(path: Path) -> bytes:
    """The emulated model of ``path`` (external data resolved), serialized for InferenceSession."""
    model = onnx.load(str(path))
    emulated = emulate_bf16(model)
    if emulated.ByteSize() > _MAX_BYTES:
        raise ArtifactError(f"{path}: the fp32 emulation of this bf16 graph is over 2 GB; run it on a GPU runtime")
    return emulated.SerializeToString()
