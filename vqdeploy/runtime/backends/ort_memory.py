"""ONNX Runtime's device memory as ``OrtValue``s: the CUDA buffers of the onnxruntime backend, with
no other GPU library. Each allocation is one OrtValue of the buffer's storage type (bf16 as its
16-bit pattern: the graph binding names the real element type); transfers copy whole OrtValues."""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

from vqdeploy.runtime.backends.buffers import STORAGE, Buffer, check_copy, host_array
from vqdeploy.runtime.backends.cuda_memory import CudaRuntime


class OrtDeviceMemory:
    def __init__(self, ort: Any, device: str = "cuda", index: int = 0) -> None:
        self.ort = ort
        self.device = device
        self.index = index
        self.cuda: Any = None  # cuda-python, for device copies (CUDA graphs with the sampler graph)

    def empty(self, shape: tuple[int, ...], dtype: str) -> Buffer:
        value = self.ort.OrtValue.ortvalue_from_shape_and_type(list(shape), STORAGE[dtype], self.device, self.index)
        return Buffer(int(value.data_ptr()), tuple(shape), dtype, value)

    def zeros(self, shape: tuple[int, ...], dtype: str) -> Buffer:
        buf = self.empty(shape, dtype)
        buf.owner.update_inplace(np.zeros(shape, dtype=STORAGE[dtype]))
        return buf

    def _owner(self, buf: Buffer) -> Any:
        if buf.owner is None:
            raise ValueError("device transfers need a whole buffer, not a view")
        return buf.owner

    def upload(self, array: np.ndarray, into: Buffer) -> None:
        self._owner(into).update_inplace(host_array(array, into.dtype).reshape(into.shape))

    def download(self, buf: Buffer) -> np.ndarray:
        return np.asarray(self._owner(buf).numpy())

    def copy(self, src: Buffer, dst: Buffer) -> None:
        """ONNX Runtime's Python API copies whole OrtValues at best, not a token into a row of a larger
        buffer: cuda-python does it (``run_with_iobinding`` has returned, so the device is idle)."""
        check_copy(src, dst)
        if self.device == "cpu":
            ctypes.memmove(dst.ptr, src.ptr, src.nbytes)
            return
        if self.cuda is None:
            self.cuda = CudaRuntime()
        cuda = self.cuda
        cuda.call("cudaMemcpy", dst.ptr, src.ptr, src.nbytes, cuda.rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice)

    def synchronize(self) -> None:
        pass  # update_inplace and numpy() are synchronous; run_with_iobinding returns when done
