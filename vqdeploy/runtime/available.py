"""Which backends can run here, for ``parity`` and ``bench`` (``--backends auto``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from vqdeploy.errors import BackendError
from vqdeploy.runtime.backends.select import cuda_available


def available_backends(artifacts: Path, device: str | None) -> list[tuple[str, str]]:
    """(backend, device) pairs other than the torch-CPU reference itself."""
    out = [("onnxruntime", "cpu")] if device in (None, "cpu") else []
    if device in (None, "cuda") and cuda_available():
        import onnxruntime

        out.append(("torch", "cuda"))
        if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            out.append(("onnxruntime", "cuda"))
        has_trt = importlib.util.find_spec("tensorrt") or importlib.util.find_spec("tensorrt_rtx_bindings")
        if has_trt and (artifacts / "engines" / "engines.json").is_file():
            out.append(("tensorrt", "cuda"))
    return out


def parse_backends(text: str, artifacts: Path, device: str | None) -> list[tuple[str, str]]:
    if text == "auto":
        return available_backends(artifacts, device)
    out = []
    for name in text.split(","):
        name = name.strip()
        if name not in ("torch", "onnxruntime", "tensorrt"):
            raise BackendError(f"unknown backend '{name}'")
        dev = device or ("cuda" if name == "tensorrt" or (cuda_available() and name != "onnxruntime") else "cpu")
        out.append((name, dev))
    return out
