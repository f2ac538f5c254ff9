"""``vqdeploy::NearestCode``: the ONNX side of the ``vqdeploy::nearest_code`` torch op.

The exporter translates the torch op into one node of the custom domain (a primitive call, so
the exporter's inliner leaves it alone); ``attach_function`` then adds the op's definition as an
ONNX model-local function (squared distance via MatMul, then ArgMin). A runtime that knows the
op may run a fused kernel; any other runtime (ONNX Runtime, the TensorRT parser) inlines the
body, so the graph runs everywhere without a plugin.

Inputs: ``latent`` (B,C,h,w) and ``codebook`` (K,C), both float (fp32 in our graphs);
output: int64 ``indices`` (B,h,w), the first index of the minimum distance, as torch.argmin.
"""

from __future__ import annotations

import onnx
import onnx_ir as ir
import onnxscript
from onnx.defs import OpSchema
from onnxscript import opset18 as op

DOMAIN = "vqdeploy"
VERSION = 1
OP_TYPE = "NearestCode"

_SCHEMA = OpSchema(
    OP_TYPE,
    DOMAIN,
    VERSION,
    doc="Index of the nearest codebook row (squared L2) for every latent vector.",
    inputs=[OpSchema.FormalParameter("latent", "T"), OpSchema.FormalParameter("codebook", "T")],
    outputs=[OpSchema.FormalParameter("indices", "tensor(int64)")],
    type_constraints=[("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], "float tensors")],
)
if not onnx.defs.has(OP_TYPE, DOMAIN):
    onnx.defs.register_schema(_SCHEMA)

_opset = onnxscript.values.Opset(DOMAIN, VERSION)


@onnxscript.script(_opset, default_opset=op)
def NearestCode(latent, codebook):
    # flattened to one (B, h*w, C) x (C, K) MatMul: TensorRT's Myelin backend rejects the 4-D form
    shape = op.Shape(latent)
    b = op.Slice(shape, op.Constant(value_ints=[0]), op.Constant(value_ints=[1]))
    c = op.Slice(shape, op.Constant(value_ints=[1]), op.Constant(value_ints=[2]))
    hw = op.Slice(shape, op.Constant(value_ints=[2]), op.Constant(value_ints=[4]))
    z = op.Transpose(op.Reshape(latent, op.Concat(b, c, op.Constant(value_ints=[-1]), axis=0)), perm=[0, 2, 1])
    zz = op.ReduceSumSquare(z, op.Constant(value_ints=[-1]), keepdims=1)  # B,hw,1
    ee = op.ReduceSumSquare(codebook, op.Constant(value_ints=[1]), keepdims=0)  # K
    ze = op.MatMul(z, op.Transpose(codebook, perm=[1, 0]))  # B,hw,K
    two = op.CastLike(op.Constant(value_float=2.0), ze)
    d = op.Sub(op.Add(zz, ee), op.Mul(two, ze))
    idx = op.ArgMin(d, axis=-1, keepdims=0, select_last_index=0)  # first minimum, as torch.argmin
    return op.Reshape(idx, op.Concat(b, hw, axis=0))


def translate(latent: object, codebook: object) -> object:
    """Custom translation for ``torch.ops.vqdeploy.nearest_code.default``."""
    return _opset.NearestCode(latent, codebook)


def attach_function(model: ir.Model) -> bool:
    """Add the model-local function body if the graph uses the op; returns whether it did."""
    uses = any(node.domain == DOMAIN and node.op_type == OP_TYPE for node in model.graph.all_nodes())
    if not uses:
        return False
    fn = ir.serde.deserialize_function(NearestCode.to_function_proto())
    fn.opset_imports[""] = model.opset_imports[""]  # the body's ops are unchanged from opset 18 on
    model.functions[fn.identifier()] = fn
    model.opset_imports[DOMAIN] = VERSION
    return True
