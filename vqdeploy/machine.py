"""What this machine has: a CUDA GPU, ONNX Runtime's providers, a CUDA torch, TensorRT.

One place for every probe, so that the backend registry, ``build-trt`` and the reports ask the same
questions the same way (and tests fake one module). GPU presence and the device's name and compute
capability are asked of the NVIDIA driver (``libcuda``, through ctypes), so that the ONNX Runtime and
TensorRT paths never import torch or need a CUDA toolkit.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
from typing import Any

_CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75
_CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76


@functools.cache
def _libcuda() -> Any:
    """The initialised driver library, or None (no driver, or cuInit fails: no usable GPU)."""
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        return lib if lib.cuInit(0) == 0 else None
    return None


@functools.cache
def gpu_present() -> bool:
    """Whether the NVIDIA driver reports at least one CUDA device (no torch, no CUDA toolkit needed)."""
    lib = _libcuda()
    count = ctypes.c_int(0)
    return lib is not None and lib.cuDeviceGetCount(ctypes.byref(count)) == 0 and count.value > 0


def gpu_info(index: int = 0) -> tuple[str, str] | None:
    """(name, compute capability "8.6") of CUDA device ``index``; None without one."""
    lib = _libcuda()
    if lib is None or not gpu_present():
        return None
    device = ctypes.c_int(0)
    if lib.cuDeviceGet(ctypes.byref(device), index) != 0:
        return None
    name = ctypes.create_string_buffer(256)
    major, minor = ctypes.c_int(0), ctypes.c_int(0)
    if (lib.cuDeviceGetName(name, 256, device) != 0
            or lib.cuDeviceGetAttribute(ctypes.byref(major), _CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device) != 0
            or lib.cuDeviceGetAttribute(ctypes.byref(minor), _CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device) != 0):
        return None
    return name.value.decode(errors="replace"), f"{major.value}.{minor.value}"


def ort_providers() -> list[str]:
    """ONNX Runtime's execution providers in this environment ([] without onnxruntime)."""
    try:
        import onnxruntime
    except ImportError:
        return []
    return list(onnxruntime.get_available_providers())


def torch_installed() -> bool:
    return importlib.util.find_spec("torch") is not None


def torch_cuda() -> bool:
    """Whether torch is installed and sees a GPU (imports torch: only for the torch backend)."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def tensorrt_installed() -> bool:
    """Datacenter TensorRT or TensorRT-RTX is importable (not imported here)."""
    return bool(importlib.util.find_spec("tensorrt") or importlib.util.find_spec("tensorrt_rtx_bindings"))
