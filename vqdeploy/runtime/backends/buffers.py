"""Tensors the graph runtimes bind by address, without PyTorch.

A ``Buffer`` is an address, a shape and a dtype name (the manifest's); the ``Memory`` that made it
keeps the storage alive and moves data between it and numpy. Host memory is numpy; ONNX Runtime's
device memory is ``OrtValue``s (``ort_memory``); TensorRT's comes from cuda-python (``cuda_memory``).
A view (``Buffer.view``) shares its parent's storage: the KV cache of a smaller batch, the k-th
sampled token. Device memories upload into and download from whole buffers only (what they allocated).
"""

from __future__ import annotations

import ctypes
import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

# ONNX TensorProto element types: bound explicitly, so bf16 needs no numpy dtype
ELEMENT_TYPE = {"float32": 1, "float16": 10, "bfloat16": 16, "int64": 7, "uint8": 2}
# host storage per dtype name: bf16 is carried as its 16-bit pattern (never computed on here)
STORAGE = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16, "int64": np.int64, "uint8": np.uint8}


@dataclass(frozen=True)
class Buffer:
    """A contiguous tensor at ``ptr`` (host or device memory)."""

    ptr: int
    shape: tuple[int, ...]
    dtype: str
    owner: Any = None  # the storage (numpy array, OrtValue, allocation); None for a view

    @property
    def itemsize(self) -> int:
        return int(np.dtype(STORAGE[self.dtype]).itemsize)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.itemsize

    def view(self, shape: tuple[int, ...], offset: int = 0) -> Buffer:
        """``shape`` elements starting ``offset`` elements in (contiguous, within this buffer)."""
        if offset < 0 or (offset + math.prod(shape)) * self.itemsize > self.nbytes:
            raise ValueError(f"view {shape} at {offset} outside a buffer of shape {self.shape}")
        return Buffer(self.ptr + offset * self.itemsize, tuple(shape), self.dtype)


class Memory(Protocol):
    """Allocation and host transfers for one device."""

    device: str

    def empty(self, shape: tuple[int, ...], dtype: str) -> Buffer: ...

    def zeros(self, shape: tuple[int, ...], dtype: str) -> Buffer: ...

    def upload(self, array: np.ndarray, into: Buffer) -> None:
        """Host ``array`` (same element count, cast to ``into``'s dtype) into ``into``."""

    def download(self, buf: Buffer) -> np.ndarray:
        """A host copy of ``buf``."""

    def copy(self, src: Buffer, dst: Buffer) -> None:
        """Device to device, ordered after the work already queued (views allowed)."""

    def synchronize(self) -> None: ...


def host_array(array: np.ndarray, dtype: str) -> np.ndarray:
    """``array`` as contiguous host storage of ``dtype`` (bf16: already its 16-bit pattern)."""
    return np.ascontiguousarray(array, dtype=STORAGE[dtype])


class HostMemory:
    """numpy arrays: the CPU runtimes read and write them in place."""

    device = "cpu"

    def empty(self, shape: tuple[int, ...], dtype: str) -> Buffer:
        a = np.empty(shape, dtype=STORAGE[dtype])
        return Buffer(a.ctypes.data if a.size else _EMPTY.ctypes.data, tuple(shape), dtype, a)

    def zeros(self, shape: tuple[int, ...], dtype: str) -> Buffer:
        buf = self.empty(shape, dtype)
        buf.owner[...] = 0
        return buf

    def upload(self, array: np.ndarray, into: Buffer) -> None:
        src = host_array(array, into.dtype)
        if src.size != math.prod(into.shape):
            raise ValueError(f"upload of {src.shape} into a buffer of shape {into.shape}")
        if src.nbytes:
            ctypes.memmove(into.ptr, src.ctypes.data, src.nbytes)

    def download(self, buf: Buffer) -> np.ndarray:
        out = np.empty(buf.shape, dtype=STORAGE[buf.dtype])
        if out.nbytes:
            ctypes.memmove(out.ctypes.data, buf.ptr, out.nbytes)
        return out

    def copy(self, src: Buffer, dst: Buffer) -> None:
        check_copy(src, dst)
        ctypes.memmove(dst.ptr, src.ptr, src.nbytes)

    def synchronize(self) -> None:
        pass


def check_copy(src: Buffer, dst: Buffer) -> None:
    if src.nbytes != dst.nbytes or src.dtype != dst.dtype:
        raise ValueError(f"copy of {src.shape} {src.dtype} into {dst.shape} {dst.dtype}")


_EMPTY = np.zeros(64, dtype=np.uint8)  # an address for zero-size tensors
