"""What a ``manifest.json`` must hold before any runtime indexes it.

Everything the runtimes read (grep ``manifest[``, ``info[``, ``cond[``, ``graph[`` ...) is listed
here with its type and range, so that a missing key, a wrong type or an absurd number is one
``ArtifactError`` naming the entry instead of a KeyError, a TypeError or a huge allocation later.
Two parts: ``MANIFEST``, the structure (data, ``vqdeploy.schema`` rules), and ``CONSISTENCY``,
small functions over a structurally valid manifest for what one field says about another (token
counts, grids, the permutation, the tensors each graph must have). Fields nobody reads (docs,
versions, parity results) are not checked.

Bounds (``MAX_*``) are far above any taming model (the largest: vocab 16384, 16x16 grids, block 512)
and keep every size computed from them in int64 and in memory.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from vqdeploy import conditions
from vqdeploy.artifacts.paths import NAME, plain_file, relative_file
from vqdeploy.bounds import (
    DTYPES,
    MAX_BATCH,
    MAX_BLOCK,
    MAX_CHANNELS,
    MAX_DIM,
    MAX_FACTOR,
    MAX_GRAPHS,
    MAX_HEAD_DIM,
    MAX_HEADS,
    MAX_LAYERS,
    MAX_QUANT_BLOCK,
    MAX_RANK,
    MAX_TENSORS,
    MAX_VOCAB,
    PRECISIONS,
    QUANTIZATION_SCHEMES,
    TOKENS,
    VQ,
)
from vqdeploy.errors import ArtifactError
from vqdeploy.schema import all_of, at, fail, integer, list_of, mapping, nullable, obj, one_of, sha256, string, tagged

TENSOR_NAME = r"[A-Za-z_][A-Za-z0-9_.]{0,127}"
# ONNX Runtime's twin of the transformer graph (``export/attention_onnx.py``): the same inputs, outputs and profiles,
# each layer's attention a GroupQueryAttention that reads only each row's valid prefix of the cache; TensorRT and the
# C++ runtime load the portable ``transformer`` graph, and ``build-trt`` skips this one
VALID_LENGTH = "transformer_valid_length"
# speculative Jacobi decoding's default window (runtime/jacobi.py): its calls feed window + 1 tokens, which the
# transformer's "window" optimization profile is tuned for (TensorRT; the other runtimes take any length)
JACOBI_WINDOW = 16
ONNXRUNTIME_ONLY = (VALID_LENGTH,)
_DIM = NAME.pattern
_INPUT_DIM = re.compile(rf"({_DIM})(?:\*([1-9][0-9]{{0,3}}))?")  # "latent_h*8"
_OUTPUT_DIM = re.compile(rf"{_INPUT_DIM.pattern}(?:\+{_INPUT_DIM.pattern})*")  # "past+tokens"


def _ordered(v: Any, where: str) -> None:
    lo, opt, hi = (v["min"], v["opt"], v["max"]) if isinstance(v, dict) else v
    if not lo <= opt <= hi:
        fail(where, "min <= opt <= max", v)


def _extent(v: Any, where: str) -> None:
    """A tensor extent: a fixed size, or a dim expression."""
    if isinstance(v, str):
        if not _OUTPUT_DIM.fullmatch(v):
            fail(where, "a size or a dim expression such as 'batch', 'latent_h*8', 'past+tokens'", v)
        return
    integer(0, MAX_DIM)(v, where)


TENSOR = obj({"name": string(128, TENSOR_NAME, "a tensor name"), "dtype": one_of(*DTYPES),
              "shape": list_of(_extent, 0, MAX_RANK)})
DIM = all_of(obj({"min": integer(0, MAX_DIM), "opt": integer(0, MAX_DIM), "max": integer(0, MAX_DIM)},
                 {"scale": integer(1, MAX_FACTOR)}), _ordered)
RANGE = all_of(list_of(integer(0, MAX_DIM), 3, 3), _ordered)
GRAPH = obj(
    {"file": relative_file, "sha256": sha256, "inputs": list_of(TENSOR, 1, MAX_TENSORS),
     "outputs": list_of(TENSOR, 1, MAX_TENSORS), "dims": mapping(DIM, lo=1),
     "profiles": mapping(mapping(RANGE), lo=1, hi=16)},
    {"external_data": obj({"file": plain_file, "sha256": sha256})},
)



def CONDITIONING(v: Any, where: str) -> None:  # noqa: N802  (a rule, named like the others)
    """The entry of whichever conditioning kind it names (each kind states its own rule)."""
    conditions.schema()(v, where)


TRANSFORMER = obj({"vocab_size": integer(1, MAX_VOCAB), "block_size": integer(1, MAX_BLOCK),
                   "n_layer": integer(1, MAX_LAYERS), "n_head": integer(1, MAX_HEADS),
                   "head_dim": integer(1, MAX_HEAD_DIM), "parameters": integer(0, 1 << 48)})
FAMILY = {"family": string(64, r"[a-z][a-z0-9_]{0,63}", "a model family name")}  # optional: taming before it
MODEL = tagged("kind", {
    "vqgan": obj({"first_stage": obj({**VQ, "out_channels": integer(1, MAX_CHANNELS)})}, FAMILY),
    "net2net": obj({"first_stage": obj({**VQ, "out_channels": integer(1, MAX_CHANNELS)}),
                    "conditioning": CONDITIONING, "transformer": TRANSFORMER,
                    "permuter": obj({"order": nullable(list_of(integer(0, MAX_BLOCK - 1), 1, MAX_BLOCK))}),
                    "tokens": obj({"cond": TOKENS, "image": TOKENS})}, FAMILY),
})
# weight-only quantization (export --quantize): which scheme, of which graphs; the bench reads the byte count
QUANTIZATION = obj({"scheme": one_of(*QUANTIZATION_SCHEMES), "graphs": list_of(one_of("transformer", VALID_LENGTH), 1, 2),
                    "block_size": integer(16, MAX_QUANT_BLOCK), "layers": integer(0, 16 * MAX_LAYERS),
                    "weight_bytes": integer(0, 1 << 48)})
# sampling.noise_generator (optional; written since the C++ runtime): the uniforms' generator as identifiers
NOISE_GENERATOR = obj({"seed_sequence": one_of("numpy.SeedSequence"), "entropy": one_of(["seed", "sample_index"]),
                       "bit_generator": one_of("numpy.PCG64"), "draw": one_of("numpy.Generator.random")})
MANIFEST = obj(
    {"model": MODEL, "model_fingerprint": sha256, "precision": one_of(*PRECISIONS),
     "max_batch": integer(1, MAX_BATCH), "graphs": mapping(GRAPH, lo=1, hi=MAX_GRAPHS)},
    {"source": obj({}, {"checkpoint": nullable(string(4096)), "config": list_of(string(4096), 0, 16),
                        "example": nullable(string(4096))}),
     "quantization": nullable(QUANTIZATION), "sampling": obj({}, {"noise_generator": NOISE_GENERATOR})},
)


# --- consistency -------------------------------------------------------------------------------
Check = Callable[[dict[str, Any], str], None]


def _require(ok: bool, where: str, message: str) -> None:
    if not ok:
        raise ArtifactError(f"{where}: {message} (re-export)")


def _grids(m: dict[str, Any], root: str) -> None:
    """latent_grid = resolution // downsampling factor (a spatial condition checks its own)."""
    s = m["model"]["first_stage"]
    side = s["resolution"] // s["downsample_factor"]
    _require(s["latent_grid"] == [side, side], at(root, "model.first_stage.latent_grid"),
             f"{s['latent_grid']} does not match resolution {s['resolution']} // downsample_factor "
             f"{s['downsample_factor']}")


def _tokens(m: dict[str, Any], root: str) -> None:
    """Token counts agree with the grids, the permutation is one (the condition's own numbers are
    checked by its kind, ``vqdeploy.conditions``)."""
    info = m["model"]
    if info["kind"] != "net2net":
        return
    cond, tokens = info["conditioning"], info["tokens"]
    h, w = info["first_stage"]["latent_grid"]
    _require(tokens["image"] == h * w, at(root, "model.tokens.image"), f"{tokens['image']} is not {h}x{w}")
    _require(tokens["cond"] == cond["tokens"], at(root, "model.tokens.cond"), "differs from model.conditioning.tokens")
    order = info["permuter"]["order"]
    if order is not None:
        _require(len(order) == tokens["image"] and sorted(order) == list(range(len(order))),
                 at(root, "model.permuter.order"), f"not a permutation of the {tokens['image']} image tokens")


def _graph_dims(m: dict[str, Any], root: str) -> None:
    """Every dim a graph's inputs name has a range in ``dims`` and in every profile; outputs only
    use dims the inputs bind; the batch range fits."""
    for g_name, g in m["graphs"].items():
        where = at(root, f"graphs.{g_name}")
        bound: set[str] = set()
        for i, t in enumerate(g["inputs"]):
            for d in t["shape"]:
                if isinstance(d, str):
                    match = _INPUT_DIM.fullmatch(d)
                    _require(match is not None, at(where, f"inputs[{i}].shape"), f"'{d}' is not a dim or dim*k")
                    bound.add(match.group(1))  # type: ignore[union-attr]
        _require("batch" in g["dims"], at(where, "dims"), "no batch range")
        _require(g["dims"]["batch"]["max"] <= MAX_BATCH, at(where, "dims.batch.max"), f"over {MAX_BATCH}")
        for d in sorted(bound):
            _require(d in g["dims"], at(where, "dims"), f"no range for dim '{d}'")
            for p_name, p in g["profiles"].items():
                _require(d in p, at(where, f"profiles.{p_name}"), f"no range for dim '{d}'")
        for i, t in enumerate(g["outputs"]):
            for d in t["shape"]:
                if isinstance(d, str):
                    used = {x.split("*")[0] for x in d.split("+")}
                    _require(used <= bound, at(where, f"outputs[{i}].shape"), f"'{d}' uses a dim no input has")


# the tensors each runtime stage binds by name: graph -> ({input: (dtype, rank)}, {output: (dtype, rank)})
STAGE_IO: dict[str, tuple[dict[str, tuple[str, int]], dict[str, tuple[str, int]]]] = {
    "encoder": ({"image": ("float32", 4)}, {"indices": ("int64", 3)}),
    "decoder": ({"indices": ("int64", 3)}, {"image": ("float32", 4)}),
    "cond_encoder": ({}, {"indices": ("int64", 3)}),
    "transformer": ({"tokens": ("int64", 2)}, {"logits": ("float32", 3)}),
    "sampler": ({"logits": ("float32", 3), "uniform": ("float32", 1), "temperature": ("float32", 1),
                 "top_k": ("int64", 1), "top_p": ("float32", 1)}, {"tokens": ("int64", 2)}),
    # classifier-free guidance + the sampler (models with a null condition): logits of 2x the samples
    "guided_sampler": ({"logits": ("float32", 3), "uniform": ("float32", 1), "temperature": ("float32", 1),
                        "top_k": ("int64", 1), "top_p": ("float32", 1), "cfg_scale": ("float32", 1)},
                       {"tokens": ("int64", 2)}),
}


def _stage_graphs(m: dict[str, Any], root: str) -> None:
    """The graphs this kind of model needs, each with the tensors the runtime binds."""
    info, graphs = m["model"], m["graphs"]
    needed = ["encoder", "decoder"]
    if info["kind"] == "net2net":
        needed += ["transformer", *conditions.CONDITIONS[info["conditioning"]["kind"]].graphs]
    for g_name in needed:
        _require(g_name in graphs, at(root, "graphs"), f"no '{g_name}' graph")
    for g_name, (ins, outs) in STAGE_IO.items():
        if g_name not in graphs:
            continue
        g = graphs[g_name]
        for kind, want in (("inputs", ins), ("outputs", outs)):
            have = {t["name"]: t for t in g[kind]}
            for t_name, (dtype, rank) in want.items():
                t = have.get(t_name)
                _require(t is not None and t["dtype"] == dtype and len(t["shape"]) == rank,
                         at(root, f"graphs.{g_name}.{kind}"), f"expected '{t_name}' {dtype} of rank {rank}")
    cond = graphs.get("cond_encoder")
    if cond is not None:
        t = cond["inputs"][0]
        _require(len(cond["inputs"]) == 1 and t["dtype"] in ("float32", "int64") and len(t["shape"]) in (3, 4),
                 at(root, "graphs.cond_encoder.inputs"), "expected one float32 image or int64 label input")
    if "transformer" in graphs and info["kind"] == "net2net":
        _kv_cache(info["transformer"], graphs["transformer"], at(root, "graphs.transformer"))


def _kv_cache(tr: dict[str, Any], g: dict[str, Any], where: str) -> None:
    """tokens and position in; cache.i.key/value in and cache_out.i.key/value out for every layer,
    (batch, n_head, block_size, head_dim), one cache dtype; logits over the vocabulary; the two
    profiles the KV loop selects."""
    ins = {t["name"]: t for t in g["inputs"]}
    outs = {t["name"]: t for t in g["outputs"]}
    pos = ins.get("position")
    _require(pos is not None and pos["dtype"] == "int64" and pos["shape"] == ["batch"], at(where, "inputs"),
             "expected 'position' int64 of shape [batch], one per row (re-export artifacts of an older vqdeploy)")
    dtypes = set()
    want = [tr["n_head"], tr["block_size"], tr["head_dim"]]
    for i in range(tr["n_layer"]):
        for part in ("key", "value"):
            for side, kind, tensors in (("cache", "inputs", ins), ("cache_out", "outputs", outs)):
                t = tensors.get(f"{side}.{i}.{part}")
                ok = t is not None and len(t["shape"]) == 4 and t["shape"][1:] == want
                _require(ok, at(where, kind), f"expected '{side}.{i}.{part}' of shape (batch, {tr['n_head']}, "
                                              f"{tr['block_size']}, {tr['head_dim']}) for n_layer {tr['n_layer']}")
                dtypes.add(t["dtype"])  # type: ignore[index]
    _require(len(dtypes) == 1 and not dtypes & {"int64"}, at(where, "inputs"), "the KV cache has one float dtype")
    _require(outs["logits"]["shape"][2] == tr["vocab_size"], at(where, "outputs"),
             f"logits over {outs['logits']['shape'][2]} tokens, the vocabulary is {tr['vocab_size']}")
    _require({"prefill", "step"} <= set(g["profiles"]), at(where, "profiles"), "expected 'prefill' and 'step'")


CONSISTENCY: tuple[Check, ...] = (_grids, _tokens, _graph_dims, _stage_graphs)


def validate(manifest: Any, label: str) -> dict[str, Any]:
    """``manifest`` if it has everything the runtimes read; ArtifactError naming the entry otherwise.
    ``label`` names the file in messages (``.../manifest.json``)."""
    root = f"{label}:"
    MANIFEST(manifest, root)
    for check in CONSISTENCY:
        check(manifest, root)
    return manifest  # type: ignore[no-any-return]

