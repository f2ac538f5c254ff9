"""One spec per exported graph: names, dtypes, dynamic dims, sample inputs and the TensorRT
optimization profiles. The same spec drives the export, the parity check, the manifest and the
engine build, so they cannot disagree about a tensor name or a shape range.
"""

from __future__ import annotations

import copy
import inspect
import itertools
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from vqdeploy.conditions import condition_from_manifest
from vqdeploy.describe import describe
from vqdeploy.errors import ConfigError
from vqdeploy.export.graphs import TOPK_MAX, DecoderGraph, EncoderGraph, SamplerGraph, TransformerGraph
from vqdeploy.models.net2net import Net2NetTransformer
from vqdeploy.models.vqgan import VQModel
from vqdeploy.tensor_spec import Dim, TensorSpec

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "int64": torch.int64}
# export precision -> the dtype the model runs in (fp32 islands aside)
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


@dataclass
class GraphSpec:
    name: str
    module: nn.Module
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    dims: dict[str, Dim]
    # TensorRT optimization profiles: per profile, (min, opt, max) of every dim
    profiles: dict[str, dict[str, tuple[int, int, int]]] = field(default_factory=dict)
    sample_dims: dict[str, int] = field(default_factory=dict)
    id_ranges: dict[str, int] = field(default_factory=dict)  # exclusive upper bound of int64 inputs

    @property
    def file(self) -> str:
        return f"{self.name}.onnx"

    def sample_inputs(self, dims: dict[str, int] | None = None, seed: int = 0) -> tuple[torch.Tensor, ...]:
        """Random inputs of the right dtypes (token ids within range) for the given dim values."""
        dims = {**self.sample_dims, **(dims or {})}
        g = torch.Generator().manual_seed(seed)
        out = []
        for t in self.inputs:
            shape = t.concrete(dims)
            if t.dtype == "int64":
                high = self.id_ranges.get(t.name, 2)
                out.append(torch.randint(0, high, shape, generator=g))
            else:
                out.append(torch.rand(shape, generator=g).mul(2).sub(1).to(DTYPES[t.dtype]))
        return tuple(out)

    def torch_dynamic_shapes(self) -> dict[str, Any]:
        """``dynamic_shapes`` for torch.export, keyed like the wrapper's forward arguments."""
        tdims = {n: torch.export.Dim(n, min=d.min, max=d.max) for n, d in self.dims.items()}

        def axes(t: TensorSpec) -> dict[int, Any]:
            ax: dict[int, Any] = {}
            for i, d in enumerate(t.shape):
                if isinstance(d, str):
                    name, _, k = d.partition("*")
                    ax[i] = tdims[name] * int(k) if k else tdims[name]
            return ax

        # the wrappers' forward is (first, *rest): name the first argument, group the rest
        params = list(inspect.signature(self.module.forward).parameters.values())
        shapes: dict[str, Any] = {params[0].name: axes(self.inputs[0])}
        if len(self.inputs) > 1:
            rest = next(p.name for p in params if p.kind is inspect.Parameter.VAR_POSITIONAL)
            shapes[rest] = tuple(axes(t) for t in self.inputs[1:])
        return shapes

    def to_manifest(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "inputs": [_tensor_dict(t) for t in self.inputs],
            "outputs": [_tensor_dict(t) for t in self.outputs],
            "dims": {n: asdict(d) for n, d in self.dims.items()},
            "profiles": {p: {n: list(r) for n, r in dims.items()} for p, dims in self.profiles.items()},
        }


def _tensor_dict(t: TensorSpec) -> dict[str, Any]:
    return {"name": t.name, "dtype": t.dtype, "shape": list(t.shape)}


def _batch(max_batch: int, opt: int) -> Dim:
    return Dim(1, min(opt, max_batch), max_batch)


def _one_profile(dims: dict[str, Dim]) -> dict[str, dict[str, tuple[int, int, int]]]:
    return {"default": {n: (d.min, d.opt, d.max) for n, d in dims.items()}}


def _grid_dims(grid: list[int], scale: int) -> dict[str, Dim]:
    """Latent grid range, ``scale`` pixels per cell: from 1 cell up to twice the trained grid
    (sliding-window sampling)."""
    return {"latent_h": Dim(1, grid[0], 2 * grid[0], scale), "latent_w": Dim(1, grid[1], 2 * grid[1], scale)}


def _precision_copy(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """The model in ``dtype``, its floating weights converted one tensor at a time into the copy
    (deepcopy with each converted tensor in its memo): an fp32 copy of the whole model first would
    hold the weights twice in fp32 at once (a 1.4 B-parameter model: 12 GB before the half copy)."""
    if dtype == torch.float32:
        return model
    memo: dict[int, Any] = {}
    for t in itertools.chain(model.parameters(), model.buffers()):
        if t.is_floating_point() and id(t) not in memo:
            half = t.detach().to(dtype)
            memo[id(t)] = nn.Parameter(half, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else half
    m = copy.deepcopy(model, memo).to(dtype)
    for vq in m.modules():
        if isinstance(vq, VQModel):
            vq.quantize.float()  # distances / argmin / Gumbel logits stay fp32
    return m


def encoder_spec(name: str, vq: VQModel, dtype: torch.dtype, max_batch: int, batch_opt: int,
                 preprocessing: dict[str, Any] | None = None, resize_to: int = -1) -> GraphSpec:
    f = vq.downsample_factor
    res = int(vq.ddconfig["resolution"]) if resize_to < 0 else resize_to
    grid = [res // f, res // f]
    onehot = preprocessing is not None and preprocessing["kind"] == "onehot"
    if resize_to > -1:
        # the graph resizes any input to the cond size: input size is free, output grid is fixed
        in_dims = {"batch": _batch(max_batch, batch_opt), "height": Dim(1, res, 4 * res), "width": Dim(1, res, 4 * res)}
        hw: tuple[int | str, ...] = ("height", "width")
        out_hw: tuple[int | str, ...] = (grid[0], grid[1])
    else:
        in_dims = {"batch": _batch(max_batch, batch_opt), **_grid_dims(grid, f)}
        hw = (f"latent_h*{f}", f"latent_w*{f}")
        out_hw = ("latent_h", "latent_w")
    if onehot:
        inp = TensorSpec("labels", "int64", ("batch", *hw))
    else:
        inp = TensorSpec("image", "float32", ("batch", vq.in_channels, *hw))
    spec = GraphSpec(
        name=name,
        module=EncoderGraph(vq, dtype, preprocessing["num_classes"] if onehot else None, resize_to).eval(),
        inputs=[inp],
        outputs=[TensorSpec("indices", "int64", ("batch", *out_hw))],
        dims=in_dims,
        sample_dims={"batch": 2, "latent_h": grid[0], "latent_w": grid[1], "height": res, "width": res},
    )
    spec.profiles = _one_profile(spec.dims)
    spec.id_ranges = {"labels": vq.in_channels}
    return spec


def decoder_spec(vq: VQModel, dtype: torch.dtype, max_batch: int) -> GraphSpec:
    f = vq.downsample_factor
    res = int(vq.ddconfig["resolution"])
    dims = {"batch": _batch(max_batch, 4), **_grid_dims([res // f, res // f], f)}
    spec = GraphSpec(
        name="decoder",
        module=DecoderGraph(vq, dtype).eval(),
        inputs=[TensorSpec("indices", "int64", ("batch", "latent_h", "latent_w"))],
        outputs=[TensorSpec("image", "float32", ("batch", vq.out_channels, f"latent_h*{f}", f"latent_w*{f}"))],
        dims=dims,
        sample_dims={"batch": 2, "latent_h": dims["latent_h"].opt, "latent_w": dims["latent_w"].opt},
    )
    spec.profiles = _one_profile(dims)
    spec.id_ranges = {"indices": vq.vocab_size}
    return spec


def transformer_spec(model: Net2NetTransformer, dtype: torch.dtype, max_batch: int, cond_tokens: int) -> GraphSpec:
    """The KV cache is fixed-capacity (the block size: TensorRT's KVCacheUpdate needs a static
    sequence axis) and written in place, so the cache shapes never change; the profiles differ
    in the number of new tokens only (kernels tuned per phase, weights shared)."""
    gpt = model.transformer
    kv = _DTYPE_NAMES[dtype]
    block = gpt.block_size
    shape = ("batch", gpt.n_head, block, gpt.head_dim)
    inputs = [TensorSpec("tokens", "int64", ("batch", "tokens")), TensorSpec("position", "int64", (1,))]
    outputs = [TensorSpec("logits", "float32", ("batch", "tokens", gpt.vocab_size))]
    for i in range(gpt.n_layer):
        for part in ("key", "value"):
            inputs.append(TensorSpec(f"cache.{i}.{part}", kv, shape))
            outputs.append(TensorSpec(f"cache_out.{i}.{part}", kv, shape))
    dims = {"batch": _batch(max_batch, 4), "tokens": Dim(1, cond_tokens, block)}
    b = (1, min(4, max_batch), max_batch)
    spec = GraphSpec(
        name="transformer",
        module=TransformerGraph(gpt).eval(),
        inputs=inputs,
        outputs=outputs,
        dims=dims,
        profiles={
            "prefill": {"batch": b, "tokens": (1, min(cond_tokens, block), block)},
            "step": {"batch": b, "tokens": (1, 1, 1)},
        },
        sample_dims={"batch": 2, "tokens": 3},
    )
    spec.id_ranges = {"tokens": gpt.vocab_size, "position": max(1, block - 3)}
    return spec


# the sampler graph sorts the vocabulary with TopKs of K <= 3840 (TensorRT's limit), in
# ceil(V / 3840) rounds beyond 3840 tokens (``graphs.ranked_desc``); 16 rounds is where we stop
# exporting it (every released taming model has at most 16384 tokens: 5 rounds)
SAMPLER_MAX_VOCAB = 16 * TOPK_MAX


def sampler_spec(vocab_size: int, block_size: int, max_batch: int) -> GraphSpec:
    dims = {"batch": _batch(max_batch, 4), "tokens": Dim(1, 1, block_size)}
    spec = GraphSpec(
        name="sampler",
        module=SamplerGraph(vocab_size).eval(),
        inputs=[TensorSpec("logits", "float32", ("batch", "tokens", vocab_size)),
                TensorSpec("uniform", "float32", ("batch",)),
                TensorSpec("temperature", "float32", (1,)),
                TensorSpec("top_k", "int64", (1,)),
                TensorSpec("top_p", "float32", (1,))],
        outputs=[TensorSpec("tokens", "int64", ("batch", 1))],
        dims=dims,
        sample_dims={"batch": 2, "tokens": 3},
    )
    spec.profiles = _one_profile(dims)
    spec.id_ranges = {"top_k": vocab_size + 1}
    return spec


def graph_specs(model: nn.Module, precision: str = "fp32", max_batch: int = 8) -> list[GraphSpec]:
    """Every graph the model needs, in pipeline order."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unsupported precision '{precision}' ({', '.join(PRECISIONS)})")
    if max_batch < 1:
        raise ConfigError("--max-batch must be at least 1")
    dtype = PRECISIONS[precision]
    info = describe(model)
    m = _precision_copy(model, dtype)
    if isinstance(m, VQModel):
        return [encoder_spec("encoder", m, dtype, max_batch, 1), decoder_spec(m, dtype, max_batch)]
    assert isinstance(m, Net2NetTransformer)
    specs = [encoder_spec("encoder", m.first_stage_model, dtype, max_batch, 1)]
    cond = condition_from_manifest(info["conditioning"], "model.conditioning")
    specs += cond.export_graphs(m, dtype, max_batch)
    specs.append(transformer_spec(m, dtype, max_batch, cond.tokens))
    gpt = m.transformer
    if gpt.vocab_size <= SAMPLER_MAX_VOCAB:
        specs.append(sampler_spec(gpt.vocab_size, gpt.block_size, max_batch))
    specs.append(decoder_spec(m.first_stage_model, dtype, max_batch))
    return specs
