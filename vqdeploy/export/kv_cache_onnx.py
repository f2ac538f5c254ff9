"""``vqdeploy::kv_write`` -> ONNX ``TensorScatter`` (opset 24): the in-place KV-cache write.

Why TensorScatter (measured on this project's CPU machine and with the TensorRT-RTX 1.7 builder;
numbers in the README's "KV cache" section):

- ONNX Runtime (1.32) runs it natively, and when the output is bound to the input's buffer it skips
  the copy: a one-token write into a (8,16,C,64) fp32 cache took 0.007 ms at C=256 and 0.014 ms at
  C=4096 (ScatterND: 0.011 / 0.020 ms, also in place; ScatterElements 0.19 ms, index-bound), with
  the aliased result exact.
- The TensorRT(-RTX) ONNX parser maps it to the KVCacheUpdate layer, whose output aliases the cache
  input (``ICudaEngine.get_aliased_input_tensor``): the update is in place there too. It requires a
  static sequence (capacity) axis, so the cache is exported at the block size. ScatterND and
  ScatterElements parse to an ordinary Scatter layer, whose output is a separate buffer: a full
  cache copy per step. TensorRT cannot bind one buffer as both an input and an output otherwise.

torch's exporter stops at opset 23, so the op is traced as a custom-domain placeholder and turned
into ``TensorScatter`` here, the graph's default opset raised to 24 (the ops a transformer graph
uses did not change meaning between 18 and 24; 19-24 only added types).
"""

from __future__ import annotations

import onnx
import onnx_ir as ir
import onnxscript
from onnx.defs import OpSchema

DOMAIN = "vqdeploy.kv"  # placeholder domain, gone after ``to_tensor_scatter``
VERSION = 1
OP_TYPE = "KVWrite"
TENSOR_SCATTER_OPSET = 24
MIN_IR_VERSION = 11

_SCHEMA = OpSchema(
    OP_TYPE,
    DOMAIN,
    VERSION,
    doc="Placeholder for TensorScatter(cache, update, write_indices, axis=2) during export.",
    inputs=[OpSchema.FormalParameter("cache", "T"), OpSchema.FormalParameter("update", "T"),
            OpSchema.FormalParameter("position", "tensor(int64)")],
    outputs=[OpSchema.FormalParameter("written", "T")],
    type_constraints=[("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], "cache tensors")],
)
if not onnx.defs.has(OP_TYPE, DOMAIN):
    onnx.defs.register_schema(_SCHEMA)

_opset = onnxscript.values.Opset(DOMAIN, VERSION)


def translate(cache: object, update: object, position: object) -> object:
    """Custom translation for ``torch.ops.vqdeploy.kv_write.default``."""
    return _opset.KVWrite(cache, update, position)


def replace_placeholder(node: ir.Node, replacement: ir.Node) -> None:
    """Put ``replacement`` where the placeholder ``node`` is: its outputs take the placeholder's names, shapes and
    types (graph outputs included), and the placeholder goes."""
    graph = node.graph
    assert graph is not None
    graph.insert_before(node, [replacement])
    for old, new in zip(node.outputs, replacement.outputs):
        name = old.name
        old.name = f"{name}__placeholder"
        new.name = name
        new.shape, new.type = old.shape, old.type
        old.replace_all_uses_with(new, replace_graph_outputs=True)
    graph.remove(node, safe=True)


def to_tensor_scatter(model: ir.Model) -> bool:
    """Replace the placeholders by TensorScatter(axis=2, linear) whose per-sample write indices are the
    (B,) ``position`` input as it is; returns whether the graph had any."""
    nodes = [n for n in model.graph.all_nodes() if n.domain == DOMAIN and n.op_type == OP_TYPE]
    if not nodes:
        return False
    for node in nodes:
        cache, update, position = node.inputs
        assert cache is not None and update is not None and position is not None
        scatter = ir.node("TensorScatter", [cache, update, position],
                          attributes={"axis": 2, "mode": "linear"}, name=f"{node.name}_scatter")
        replace_placeholder(node, scatter)
    model.opset_imports[""] = max(model.opset_imports.get("", 0), TENSOR_SCATTER_OPSET)
    model.opset_imports.pop(DOMAIN, None)
    model.ir_version = max(model.ir_version, MIN_IR_VERSION)
    return True
