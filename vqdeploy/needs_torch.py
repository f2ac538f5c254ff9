"""The commands that need PyTorch say so in one line where it is not installed (the ONNX Runtime and
TensorRT runtimes do not: see README, "Installing the runtime without PyTorch")."""

from __future__ import annotations

import importlib.util

from vqdeploy.errors import BackendError


def torch_installed() -> bool:
    return importlib.util.find_spec("torch") is not None


def require_torch(what: str) -> None:
    """Raise the one-line error for ``what`` (e.g. "export needs PyTorch") where torch is missing."""
    if not torch_installed():
        raise BackendError(f"{what}: pip install torch")
