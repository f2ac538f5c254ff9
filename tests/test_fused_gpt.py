"""``fused_gpt`` (taming's and LlamaGen's): the form of the GPT the transformer graphs compute. It must be the same
function as the loaded model (cached steps against the model's own full-sequence forward), leave the loaded model as
it was, and give ONNX Runtime the graph it fuses (the point of it: fewer nodes per step)."""

from __future__ import annotations

import collections
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from vqdeploy.families.llamagen.fused_gpt import fused_gpt as llama_fused
from vqdeploy.families.llamagen.fused_gpt import rotate as llama_rotate
from vqdeploy.families.llamagen.gpt import Transformer as LlamaGPT
from vqdeploy.families.llamagen.gpt import apply_rotary_emb
from vqdeploy.families.taming.fused_gpt import FusableGelu, PackedSelfAttention, fused_gpt
from vqdeploy.models.kv_cache import forward_cached
from vqdeploy.models.mingpt import GPT


def _gpt(n_unmasked: int = 0) -> GPT:
    torch.manual_seed(0)
    gpt = GPT(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=16, n_unmasked=n_unmasked).eval()
    with torch.no_grad():  # upstream's init zeroes the biases: give them values, so that packing them is tested
        for m in gpt.modules():
            if isinstance(m, nn.Linear) and m.bias is not None:
                m.bias.normal_(0, 0.1)
    return gpt


@pytest.mark.parametrize("n_unmasked", [0, 4])
def test_the_fused_form_is_the_model(n_unmasked: int) -> None:
    gpt = _gpt(n_unmasked)
    fused = fused_gpt(gpt)
    seq = torch.randint(0, 40, (2, 12))
    with torch.no_grad():
        full, _ = gpt(seq)
        prefill, cache = forward_cached(fused, seq[:, :6])
        steps = [forward_cached(fused, seq[:, i : i + 1], cache)[0] for i in range(6, 12)]
    got = torch.cat([prefill, *steps], dim=1)
    # float rounding (packed GEMM, GELU order, cached steps): measured at most 6e-8 on logits of about 0.27
    torch.testing.assert_close(got, full, rtol=0, atol=1e-6)


def test_the_fused_form_shares_the_weights_and_leaves_the_model_as_it_was() -> None:
    gpt = _gpt()
    before = {k: v.clone() for k, v in gpt.state_dict().items()}
    fused = fused_gpt(gpt)
    for block, fblock in zip(gpt.blocks, fused.blocks):
        assert isinstance(fblock.attn, PackedSelfAttention) and isinstance(fblock.mlp[1], FusableGelu)
        assert type(block.attn).__name__ == "CausalSelfAttention" and isinstance(block.mlp[1], nn.GELU)
        assert fblock.attn.proj is block.attn.proj and fblock.mlp[0] is block.mlp[0] and fblock.ln1 is block.ln1
        q, k, v = block.attn.query, block.attn.key, block.attn.value
        torch.testing.assert_close(fblock.attn.qkv.weight, torch.cat([q.weight, k.weight, v.weight]), rtol=0, atol=0)
    assert fused.tok_emb is gpt.tok_emb and fused.head is gpt.head
    assert gpt.state_dict().keys() == before.keys()  # key-for-key with the checkpoint still
    assert all(torch.equal(gpt.state_dict()[k], v) for k, v in before.items())


def _ops_after_onnxruntime(path: Path, tmp_path: Path) -> collections.Counter[str]:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.optimized_model_filepath = str(tmp_path / f"optimized-{path.name}")
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return collections.Counter(n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node)


@pytest.mark.parametrize("graph", ["transformer", "transformer_valid_length"])
def test_onnxruntime_fuses_the_exported_graph(demo_export: Path, tmp_path: Path, graph: str) -> None:
    """The demo (4 layers): per layer one MatMul for the three projections, and GELU fused into BiasGelu; the
    valid-length graph has no Reshape into heads (measured: 132 nodes before the fused form, 74 after)."""
    model = onnx.load(str(demo_export / f"{graph}.onnx"))
    layers = 4
    assert collections.Counter(n.op_type for n in model.graph.node)["Split"] == layers  # the packed projections
    ops = _ops_after_onnxruntime(demo_export / f"{graph}.onnx", tmp_path)
    assert ops["BiasGelu"] == layers and "Erf" not in ops
    matmuls = ops["MatMul"] + ops.get("FusedMatMul", 0)
    if graph == "transformer_valid_length":
        assert matmuls == 4 * layers + 1  # qkv, proj, fc1, fc2; the head
        assert ops["Reshape"] <= 3 and sum(ops.values()) <= 80
    else:
        assert matmuls == 6 * layers + 1  # and the two attention products


# --- LlamaGen ----------------------------------------------------------------------------------------------------
def _llamagen() -> LlamaGPT:
    torch.manual_seed(0)
    gpt = LlamaGPT(dim=32, n_layer=2, n_head=4, vocab_size=50, class_rows=11, hidden=96, block_size=16).eval()
    with torch.no_grad():  # RMSNorm weights start at 1: give them values, so that sharing them is tested
        for name, p in gpt.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return gpt


def test_llamagen_rotation_is_upstreams_to_the_bit() -> None:
    gpt = _llamagen()
    fused = llama_fused(gpt)
    positions = torch.tensor([[0, 3, 7], [15, 2, 9]])
    x = torch.randn(2, 3, 4, 8)
    cos, sin, turn = fused.rotary_at(positions)
    assert torch.equal(llama_rotate(x, cos, sin, turn), apply_rotary_emb(x, gpt.rotary_at(positions)))


def test_llamagen_fused_form_is_the_model() -> None:
    gpt = _llamagen()
    before = {k: v.clone() for k, v in gpt.state_dict().items()}
    fused = llama_fused(gpt)
    seq = torch.randint(0, 11, (2, 14))
    with torch.no_grad():
        full = gpt(seq)
        prefill, cache = forward_cached(fused, seq[:, :5])
        steps = [forward_cached(fused, seq[:, i : i + 1], cache)[0] for i in range(5, 14)]
    got = torch.cat([prefill, *steps], dim=1)
    # float rounding (RMSNorm's division against upstream's rsqrt, the packed GEMMs): measured at most 6e-7 on logits
    # of about 1.9 (4 seeds)
    torch.testing.assert_close(got, full, rtol=0, atol=5e-6)
    assert type(gpt).__name__ == "Transformer" and type(gpt.layers[0].attention).__name__ == "Attention"
    assert not hasattr(gpt, "rotary_cos") and gpt.state_dict().keys() == before.keys()
    assert all(torch.equal(gpt.state_dict()[k], v) for k, v in before.items())
    block, fblock = gpt.layers[0], fused.layers[0]
    assert fblock.attention.wqkv is block.attention.wqkv and fblock.attention_norm.weight is block.attention_norm.weight
    assert torch.equal(fblock.feed_forward.w13.weight, torch.cat([block.feed_forward.w1.weight,
                                                                  block.feed_forward.w3.weight]))


@pytest.mark.parametrize("graph", ["transformer", "transformer_valid_length"])
def test_onnxruntime_fuses_the_exported_llamagen_graph(llamagen_export: Path, tmp_path: Path, graph: str) -> None:
    """The reference pair (2 layers): every RMSNorm one SimplifiedLayerNormalization, SwiGLU's input one MatMul, no
    rotary arithmetic beyond two Muls and an Add per projection (measured: 157 nodes in the valid-length graph
    before the fused form, 80 after)."""
    layers = 2
    ops = _ops_after_onnxruntime(llamagen_export / f"{graph}.onnx", tmp_path)
    assert ops["SimplifiedLayerNormalization"] == 2 * layers + 1 and "Sqrt" not in ops and "Reciprocal" not in ops
    assert ops["QuickGelu"] == layers  # SiLU
    assert "Sub" not in ops or graph == "transformer_valid_length"  # GroupQueryAttention's row lengths use one
    if graph == "transformer_valid_length":
        assert ops["MatMul"] == 6 * layers + 1  # wqkv, two turns, w13, w2, wo; the head
        assert ops["Mul"] == 5 * layers and sum(ops.values()) <= 85
