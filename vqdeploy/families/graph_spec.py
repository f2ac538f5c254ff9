"""One spec per exported graph: names, dtypes, dynamic dims, sample inputs and the TensorRT
optimization profiles. The same spec drives the export, the parity check, the manifest and the
engine build, so they cannot disagree about a tensor name or a shape range. A family makes the
specs of its graphs (``Family.graph_specs``); what every family shares is here (the sampler graph
included).
"""

from __future__ import annotations

import copy
import inspect
import itertools
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar, cast

import torch
from torch import nn

from vqdeploy.artifacts.manifest_schema import JACOBI_WINDOW, VALID_LENGTH
from vqdeploy.artifacts.tensors import Dim, TensorSpec
from vqdeploy.errors import ConfigError
from vqdeploy.models.sampler import TOPK_MAX, GuidedSamplerGraph, SamplerGraph

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "int64": torch.int64}
# export precision -> the dtype the model runs in (fp32 islands aside)
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


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


def batch_dim(max_batch: int, opt: int) -> Dim:
    return Dim(1, min(opt, max_batch), max_batch)


def one_profile(dims: dict[str, Dim]) -> dict[str, dict[str, tuple[int, int, int]]]:
    return {"default": {n: (d.min, d.opt, d.max) for n, d in dims.items()}}


def grid_dims(grid: list[int], scale: int) -> dict[str, Dim]:
    """Latent grid range, ``scale`` pixels per cell: from 1 cell up to twice the trained grid
    (sliding-window sampling)."""
    return {"latent_h": Dim(1, grid[0], 2 * grid[0], scale), "latent_w": Dim(1, grid[1], 2 * grid[1], scale)}


def cached_transformer_spec(module: nn.Module, dtype: torch.dtype, max_batch: int, *, n_layer: int, n_head: int,
                            head_dim: int, block: int, vocab: int, prefill_tokens: int, token_ids: int) -> GraphSpec:
    """The transformer graph's contract, the same for every family (docs/artifacts.md): tokens + a position per row
    + a fixed-capacity cache per layer (the block size: TensorRT's KVCacheUpdate needs a static sequence axis) written
    in place, so the cache shapes never change; profiles that differ in the number of new tokens only: the prefill
    of ``prefill_tokens`` condition tokens, the one-token steps, and Jacobi decoding's calls of its default window
    + 1 tokens ("window", where the block holds them; ``graph_backend.transformer_profile`` picks among them).
    ``token_ids``: the ids parity feeds."""
    kv = DTYPE_NAMES[dtype]
    shape = ("batch", n_head, block, head_dim)
    inputs = [TensorSpec("tokens", "int64", ("batch", "tokens")), TensorSpec("position", "int64", ("batch",))]
    outputs = [TensorSpec("logits", "float32", ("batch", "tokens", vocab))]
    for i in range(n_layer):
        for part in ("key", "value"):
            inputs.append(TensorSpec(f"cache.{i}.{part}", kv, shape))
            outputs.append(TensorSpec(f"cache_out.{i}.{part}", kv, shape))
    b = (1, min(4, max_batch), max_batch)
    window = min(JACOBI_WINDOW + 1, block)
    profiles = {"prefill": {"batch": b, "tokens": (1, min(prefill_tokens, block), block)},
                "step": {"batch": b, "tokens": (1, 1, 1)}}
    if window >= 2:
        profiles["window"] = {"batch": b, "tokens": (2, window, window)}
    spec = GraphSpec(
        name="transformer",
        module=module.eval(),
        inputs=inputs,
        outputs=outputs,
        dims={"batch": batch_dim(max_batch, 4), "tokens": Dim(1, prefill_tokens, block)},
        profiles=profiles,
        sample_dims={"batch": 2, "tokens": 3},
    )
    spec.id_ranges = {"tokens": token_ids, "position": max(1, block - 3)}
    return spec


# what ONNX Runtime's CPU GroupQueryAttention computes in (no bfloat16 kernel)
VALID_LENGTH_DTYPES = (torch.float32, torch.float16)


def valid_length_spec(transformer: GraphSpec) -> GraphSpec:
    """The valid-length twin of a ``cached_transformer_spec``: the same contract, a copy of its module whose
    attention is the ``cached_attention`` op (the weights are shared, not copied)."""
    module = copy.copy(transformer.module)
    module.valid_length = True  # type: ignore[assignment]  (a CachedStepGraph: its attention strategy)
    return GraphSpec(VALID_LENGTH, module, transformer.inputs, transformer.outputs, transformer.dims,
                     transformer.profiles, transformer.sample_dims, transformer.id_ranges)


M = TypeVar("M", bound=nn.Module)


def shallow_copy(module: nn.Module, cls: type[M]) -> M:
    """A copy of ``module`` as a ``cls`` (its class or a subclass) that shares its parameters and buffers but has
    dicts of its own: the submodules or buffers a family's graph form replaces or adds do not touch the loaded
    model (``families/*/fused_gpt.py``)."""
    out = copy.copy(module)
    out.__class__ = cls
    out._modules = dict(module._modules)
    out._buffers = dict(module._buffers)
    out._non_persistent_buffers_set = set(module._non_persistent_buffers_set)
    return cast(M, out)


def precision_copy(model: nn.Module, dtype: torch.dtype, keep_fp32: Callable[[nn.Module], None] | None = None) -> nn.Module:
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
    if keep_fp32 is not None:
        keep_fp32(m)  # the family's fp32 islands (taming: the quantizers' distances, argmin, Gumbel logits)
    return m


# the sampler graph sorts the vocabulary with TopKs of K <= 3840 (TensorRT's limit), in
# ceil(V / 3840) rounds beyond 3840 tokens (``graphs.ranked_desc``); 16 rounds is where we stop
# exporting it (every released taming model has at most 16384 tokens: 5 rounds)
SAMPLER_MAX_VOCAB = 16 * TOPK_MAX


def sampler_spec(vocab_size: int, block_size: int, max_batch: int) -> GraphSpec:
    dims = {"batch": batch_dim(max_batch, 4), "tokens": Dim(1, 1, block_size)}
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
    spec.profiles = one_profile(dims)
    spec.id_ranges = {"top_k": vocab_size + 1}
    return spec


def guided_sampler_spec(vocab_size: int, block_size: int, max_batch: int) -> GraphSpec | None:
    """The guided sampler graph (classifier-free guidance + the sampler, ``GuidedSamplerGraph``) of a model that can
    be guided: ``batch`` counts samples, each with two transformer rows (``batch*2``), so it covers up to half the
    transformer's batch; None where that is under one sample (--max-batch 1)."""
    if max_batch < 2:
        return None
    dims = {"batch": batch_dim(max_batch // 2, 2), "tokens": Dim(1, 1, block_size)}
    spec = GraphSpec(
        name="guided_sampler",
        module=GuidedSamplerGraph(vocab_size).eval(),
        inputs=[TensorSpec("logits", "float32", ("batch*2", "tokens", vocab_size)),
                TensorSpec("uniform", "float32", ("batch",)),
                TensorSpec("temperature", "float32", (1,)),
                TensorSpec("top_k", "int64", (1,)),
                TensorSpec("top_p", "float32", (1,)),
                TensorSpec("cfg_scale", "float32", (1,))],
        outputs=[TensorSpec("tokens", "int64", ("batch*2", 1))],
        dims=dims,
        sample_dims={"batch": 2, "tokens": 3},
    )
    spec.profiles = one_profile(dims)
    spec.id_ranges = {"top_k": vocab_size + 1}
    return spec


def check_options(precision: str, max_batch: int) -> torch.dtype:
    """The dtype of ``precision``; ConfigError for an unknown precision or a batch below 1."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unsupported precision '{precision}' ({', '.join(PRECISIONS)})")
    if max_batch < 1:
        raise ConfigError("--max-batch must be at least 1")
    return PRECISIONS[precision]
