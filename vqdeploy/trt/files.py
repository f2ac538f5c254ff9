"""A build lock: two builds into one artifacts directory do not interleave (engine files are
written with ``vqdeploy.files.atomic_write``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from vqdeploy.errors import ArtifactError


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
