"""The one place that decides which device a backend runs on, and the one list of backend names.

``auto`` (no ``--device``) means: ONNX Runtime on CUDA only when ``CUDAExecutionProvider`` is
really there (onnxruntime-gpu) and a GPU is present, else CPU; TensorRT on CUDA (a GPU is
required); torch on CUDA when torch sees a GPU. GPU presence is asked of the NVIDIA driver
(``libcuda``) so that the ONNX Runtime and TensorRT paths never import torch.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable

from vqdeploy.errors import BackendError

BACKENDS = ("torch", "onnxruntime", "tensorrt")
BACKEND_CHOICES = ("auto", *BACKENDS)
DEVICES = ("cpu", "cuda")
GPU_EXTRA = "pip install 'vqdeploy[gpu]' for the GPU"


@functools.cache
def gpu_present() -> bool:
    """Whether the NVIDIA driver reports at least one CUDA device (no torch, no CUDA toolkit needed)."""
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        count = ctypes.c_int(0)
        return lib.cuInit(0) == 0 and lib.cuDeviceGetCount(ctypes.byref(count)) == 0 and count.value > 0
    return False


def ort_providers() -> list[str]:
    """ONNX Runtime's execution providers in this environment ([] without onnxruntime)."""
    try:
        import onnxruntime
    except ImportError:
        return []
    return list(onnxruntime.get_available_providers())


def torch_cuda() -> bool:
    """Whether torch is installed and sees a GPU (imports torch: only for the torch backend)."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def check_name(name: str) -> str:
    if name not in BACKENDS:
        raise BackendError(f"unknown backend '{name}' (auto, {', '.join(BACKENDS)})")
    return name


def resolve_device(backend: str, requested: str | None) -> tuple[str, str]:
    """(device, why): the device ``backend`` runs on, given ``--device`` (None: not passed), and a
    note on the choice ("" when nothing needs saying). Raises ``BackendError`` when it cannot run."""
    check_name(backend)
    if requested is not None and requested not in DEVICES:
        raise BackendError(f"--device {requested}: expected {' or '.join(DEVICES)}")
    flag = f"--device {requested}: " if requested else ""
    if backend == "tensorrt":
        if requested == "cpu":
            raise BackendError("--device cpu: the tensorrt backend runs on a CUDA GPU only")
        if not gpu_present():
            raise BackendError(f"{flag}the tensorrt backend needs a CUDA GPU; none is available here")
        return "cuda", ""
    if backend == "torch":
        if requested == "cuda" and not torch_cuda():
            raise BackendError("--device cuda: torch sees no CUDA device here")
        if requested:
            return requested, ""
        return ("cuda", "") if torch_cuda() else ("cpu", "")
    # onnxruntime
    has_provider = "CUDAExecutionProvider" in ort_providers()
    if requested == "cuda":
        if not gpu_present():
            raise BackendError("--device cuda: no CUDA device is available here")
        if not has_provider:
            raise BackendError(f"--device cuda: onnxruntime has no CUDA provider here ({GPU_EXTRA})")
        return "cuda", ""
    if requested == "cpu":
        return "cpu", ""
    if gpu_present() and has_provider:
        return "cuda", ""
    if gpu_present():
        return "cpu", f"no CUDAExecutionProvider: {GPU_EXTRA}"
    return "cpu", ""


def announce(backend: str, device: str, why: str, log: Callable[[str], None] | None) -> None:
    """The choice, once, on the caller's log (stderr for the CLI)."""
    if log is not None:
        log(f"backend {backend} on {device}" + (f" ({why})" if why else ""))
