"""ONNX export: one graph per stage, the NearestCode custom op, manifest and parity."""

DEFAULT_OPSET = 18
