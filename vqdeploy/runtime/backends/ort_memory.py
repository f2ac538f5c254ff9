"""ONNX Runtime's device memory as ``OrtValue``s: the CUDA buffers of the onnxruntime backend, with
no other GPU library. Each allocation is one OrtValue of the buffer's storage type (bf16 as its
16-bit pattern: the graph binding names the real element type); transfers copy whole OrtValues."""

from __future__ import annotations

from typing import Any

import numpy as np

from vqdeploy.runtime.backends.buffers import STORAGE, Buffer, host_array


class OrtDeviceMemory:
    def __init__(self, ort: Any, device: str = "cuda", index: int = 0) -> None:
        self.ort = ort
        self.device = device
        self.index = index

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

    def synchronize(self) -> None:
        pass  # update_inplace and numpy() are synchronous; run_with_iobinding returns when done
