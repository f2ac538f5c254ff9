"""Which backends can run here, for ``parity`` and ``bench`` (``--backends auto``), and the check of
an explicit list: every requested backend is validated before anything runs."""

from __future__ import annotations

from pathlib import Path

from vqdeploy.errors import BackendError
from vqdeploy.runtime.backends.devices import BACKENDS, gpu_present, ort_providers, torch_cuda
from vqdeploy.runtime.backends.select import tensorrt_installed


def available_backends(artifacts: Path, device: str | None) -> list[tuple[str, str]]:
    """(backend, device) pairs other than the torch-CPU reference itself."""
    out = [("onnxruntime", "cpu")] if device in (None, "cpu") else []
    if device in (None, "cuda") and gpu_present():
        if torch_cuda():
            out.append(("torch", "cuda"))
        if "CUDAExecutionProvider" in ort_providers():
            out.append(("onnxruntime", "cuda"))
        if tensorrt_installed() and (artifacts / "engines" / "engines.json").is_file():
            out.append(("tensorrt", "cuda"))
    return out


def skipped_backends(artifacts: Path, device: str | None) -> list[str]:
    """What ``--backends auto`` leaves out on this machine, and why (for the parity report)."""
    out = []
    gpu = device in (None, "cuda") and gpu_present()
    if device == "cpu":
        return ["GPU backends: --device cpu"]
    if tensorrt_installed():
        if not gpu:
            out.append("tensorrt: installed, but no CUDA GPU here")
        elif not (artifacts / "engines" / "engines.json").is_file():
            out.append(f"tensorrt: no engines (vqdeploy build-trt --artifacts {artifacts})")
    if not gpu:
        out.append("onnxruntime-cuda, torch-cuda: no CUDA GPU here")
    else:
        if "CUDAExecutionProvider" not in ort_providers():
            out.append("onnxruntime-cuda: no CUDAExecutionProvider (pip install 'vqdeploy[gpu]')")
        if not torch_cuda():
            out.append("torch-cuda: this torch has no CUDA")
    return out


def parse_backends(text: str, artifacts: Path, device: str | None) -> list[tuple[str, str]]:
    """``--backends``: 'auto' or a comma list, each resolved to its device here (so an impossible one
    fails before any backend runs)."""
    from vqdeploy.runtime.backends.devices import resolve_device

    if text == "auto":
        return available_backends(artifacts, device)
    out = []
    for name in text.split(","):
        name = name.strip()
        if name not in BACKENDS:
            raise BackendError(f"unknown backend '{name}' ({', '.join(BACKENDS)})")
        resolved = resolve_device(name, device)[0]
        if name == "tensorrt" and not tensorrt_installed():
            raise BackendError("the tensorrt backend is not available (pip install 'vqdeploy[tensorrt]')")
        out.append((name, resolved))
    return out
