"""``export --quantize int8|int4``: weight-only quantization of the transformer graph.

What is quantized: every ``MatMul`` whose second input is a constant 2-D weight of one use, i.e. the GPT's
linear layers: the query/key/value projections (one packed MatMul in both families' graphs) and proj of each
attention, the MLP projections and the head (lm_head). They are read in full for every generated token, so their
bytes are the per-token bandwidth floor (99.5% of the S-FLCKR-sized transformer's weights). Left at the export
precision: the token and position embeddings (``Gather``: one row per token is read, so quantizing them saves
memory, not time, and they are 0.5% of the bytes), LayerNorm parameters and biases (tiny), the attention
(activations x activations), shared constants such as LlamaGen's rotary ``turn`` and the KV cache. The VQGAN graphs
are not touched.

How: each weight W (K, N) becomes ``DequantizeLinear(Wq, scale, axis=0, block_size=B) -> MatMul``:
symmetric signed int4/int8 codes (no zero point: TensorRT takes only zero offsets), one scale per
block of B consecutive input channels (K) per output channel, the scale in the graph's precision
(fp32 or fp16), so that the dequantized weight and every activation stay at the export precision.
This is standard ONNX (opset 21+ blocked ``DequantizeLinear``) that both runtimes read natively:
ONNX Runtime fuses the pair into its ``MatMulNBits`` kernel (graph optimization level >= extended:
weight and scale constant initializers, axis 0, block size a power of two >= 16), and TensorRT(-RTX)
parses it into a dequantize layer feeding the matmul (weight-only GEMM).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from vqdeploy.errors import ConfigError

SCHEMES = ("int8", "int4")
BITS = {"int8": 8, "int4": 4}
# Block size along K (input channels) per scheme; chosen by measurement (README, "Weight-only int8/int4").
DEFAULT_BLOCK = {"int8": 128, "int4": 32}
MIN_BLOCK = 16  # ONNX Runtime's fusion: a power of two >= 16
MAX_BLOCK = 1024  # past it a scale spans most of a row: nothing left to gain in bytes, much to lose in error


def check_block(block: int) -> int:
    """``--quantize-block``: a power of two from MIN_BLOCK to MAX_BLOCK (ONNX Runtime fuses only those)."""
    if isinstance(block, bool) or not isinstance(block, int) or not MIN_BLOCK <= block <= MAX_BLOCK \
            or block & (block - 1):
        raise ConfigError(f"--quantize-block {str(block)[:20]}: expected a power of two from {MIN_BLOCK} to "
                          f"{MAX_BLOCK}")
    return block


@dataclass
class QuantizedLayer:
    name: str
    k: int
    n: int
    block: int
    max_abs_error: float  # max |W - dequantize(quantize(W))|


def block_for(k: int, block: int) -> int | None:
    """The block actually used for a K-long input axis: ``block`` if it divides K, else the largest
    power of two >= 16 below it that does (a ragged last block is valid ONNX, but every consumer
    would have to handle it); None when none does (the layer stays unquantized)."""
    b = block
    while b >= MIN_BLOCK:
        if k % b == 0:
            return b
        b //= 2
    return None


def quantize_blocks(w: np.ndarray, bits: int, block: int, clip_search: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric blocked quantization of W (K, N) along K: codes int8 (K, N) in [-2^(b-1), 2^(b-1)-1]
    and scales (K / block, N) float32 such that W ~ codes * repeat(scales, block, axis=0).

    ``clip_search``: per block, try scales from the block's max |w| shrunk by up to 15% and keep the one
    with the smallest squared error (a clipped outlier costs less than a coarser step for all others);
    it matters for int4 (7 positive steps), little for int8."""
    k, n = w.shape
    qmax = 2 ** (bits - 1) - 1
    wb = w.astype(np.float32).reshape(k // block, block, n)
    amax = np.abs(wb).max(axis=1)  # (K/B, N)
    best_scale = np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)
    if clip_search:
        best_err = None
        for ratio in (1.0, 0.95, 0.9, 0.85):
            scale = np.where(amax > 0, amax * ratio / qmax, 1.0).astype(np.float32)
            q = np.clip(np.rint(wb / scale[:, None, :]), -qmax - 1, qmax)
            err = ((q * scale[:, None, :] - wb) ** 2).sum(axis=1)
            if best_err is None:
                best_err = err
                continue
            better = err < best_err
            best_scale = np.where(better, scale, best_scale)
            best_err = np.where(better, err, best_err)
    codes = np.clip(np.rint(wb / best_scale[:, None, :]), -qmax - 1, qmax).astype(np.int8)
    return codes.reshape(k, n), best_scale


def dequantize_blocks(codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
    block = codes.shape[0] // scales.shape[0]
    return codes.astype(np.float32) * np.repeat(scales, block, axis=0)


def quantize_model(model: Any, scheme: str, block: int | None = None) -> list[QuantizedLayer]:
    """Rewrite every constant-weight MatMul of ``model`` (an ``onnx_ir.Model``) in place as blocked
    ``DequantizeLinear -> MatMul``; returns what was quantized."""
    import ml_dtypes
    import onnx_ir as ir

    bits = BITS[scheme]
    block = DEFAULT_BLOCK[scheme] if block is None else block
    code_dtype = ml_dtypes.int4 if bits == 4 else np.int8
    graph = model.graph
    done: list[QuantizedLayer] = []
    for index, node in enumerate(list(graph)):
        if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 2:
            continue
        weight = node.inputs[1]
        if weight is None or weight.const_value is None or not weight.is_initializer():
            continue
        w = weight.const_value.numpy()
        if w.ndim != 2 or w.dtype not in (np.float32, np.float16) or len(weight.uses()) != 1:
            continue
        k, n = w.shape
        b = block_for(k, block)
        if b is None:
            continue
        codes, scales = quantize_blocks(w, bits, b)
        err = float(np.abs(dequantize_blocks(codes, scales) - w.astype(np.float32)).max())
        name = f"{weight.name or node.name or 'matmul'}_{index}"
        values = []
        for suffix, array in ((f"q{bits}", codes.astype(code_dtype)), ("scale", scales.astype(w.dtype))):
            tensor = ir.Tensor(array, name=f"{name}_{suffix}")
            v = ir.Value(name=tensor.name, const_value=tensor, shape=ir.Shape(array.shape), type=ir.TensorType(tensor.dtype))
            graph.register_initializer(v)
            values.append(v)
        q_val, s_val = values
        dq = ir.node("DequantizeLinear", [q_val, s_val], attributes={"axis": 0, "block_size": b},
                     name=f"{name}_dequantize")
        dq.outputs[0].name = f"{name}_dq"
        dq.outputs[0].shape, dq.outputs[0].type = ir.Shape([k, n]), ir.TensorType(ir.DataType.from_numpy(w.dtype))
        graph.insert_before(node, dq)
        node.replace_input_with(1, dq.outputs[0])
        graph.initializers.pop(weight.name)  # type: ignore[arg-type]
        done.append(QuantizedLayer(weight.name or name, k, n, b, err))
    return done


def quantization_entry(scheme: str, layers: list[QuantizedLayer], parameters: int, precision: str,
                       block: int | None = None) -> dict[str, Any]:
    """The manifest's ``quantization``: what was quantized and the transformer's weight bytes (what a
    token step reads: codes and scales of the quantized layers, the rest at the export precision)."""
    bits = BITS[scheme]
    elem = 4 if precision == "fp32" else 2
    quantized = sum(layer.k * layer.n for layer in layers)
    q_bytes = sum(layer.k * layer.n * bits // 8 + (layer.k // layer.block) * layer.n * elem for layer in layers)
    return {
        "scheme": scheme, "graphs": ["transformer"], "block_size": block or DEFAULT_BLOCK[scheme],
        "layers": len(layers),
        "weights": f"{'signed int4' if bits == 4 else 'int8'} codes, symmetric (no zero point), one {precision} scale "
                   f"per block of input channels per output channel (DequantizeLinear axis 0, block_size) -> MatMul",
        "quantized": "attention query/key/value/proj, MLP fc1/fc2, head (every MatMul with a constant weight)",
        "kept": f"token and position embeddings, LayerNorms, biases, the KV cache and all activations in {precision}",
        "quantized_parameters": quantized,
        "block_sizes": sorted({layer.block for layer in layers}),
        "max_abs_weight_error": max((layer.max_abs_error for layer in layers), default=0.0),
        "weight_bytes": q_bytes + (parameters - quantized) * elem,
    }
