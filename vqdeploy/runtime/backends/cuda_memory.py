"""CUDA device memory and a stream from NVIDIA's cuda-python (``cuda.bindings.runtime``): what the
TensorRT backend binds, without PyTorch. Every call's status is checked and turned into one line.

cuda-python's runtime functions return ``(cudaError_t, *values)``; ``CudaRuntime.call`` unwraps that.
Allocations are freed when their ``Allocation`` is collected (``cudaFree`` waits for the device).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from vqdeploy.errors import BackendError
from vqdeploy.runtime.backends.buffers import STORAGE, Buffer, check_copy, host_array

CUDA_PYTHON = "pip install cuda-python (or 'vqdeploy[tensorrt]')"


def load_cudart() -> Any:
    """``cuda.bindings.runtime`` (cuda-python >= 12.6), or the older ``cuda.cudart`` layout."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        try:
            from cuda import cudart as runtime  # type: ignore[no-redef]
        except ImportError:
            raise BackendError(f"the tensorrt backend needs NVIDIA's cuda-python: {CUDA_PYTHON}") from None
    return runtime


class CudaRuntime:
    """The few runtime calls we use, with their status checked."""

    def __init__(self, rt: Any = None) -> None:
        self.rt = rt if rt is not None else load_cudart()

    def call(self, name: str, *args: Any) -> Any:
        err, *values = getattr(self.rt, name)(*args)
        if int(err) != 0:
            raise BackendError(f"CUDA {name} failed ({_error_name(self.rt, err)})")
        return values[0] if len(values) == 1 else tuple(values)

    def device_count(self) -> int:
        try:
            return int(self.call("cudaGetDeviceCount"))
        except BackendError:
            return 0

    def device(self, index: int) -> tuple[str, str]:
        """(name, compute capability) of device ``index``."""
        props = self.call("cudaGetDeviceProperties", index)
        name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
        return name.rstrip("\x00"), f"{props.major}.{props.minor}"


def _error_name(rt: Any, err: Any) -> str:
    try:
        got = rt.cudaGetErrorName(err)
        return str(got[1].decode() if isinstance(got[1], bytes) else got[1])
    except Exception:  # noqa: BLE001 (a failure to name the error must not hide it)
        return str(err)


class Allocation:
    """One ``cudaMalloc`` block, freed with its owner."""

    def __init__(self, cuda: CudaRuntime, nbytes: int) -> None:
        self.cuda = cuda
        self.ptr = int(cuda.call("cudaMalloc", max(nbytes, 256)))

    def __del__(self) -> None:
        try:
            self.cuda.call("cudaFree", self.ptr)
        except Exception:  # noqa: BLE001 (interpreter shutdown: the driver frees it anyway)
            pass


class CudaMemory:
    """Device buffers on one GPU and the stream every transfer and graph is enqueued on."""

    device = "cuda"

    def __init__(self, index: int = 0, cuda: CudaRuntime | None = None) -> None:
        self.cuda = cuda or CudaRuntime()
        self.index = index
        self.cuda.call("cudaSetDevice", index)  # makes the primary context current: TensorRT uses it
        self.stream = int(self.cuda.call("cudaStreamCreate"))

    def empty(self, shape: tuple[int, ...], dtype: str) -> Buffer:
        nbytes = math.prod(shape) * np.dtype(STORAGE[dtype]).itemsize
        block = Allocation(self.cuda, nbytes)
        return Buffer(block.ptr, tuple(shape), dtype, block)

    def zeros(self, shape: tuple[int, ...], dtype: str) -> Buffer:
        buf = self.empty(shape, dtype)
        self.cuda.call("cudaMemsetAsync", buf.ptr, 0, buf.nbytes, self.stream)
        return buf

    def upload(self, array: np.ndarray, into: Buffer) -> None:
        src = host_array(array, into.dtype)
        if src.size != math.prod(into.shape):
            raise ValueError(f"upload of {src.shape} into a buffer of shape {into.shape}")
        kind = self.cuda.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        # from pageable memory the call returns once the source is staged: ``src`` may go
        self.cuda.call("cudaMemcpyAsync", into.ptr, src.ctypes.data, src.nbytes, kind, self.stream)

    def download(self, buf: Buffer) -> np.ndarray:
        out = np.empty(buf.shape, dtype=STORAGE[buf.dtype])
        kind = self.cuda.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self.cuda.call("cudaMemcpyAsync", out.ctypes.data, buf.ptr, out.nbytes, kind, self.stream)
        self.synchronize()
        return out

    def copy(self, src: Buffer, dst: Buffer) -> None:
        check_copy(src, dst)
        kind = self.cuda.rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice
        self.cuda.call("cudaMemcpyAsync", dst.ptr, src.ptr, src.nbytes, kind, self.stream)

    def synchronize(self) -> None:
        self.cuda.call("cudaStreamSynchronize", self.stream)
