"""``manifest.json``: everything a runtime (ours, or a C++ app) needs to drive the graphs."""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path
from typing import Any

from vqdeploy.artifact_paths import artifact_file
from vqdeploy.errors import ArtifactError
from vqdeploy.export.manifest_schema import validate
from vqdeploy.files import atomic_write
from vqdeploy.schema import read_json
from vqdeploy.typed_manifest import Manifest

MANIFEST = "manifest.json"
FORMAT = "vqdeploy-artifacts"
FORMAT_VERSION = 2  # 2: the KV cache is written in place (cache.{i}.key/value + position)


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def versions() -> dict[str, str]:
    import onnx
    import onnxscript
    import torch

    import vqdeploy

    out = {"vqdeploy": vqdeploy.__version__, "torch": torch.__version__, "onnx": onnx.__version__,
           "onnxscript": onnxscript.__version__, "python": platform.python_version()}
    try:
        import onnxruntime

        out["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return out


KV_CACHE_DOC = (
    "One graph serves prefill and steps, on a fixed-capacity KV cache updated in place. Inputs: tokens (batch, tokens) "
    "int64, position (1) int64 = the number of positions already cached (0 for the prefill), and per layer i "
    "cache.{i}.key / cache.{i}.value (batch, n_head, block_size, head_dim), zero-filled once when allocated. Outputs: "
    "logits (batch, tokens, vocab) fp32 for every new position, and cache_out.{i}.key / cache_out.{i}.value = the "
    "cache with the new keys/values written at position .. position + tokens - 1 (ONNX TensorScatter, opset 24). "
    "Bind each cache_out to its cache input's buffer: ONNX Runtime then writes in place, and TensorRT's KVCacheUpdate layer "
    "aliases them (ICudaEngine.get_aliased_input_tensor). The new tokens attend to cached positions < position and "
    "causally among themselves (upstream's mask, n_unmasked block included); entries at or beyond position + tokens "
    "are masked, so the buffers keep their shapes at every step. Keep position + tokens <= block_size."
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
}


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    atomic_write(directory / MANIFEST, json.dumps(manifest, indent=2) + "\n")


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


def verify_graph_files(directory: Path, manifest: Manifest) -> None:
    """Every graph file (and its external data) is a regular file inside ``directory`` and has the
    hash the manifest recorded (catches mixed or tampered artifacts)."""
    from vqdeploy.export.graph_files import graph_files

    for name in manifest.graphs:
        for path, digest, _ in graph_files(Path(directory), manifest, name):
            if sha256_file(path) != digest:
                raise ArtifactError(f"{path}: does not match the manifest (sha256 differs); re-export")
