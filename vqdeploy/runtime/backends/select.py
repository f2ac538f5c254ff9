"""Opening a backend by name for an artifacts directory."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from vqdeploy.errors import ArtifactError, BackendError
from vqdeploy.runtime.backends.base import Backend

BACKENDS = ("torch", "onnxruntime", "tensorrt")


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def default_device() -> str:
    return "cuda" if cuda_available() else "cpu"


def load_reference_model(manifest: dict[str, Any], ckpt: str | None = None, config: str | None = None) -> Any:
    """The PyTorch model the artifacts were exported from (or ``ckpt``), checked by fingerprint."""
    from vqdeploy.export.manifest import model_fingerprint
    from vqdeploy.loading.load import load_model

    src = manifest.get("source", {})
    path, cfg = ckpt, config
    if ckpt is None:
        path = src.get("checkpoint")
        recorded = src.get("config") or []
        cfg = config or (recorded[0] if len(recorded) == 1 else None)
    if path is None:
        raise ArtifactError("the manifest records no checkpoint: pass --ckpt")
    model = load_model(path, cfg)
    if model_fingerprint(model) != manifest.get("model_fingerprint"):
        raise ArtifactError(f"{path} holds different weights than the exported artifacts; re-export or pass the right --ckpt")
    return model


def open_backend(name: str, artifacts: Path, manifest: dict[str, Any], device: str | None = None,
                 ckpt: str | None = None, config: str | None = None, model: Any = None) -> Backend:
    if name == "auto":
        name = auto_backend(artifacts, device)
    device = device or ("cuda" if name == "tensorrt" else default_device())
    if device == "cuda" and not cuda_available():
        raise BackendError("--device cuda: no CUDA device is available here")
    if name == "torch":
        from vqdeploy.runtime.backends.torch_backend import TorchBackend

        return TorchBackend(model if model is not None else load_reference_model(manifest, ckpt, config), manifest, device)
    if name == "onnxruntime":
        from vqdeploy.export.manifest import verify_graph_files
        from vqdeploy.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

        verify_graph_files(artifacts, manifest)
        return OnnxRuntimeBackend(artifacts, manifest, device)
    if name == "tensorrt":
        if device != "cuda":
            raise BackendError("the tensorrt backend runs on a CUDA GPU only")
        try:
            from vqdeploy.runtime.backends.tensorrt_backend import TensorRTBackend
        except ImportError as e:
            raise BackendError(f"the tensorrt backend is not available ({e})") from None
        return TensorRTBackend(artifacts, manifest, device)  # type: ignore[return-value]
    raise BackendError(f"unknown backend '{name}' (auto, {', '.join(BACKENDS)})")


def auto_backend(artifacts: Path, device: str | None) -> str:
    """TensorRT when engines and a GPU are there, else ONNX Runtime."""
    # lexists: whatever is there (a symlink too) is the TensorRT backend's to check and refuse
    engines = os.path.lexists(Path(artifacts) / "engines" / "engines.json")
    if (device in (None, "cuda")) and cuda_available() and engines:
        import importlib.util

        if importlib.util.find_spec("tensorrt") or importlib.util.find_spec("tensorrt_rtx_bindings"):
            return "tensorrt"
    return "onnxruntime"
