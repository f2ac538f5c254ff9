"""The shared LlamaGen reference run (``../shared/reference/llamagen_c2i``: made with LlamaGen's own code at ce98ec4,
random weights; its README says what each tensor is) and what the LlamaGen tests share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "llamagen_c2i"
if not REFERENCE.is_dir():  # a worktree beside main: ../shared is the same folder
    REFERENCE = Path("/work/shared/reference/llamagen_c2i")
needs_reference = pytest.mark.skipif(not REFERENCE.is_dir(), reason="needs ../shared/reference/llamagen_c2i")
GPT, VQ = REFERENCE / "gpt.pt", REFERENCE / "vq.pt"
# what the weights do not say: the run's head count and image size (args.json)
OPTIONS: dict[str, Any] = {"vq_ckpt": str(VQ), "n_head": 4, "image_size": 32}
CLI_OPTIONS = ["--vq-ckpt", str(VQ), "--n-head", "4", "--image-size", "32"]


def reference() -> dict[str, Any]:
    return torch.load(REFERENCE / "reference.pt", weights_only=True)  # type: ignore[no-any-return]
