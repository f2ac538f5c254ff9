"""``manifest.json``: everything a runtime (ours, or a C++ app) needs to drive the graphs."""

from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path
from typing import Any

import torch

from vqdeploy.errors import ArtifactError

MANIFEST = "manifest.json"
FORMAT = "vqdeploy-artifacts"
FORMAT_VERSION = 1


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def model_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over the weights (names, dtypes, shapes, bytes): identifies a model wherever its file lies."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.detach().contiguous().cpu().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def versions() -> dict[str, str]:
    import onnx
    import onnxscript

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
    "One graph serves prefill and steps. Inputs: tokens (batch, tokens) int64 and, per layer i, "
    "past.{i}.key / past.{i}.value (batch, n_head, past, head_dim); past = 0 for the prefill. Outputs: "
    "logits (batch, tokens, vocab) fp32 for every new position, and present.{i}.key / present.{i}.value "
    "(batch, n_head, past + tokens, head_dim) = past followed by the new positions; feed them back as the "
    "next step's past. Positions are implicit: the new tokens sit at positions past .. past + tokens - 1."
)

SAMPLING_DOC = {
    "order": "logits / temperature -> top-k (keeps every logit equal to the k-th largest) -> top-p "
             "(keeps the smallest set of most likely tokens whose mass reaches p, ties at the threshold kept) "
             "-> inverse-CDF draw in token-id order with one uniform number per sample and step",
    "greedy": "top_k == 1 or temperature == 0: argmax (first maximum)",
    "noise": "numpy PCG64: sample b of seed s draws its uniforms from default_rng([s, b]).random(steps)",
    "graph": "sampler.onnx (when the vocabulary is <= 3840, TensorRT's TopK limit) applies these rules in fp32: "
             "logits (batch, tokens, vocab) of which the last position is used, uniform (batch), temperature (1), "
             "top_k (1) int64, top_p (1) -> tokens (batch, 1) int64, ready to feed the next step; temperature <= 0 "
             "or top_k == 1 is greedy, top_k >= vocab and top_p >= 1 disable those filters",
}


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def read_manifest(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{directory}: no {MANIFEST} (export the model first: vqdeploy export --ckpt ... --out {directory})")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{path}: unreadable manifest ({e})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ArtifactError(f"{path}: not a vqdeploy manifest")
    if data.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{path}: manifest format {data.get('format_version')} is not supported "
                            f"by this vqdeploy (expects {FORMAT_VERSION}); re-export")
    return data


def verify_graph_files(directory: Path, manifest: dict[str, Any]) -> None:
    """Every graph exists and has the hash the manifest recorded (catches mixed artifacts)."""
    for g in manifest["graphs"].values():
        files = [(g["file"], g["sha256"])]
        if "external_data" in g:
            files.append((g["external_data"]["file"], g["external_data"]["sha256"]))
        for file, digest in files:
            path = directory / file
            if not path.is_file():
                raise ArtifactError(f"{directory}: {file} is missing; re-export")
            if sha256_file(path) != digest:
                raise ArtifactError(f"{path}: does not match the manifest (sha256 differs); re-export")
