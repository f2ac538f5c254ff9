"""``vqdeploy::cached_attention`` -> ONNX Runtime's ``GroupQueryAttention`` (com.microsoft): the cache write and
attention over each row's valid prefix only, in one node.

Why this op for ONNX Runtime, measured on this project's 2-core CPU with ONNX Runtime 1.32 (batch 8, 16 heads of
64, a cache of 1024 positions, one new token; docs/performance.md "Valid-length attention"):

- ``GroupQueryAttention`` with ``seqlens_k`` reads each row's valid prefix only: 0.05 ms at 16 valid positions,
  0.45 ms at 256, 2.0 ms at 1023. With the past and present caches bound to one buffer it also writes the new
  keys/values in place, as TensorScatter does.
- ONNX ``Attention`` (opset 24) with ``nonpad_kv_seqlen`` runs natively but reads the whole capacity whatever
  the valid length (3.6 ms at 16, 256 and 1024), as does ``Attention`` with a boolean mask (3.2-3.5 ms).
- TensorRT-RTX 1.7 parses ONNX ``Attention`` into its attention layers, but drops ``nonpad_kv_seqlen`` ("Unused
  Input"): it would attend to the padding. It cannot parse com.microsoft ops at all.

So no one op reads only the valid prefix on both runtimes: the portable ``transformer`` graph (TensorScatter and
a masked attention, what TensorRT and the C++ runtime load) stays as it is, and ONNX Runtime gets a second graph,
``transformer_valid_length``, with the same inputs and outputs where every layer's write-and-attend is this node.

The placeholder is traced as a custom-domain node and replaced here, as ``kv_cache_onnx`` does for TensorScatter.
"""

from __future__ import annotations

import onnx
import onnx_ir as ir
import onnxscript
from onnx.defs import OpSchema

from vqdeploy.export import kv_cache_onnx

DOMAIN = "vqdeploy.attention"  # placeholder domain, gone after ``to_group_query_attention``
VERSION = 1
OP_TYPE = "CachedAttention"
MS_DOMAIN = "com.microsoft"

_SCHEMA = OpSchema(
    OP_TYPE,
    DOMAIN,
    VERSION,
    doc="Placeholder for GroupQueryAttention(q, k, v, cache_k, cache_v, seqlens_k, total_sequence_length).",
    inputs=[OpSchema.FormalParameter(n, "T") for n in ("q", "k", "v", "cache_k", "cache_v")]
    + [OpSchema.FormalParameter("position", "tensor(int64)")],
    outputs=[OpSchema.FormalParameter(n, "T") for n in ("y", "cache_k_out", "cache_v_out")],
    type_constraints=[("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], "float tensors")],
    attributes=[OpSchema.Attribute("num_heads", OpSchema.AttrType.INT), OpSchema.Attribute("scale", OpSchema.AttrType.FLOAT)],
)
if not onnx.defs.has(OP_TYPE, DOMAIN):
    onnx.defs.register_schema(_SCHEMA)

_opset = onnxscript.values.Opset(DOMAIN, VERSION)


def translate(q: object, k: object, v: object, cache_k: object, cache_v: object, position: object,
              num_heads: int, scale: float) -> object:
    """Custom translation for ``torch.ops.vqdeploy.cached_attention.default``."""
    return _opset.CachedAttention(q, k, v, cache_k, cache_v, position, num_heads=num_heads, scale=scale,
                                  _num_outputs=3)


def to_group_query_attention(model: ir.Model) -> bool:
    """Replace the placeholders by GroupQueryAttention: ``seqlens_k`` = position + T - 1 per row (int32, the index
    of each row's last new token), ``total_sequence_length`` = the longest row's position + T (a prefill of every
    row from position 0 is GroupQueryAttention's "first prompt", the one case where it takes T > 1 at a batch
    above 1). The past and present caches bound to one buffer are written in place. Returns whether the graph had
    any."""
    nodes = [n for n in model.graph.all_nodes() if n.domain == DOMAIN and n.op_type == OP_TYPE]
    if not nodes:
        return False
    graph = model.graph
    first = nodes[0]
    q0, position = first.inputs[0], first.inputs[5]
    assert q0 is not None and position is not None
    # shared by every layer: the row lengths, computed once
    t = ir.node("Shape", [q0], attributes={"start": 1, "end": 2}, name="valid_length_tokens")
    last = ir.node("Add", [position, t.outputs[0]], name="valid_length_end")
    one = ir.node("Constant", [], attributes={"value": ir.tensor([1], dtype=ir.DataType.INT64)},
                  name="valid_length_one")
    sub = ir.node("Sub", [last.outputs[0], one.outputs[0]], name="valid_length_last")
    seqlens = ir.node("Cast", [sub.outputs[0]], attributes={"to": ir.DataType.INT32}, name="valid_length_seqlens_k")
    longest = ir.node("ReduceMax", [last.outputs[0]], attributes={"keepdims": 0}, name="valid_length_longest")
    total = ir.node("Cast", [longest.outputs[0]], attributes={"to": ir.DataType.INT32}, name="valid_length_total")
    graph.insert_before(first, [t, last, one, sub, seqlens, longest, total])
    for node in nodes:
        q, k, v, ck, cv, _ = node.inputs
        gqa = ir.node("GroupQueryAttention", [q, k, v, ck, cv, seqlens.outputs[0], total.outputs[0]],
                      attributes={"num_heads": node.attributes["num_heads"].as_int(),
                                  "kv_num_heads": node.attributes["num_heads"].as_int(),
                                  "scale": node.attributes["scale"].as_float()},
                      domain=MS_DOMAIN, num_outputs=3, name=f"{node.name}_gqa")
        kv_cache_onnx.replace_placeholder(node, gqa)
    model.opset_imports[MS_DOMAIN] = 1
    model.opset_imports.pop(DOMAIN, None)
    # the portable graph's opset (24, TensorScatter's), so that both are quantized alike (blocked DequantizeLinear)
    model.opset_imports[""] = max(model.opset_imports.get("", 0), kv_cache_onnx.TENSOR_SCATTER_OPSET)
    model.ir_version = max(model.ir_version, kv_cache_onnx.MIN_IR_VERSION)
    return True
