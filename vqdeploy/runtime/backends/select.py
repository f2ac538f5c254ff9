"""Opening a backend by name for an artifacts directory."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vqdeploy.errors import ArtifactError, BackendError
from vqdeploy.needs_torch import torch_installed
from vqdeploy.runtime.backends.base import Backend
from vqdeploy.runtime.backends.devices import BACKENDS, announce, check_name, gpu_present, resolve_device
from vqdeploy.typed_manifest import Manifest

__all__ = ["BACKENDS", "auto_backend", "load_reference_model", "open_backend", "torch_installed"]


def load_reference_model(manifest: Manifest, ckpt: str | None = None, config: str | None = None) -> Any:
    """The PyTorch model the artifacts were exported from (or ``ckpt``), checked by fingerprint."""
    try:
        from vqdeploy.export.fingerprint import model_fingerprint
        from vqdeploy.loading.load import load_model
    except ImportError as e:
        if (e.name or "").split(".")[0] == "torch":
            raise BackendError("the PyTorch reference needs PyTorch: pip install torch") from None
        raise

    path, cfg = ckpt, config
    if ckpt is None:
        path = manifest.checkpoint
        recorded = manifest.configs
        cfg = config or (recorded[0] if len(recorded) == 1 else None)
    if path is None:
        raise ArtifactError("the manifest records no checkpoint: pass --ckpt")
    cond = manifest.model.condition
    model = load_model(path, cfg, **(cond.load_options() if cond is not None else {}))
    if model_fingerprint(model) != manifest.fingerprint:
        raise ArtifactError(f"{path} holds different weights than the exported artifacts; re-export or pass the right --ckpt")
    return model


def open_backend(name: str, artifacts: Path, manifest: Manifest, device: str | None = None,
                 ckpt: str | None = None, config: str | None = None, model: Any = None,
                 log: Callable[[str], None] | None = None, cuda_graphs: bool = False) -> Backend:
    """``name`` (or ``auto``) on ``device`` (None: resolved by ``devices.resolve_device``, and the choice
    reported on ``log`` where there was one to make: a GPU, or a reason not to use it)."""
    if name == "auto":
        name = auto_backend(artifacts, device)
    check_name(name)
    resolved, why = resolve_device(name, device)
    if device is None and (why or resolved != "cpu"):  # a GPU machine: say which way the choice went
        announce(name, resolved, why, log)
    if cuda_graphs and not resolved.startswith("cuda"):
        raise BackendError(f"--cuda-graphs needs a CUDA device; {name} runs on the CPU here")
    if name == "torch":
        try:
            from vqdeploy.runtime.backends.torch_backend import TorchBackend
        except ImportError:
            raise BackendError("the torch backend needs PyTorch: pip install torch") from None

        return TorchBackend(model if model is not None else load_reference_model(manifest, ckpt, config), manifest,
                            resolved, cuda_graphs)
    if name == "onnxruntime":
        from vqdeploy.export.manifest import verify_graph_files
        from vqdeploy.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

        verify_graph_files(artifacts, manifest)
        return OnnxRuntimeBackend(artifacts, manifest, resolved, cuda_graphs)
    try:
        from vqdeploy.runtime.backends.tensorrt_backend import TensorRTBackend
    except ImportError as e:
        raise BackendError(f"the tensorrt backend is not available ({e})") from None
    return TensorRTBackend(artifacts, manifest, resolved, cuda_graphs=cuda_graphs)


def tensorrt_installed() -> bool:
    return bool(importlib.util.find_spec("tensorrt") or importlib.util.find_spec("tensorrt_rtx_bindings"))


def auto_backend(artifacts: Path, device: str | None) -> str:
    """TensorRT when engines and a GPU are there, else ONNX Runtime."""
    # lexists: whatever is there (a symlink too) is the TensorRT backend's to check and refuse
    engines = os.path.lexists(Path(artifacts) / "engines" / "engines.json")
    if device in (None, "cuda") and engines and gpu_present() and tensorrt_installed():
        return "tensorrt"
    return "onnxruntime"
