"""Copying tensors out of a file that may change while we read it.

A training job rewrites ``last.ckpt`` in place every few minutes. Through a memory map, a read
of a page that a truncation removed is a SIGBUS: the process dies with no message. So tensors
are copied with positioned reads (``os.preadv``) into private memory: a truncation shows up as a
short read, and a rewrite as a changed size/mtime/inode between the first ``fstat`` and the
last, both reported as one ``CheckpointError`` line. Only the tensors asked for are read (the
model's weights, not a Lightning checkpoint's optimizer state), each once: one copy in RAM.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

import torch

from vqdeploy import files
from vqdeploy.errors import CheckpointError


@dataclass(frozen=True)
class FileIdentity:
    """What changes when a file is rewritten, truncated or replaced."""

    device: int
    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileIdentity:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def open_regular(path: Path) -> tuple[BinaryIO, FileIdentity]:
    """``path`` opened for reading (never blocking on a FIFO), and its identity; a regular file only (one
    line saying what it is otherwise: a FIFO, a directory, a device ...)."""
    f = files.open_regular(path, "checkpoint", CheckpointError)
    return f, FileIdentity.of(os.fstat(f.fileno()))


def changed(path: Path, what: str) -> CheckpointError:
    return CheckpointError(f"{path}: the checkpoint changed while it was being read ({what}); is a training job "
                           "writing it? Wait until it is complete (or copy it) and retry")


def check_unchanged(f: BinaryIO, path: Path, before: FileIdentity) -> None:
    """The open file and the path still name the file ``before`` describes, unmodified."""
    now = FileIdentity.of(os.fstat(f.fileno()))
    if now != before:
        what = "size" if now.size != before.size else "modification time"
        raise changed(path, f"{what}: {before.size} -> {now.size} bytes" if what == "size" else what)
    try:
        at_path = FileIdentity.of(os.stat(path))
    except OSError:
        raise changed(path, "it was removed") from None
    if (at_path.device, at_path.inode) != (before.device, before.inode):
        raise changed(path, "it was replaced by another file")


def read_exact(f: BinaryIO, offset: int, out: memoryview, path: Path) -> None:
    """Fill ``out`` from ``offset``: positioned reads, no memory map; a short read means the file shrank."""
    got, n = 0, len(out)
    fd = f.fileno()
    while got < n:
        if hasattr(os, "preadv"):
            k = os.preadv(fd, [out[got:]], offset + got)
        else:  # no preadv (Windows, older macOS): seek + readinto on the same descriptor
            f.seek(offset + got)
            k = cast(Any, f).readinto(out[got:]) or 0
        if k <= 0:
            raise changed(path, f"it ended at byte {offset + got}, a tensor needs bytes up to {offset + n}")
        got += k


def read_tensor_bytes(f: BinaryIO, offset: int, nbytes: int, path: Path) -> torch.Tensor:
    """``nbytes`` at ``offset`` as a fresh uint8 tensor (private memory)."""
    buf = torch.empty(nbytes, dtype=torch.uint8)
    if nbytes:
        read_exact(f, offset, buf.numpy().data.cast("B"), path)
    return buf


def needed_bytes(shape: tuple[int, ...], stride: tuple[int, ...], storage_offset: int, itemsize: int) -> int:
    """Bytes of storage a strided tensor reads (0 when it is empty); -1 for a negative stride or offset."""
    if any(s == 0 for s in shape):
        return 0
    if storage_offset < 0 or any(st < 0 for st in stride):
        return -1
    return (storage_offset + sum((s - 1) * st for s, st in zip(shape, stride)) + 1) * itemsize
