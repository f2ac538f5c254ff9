"""``fused_gpt``: the form of minGPT taming's transformer graphs compute. It must be the same function as the loaded
model (cached steps against the model's own full-sequence forward), leave the loaded model as it was, and give
ONNX Runtime the graph it fuses (the point of it: fewer nodes per step)."""

from __future__ import annotations

import collections
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

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
