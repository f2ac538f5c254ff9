"""The weights' fingerprint: ties exported artifacts to the checkpoint they came from (export and
the PyTorch reference use it; the runtime only compares the recorded string)."""

from __future__ import annotations

import hashlib

import torch


def model_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over the weights (names, dtypes, shapes, bytes): identifies a model wherever its file lies."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.detach().contiguous().cpu().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
