"""Atomic file writes and a build lock: a crash or Ctrl-C never leaves a half-written engine or
engines.json, and two builds into one directory do not interleave."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from vqdeploy.errors import ArtifactError


def atomic_write(path: Path, data: bytes | memoryview) -> None:
    """Write ``data`` to a temp file beside ``path``, fsync, then rename over ``path``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp creates 0600; the file gets the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def build_lock(directory: Path) -> Iterator[None]:
    """Exclusive lock on ``directory`` for the duration of a build (POSIX; a no-op elsewhere)."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    with open(directory / ".build.lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ArtifactError(f"{directory}: another build-trt is running on these artifacts") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
