"""``manifest.json`` as typed objects, parsed once by ``read_manifest`` after the schema check
(``export/manifest_schema.py``), so runtime code reads attributes, not string keys, and the
conditioning is its kind's object (``vqdeploy.conditions``).

The graphs stay the JSON entries they are (``graphs[name]["inputs"]`` ...): their consumers bind
tensors by the names listed there, generically, as a C++ app reading the file does. ``raw`` is the
whole JSON as written (reports, tools, tests).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vqdeploy.artifacts.manifest_schema import validate
from vqdeploy.artifacts.paths import artifact_file
from vqdeploy.conditions import Condition, condition_from_manifest
from vqdeploy.errors import ArtifactError, InputError
from vqdeploy.schema import read_json

MANIFEST = "manifest.json"

FORMAT = "vqdeploy-artifacts"
# 2: the KV cache is written in place (cache.{i}.key/value + position); 3: one position per row (batch)
FORMAT_VERSION = 3

KV_CACHE_DOC = (
    "One graph serves prefill and steps, on a fixed-capacity KV cache updated in place. Inputs: tokens (batch, tokens) "
    "int64, position (batch) int64 = per row, the number of positions already cached in that row (0 for its prefill; "
    "rows may be at different positions), and per layer i "
    "cache.{i}.key / cache.{i}.value (batch, n_head, block_size, head_dim), zero-filled once when allocated. Outputs: "
    "logits (batch, tokens, vocab) fp32 for every new position, and cache_out.{i}.key / cache_out.{i}.value = the "
    "cache with row b's new keys/values written at position[b] .. position[b] + tokens - 1 (ONNX TensorScatter, "
    "opset 24, whose write indices are the position input). "
    "Bind each cache_out to its cache input's buffer: ONNX Runtime then writes in place, and TensorRT's KVCacheUpdate layer "
    "aliases them (ICudaEngine.get_aliased_input_tensor). Row b's new tokens attend to its cached positions < "
    "position[b] and causally among themselves (upstream's mask, n_unmasked block included); its entries at or beyond "
    "position[b] + tokens are masked, so the buffers keep their shapes at every step. Keep position[b] + tokens <= "
    "block_size."
)


# sampling.noise as identifiers: numpy's SeedSequence (entropy [seed, sample index], each split into uint32
# words, low word first; pool size 4) seeds numpy's PCG64 (128-bit LCG, XSL-RR output), and each step draws
# Generator.random() = (next_uint64 >> 11) * 2**-53 (vqdeploy.runtime.sampling.uniform_noise)
NOISE_GENERATOR = {"seed_sequence": "numpy.SeedSequence", "entropy": ["seed", "sample_index"],
                   "bit_generator": "numpy.PCG64", "draw": "numpy.Generator.random"}


SAMPLING_DOC = {
    "order": "logits / temperature -> top-k (keeps every logit equal to the k-th largest) -> top-p "
             "(keeps the smallest set of most likely tokens whose mass reaches p, ties at the threshold kept) "
             "-> inverse-CDF draw in token-id order with one uniform number per sample and step",
    "greedy": "top_k == 1 or temperature == 0: argmax (first maximum)",
    "noise": "numpy PCG64: sample b of seed s draws its uniforms from default_rng([s, b]).random(steps)",
    # the same, machine-readable, for runtimes outside Python (the C++ runtime refuses what it does not implement)
    "noise_generator": NOISE_GENERATOR,
    "graph": "sampler.onnx (vocabularies up to 61440: it sorts with TopKs of K <= 3840, TensorRT's limit, in "
             "ceil(vocab / 3840) rounds beyond 3840 tokens, so every setting is exact) applies these rules in fp32: "
             "logits (batch, tokens, vocab) of which the last position is used, uniform (batch), temperature (1), "
             "top_k (1) int64, top_p (1) -> tokens (batch, 1) int64, ready to feed the next step; temperature <= 0 "
             "or top_k == 1 is greedy, top_k >= vocab and top_p >= 1 disable those filters",
    "guidance": "classifier-free guidance, for a condition with a null condition (model.conditioning.null_class): "
                "each guided sample runs two transformer rows, conditional and null-class (a batch of B guided "
                "samples: the B conditional rows, then the B null rows), both fed the token drawn for the sample; it "
                "is drawn from uncond + (cond - uncond) * cfg_scale (fp32, in that order) when cfg_scale > 1, for the "
                "first cfg_interval + 2 tokens (cfg_interval -1: all), then from the conditional logits. "
                "guided_sampler.onnx: logits (batch*2, tokens, vocab), uniform (batch), temperature, top_k, top_p, "
                "cfg_scale (1) -> tokens (batch*2, 1) int64 (each sample's token for both its rows)",
}




@dataclass(frozen=True)
class VQStage:
    """A VQGAN (the first stage): image <-> a latent grid of token ids."""

    in_channels: int
    resolution: int
    downsample_factor: int
    latent_grid: tuple[int, int]
    vocab_size: int
    out_channels: int

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> VQStage:
        return cls(int(d["in_channels"]), int(d["resolution"]), int(d["downsample_factor"]),
                   (int(d["latent_grid"][0]), int(d["latent_grid"][1])), int(d["vocab_size"]), int(d["out_channels"]))

    @property
    def trained_pixels(self) -> int:
        return self.resolution * self.resolution


@dataclass(frozen=True)
class TransformerInfo:
    vocab_size: int
    block_size: int
    n_layer: int
    n_head: int
    head_dim: int
    parameters: int

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> TransformerInfo:
        return cls(*(int(d[k]) for k in ("vocab_size", "block_size", "n_layer", "n_head", "head_dim", "parameters")))


@dataclass(frozen=True)
class ModelInfo:
    """``model``: a VQGAN alone (``kind`` "vqgan": ``condition`` and ``transformer`` are None) or a
    Net2NetTransformer."""

    kind: str
    first_stage: VQStage
    family: str = "taming"  # the codebase it came from (``vqdeploy.families``: the PyTorch side only)
    condition: Condition | None = None
    transformer: TransformerInfo | None = None
    order: tuple[int, ...] | None = None  # the permuter: sequence position k holds raster cell order[k]
    permuter_name: str | None = None
    cond_tokens: int = 0
    image_tokens: int = 0

    @classmethod
    def from_json(cls, d: Mapping[str, Any], where: str) -> ModelInfo:
        first = VQStage.from_json(d["first_stage"])
        family = str(d.get("family", "taming"))  # manifests before families: taming's
        if d["kind"] != "net2net":
            return cls(d["kind"], first, family)
        tr = TransformerInfo.from_json(d["transformer"])
        cond = condition_from_manifest(d["conditioning"], f"{where} model.conditioning")
        cond.check_model(tr.vocab_size, f"{where} model.conditioning")
        order = d["permuter"]["order"]
        return cls(d["kind"], first, family, cond, tr, None if order is None else tuple(int(i) for i in order),
                   d["permuter"].get("name"), int(d["tokens"]["cond"]), int(d["tokens"]["image"]))

    def to_raster(self, seq: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
        """(B, steps) tokens in sequence order -> (B, h, w) in raster order: undo the permuter
        (sequence position k holds raster cell order[k])."""
        if self.order is None:
            return seq.reshape(seq.shape[0], *grid)
        raster = np.empty_like(seq)
        raster[:, list(self.order)] = seq
        return raster.reshape(seq.shape[0], *grid)

    @property
    def samples(self) -> bool:
        """There is a transformer to sample from."""
        return self.transformer is not None

    def sampling(self) -> tuple[Condition, TransformerInfo]:
        """The condition and the transformer; InputError for a VQGAN alone."""
        if self.condition is None or self.transformer is None:
            raise InputError("these artifacts hold a VQGAN only: there is no transformer to sample from")
        return self.condition, self.transformer


@dataclass(frozen=True)
class Quantization:
    """``export --quantize``: weight-only int8/int4 of these graphs."""

    scheme: str
    graphs: tuple[str, ...]
    block_size: int
    layers: int
    weight_bytes: int


@dataclass(frozen=True)
class Manifest:
    model: ModelInfo
    precision: str
    max_batch: int
    fingerprint: str
    graphs: Mapping[str, Mapping[str, Any]]
    quantization: Quantization | None = None
    checkpoint: str | None = None  # where the exported checkpoint was (``source``)
    configs: tuple[str, ...] = ()
    example: str | None = None  # the run's example condition file (``source.example``; parity samples it)
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, d: Mapping[str, Any], label: str = "manifest.json") -> Manifest:
        """A manifest the schema accepted (``manifest_schema.validate``) as objects."""
        q = d.get("quantization")
        src = d.get("source") or {}
        return cls(ModelInfo.from_json(d["model"], f"{label}:"), str(d["precision"]), int(d["max_batch"]),
                   str(d["model_fingerprint"]), d["graphs"],
                   None if q is None else Quantization(q["scheme"], tuple(q["graphs"]), int(q["block_size"]),
                                                       int(q["layers"]), int(q["weight_bytes"])),
                   src.get("checkpoint"), tuple(src.get("config") or ()), src.get("example"), d)


def as_manifest(manifest: Manifest | Mapping[str, Any]) -> Manifest:
    """A ``Manifest``; a manifest dict (what an older caller holds) is validated and parsed first."""
    if isinstance(manifest, Manifest):
        return manifest
    return Manifest.from_json(validate(dict(manifest), "manifest"), "manifest")


def read_manifest(directory: str | Path) -> Manifest:
    """The manifest of ``directory``, validated (``manifest_schema``: every entry a runtime reads is
    there, of the right type and within bounds; ArtifactError naming the entry otherwise) and parsed
    into typed objects (``typed_manifest``)."""
    directory = Path(directory)
    label = str(directory / MANIFEST)
    if not os.path.lexists(directory / MANIFEST):
        raise ArtifactError(f"{directory}: no {MANIFEST} (export the model first: vqdeploy export --ckpt ... --out {directory})")
    data = read_json(artifact_file(directory, MANIFEST, label), label)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ArtifactError(f"{label}: not a vqdeploy manifest")
    if data.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{label}: manifest format {str(data.get('format_version'))[:20]} is not supported "
                            f"by this vqdeploy (expects {FORMAT_VERSION}); re-export")
    return Manifest.from_json(validate(data, label), label)
