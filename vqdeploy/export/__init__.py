"""ONNX export: one graph per stage, the NearestCode custom op, manifest and parity."""

DEFAULT_OPSET = 18
# ONNX allows bfloat16 in Conv, Gemm, ... from opset 22 on
BF16_MIN_OPSET = 22


def default_opset(precision: str) -> int:
    return BF16_MIN_OPSET if precision == "bf16" else DEFAULT_OPSET
