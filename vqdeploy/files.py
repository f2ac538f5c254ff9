"""Writing files: the one way vqdeploy creates or replaces anything on disk.

Rules (README, Safety): a file is written to a fresh temp file in its target directory
(``O_CREAT|O_EXCL|O_NOFOLLOW``: never an existing path, never through a symlink), fsynced and
renamed over the target, so a crash leaves the old file or the new one and a symlink planted at
the target is replaced, not followed. Directories inside an artifacts tree are created component
by component and a symlinked component is refused. Locks are ``flock`` on a lock file opened
without following links and without truncation. Where a command will write is checked before its
expensive work starts.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from vqdeploy.errors import ArtifactError, InputError

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def default_mode(directory: bool = False) -> int:
    """The mode a plain ``open``/``mkdir`` would give (``mkstemp``/``mkdtemp`` make private ones)."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def atomic_write(path: Path, data: bytes | memoryview | str) -> None:
    """Write ``data`` to a new temp file beside ``path``, fsync, then rename over ``path``.

    ``mkstemp`` opens with ``O_EXCL`` (a planted symlink or file at the temp name fails the open), and
    ``rename`` replaces a symlink at ``path`` instead of writing through it. A directory at ``path`` is
    refused before anything is written.
    """
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        raise InputError(f"cannot write {path}: it is a directory")
    if isinstance(data, str):
        data = data.encode()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, default_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def inside_dir(root: Path, rel: str, create: bool = False) -> Path:
    """``root/rel`` as a real directory with no symlink in any component below ``root``.

    Used for the directories vqdeploy itself keeps inside an artifacts directory (``engines/``,
    ``parity/``): a link planted there would redirect writes outside the tree.
    """
    path = Path(root)
    for part in Path(rel).parts:
        if part in ("", ".", "..") or os.sep in part:
            raise ArtifactError(f"{root}: refused directory '{rel}': not a plain relative path")
        path = path / part
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            if not create:
                raise ArtifactError(f"{path}: no such directory") from None
            path.mkdir(mode=default_mode(directory=True) | 0o700)
            continue
        if stat.S_ISLNK(st.st_mode):
            raise ArtifactError(f"{path}: refused: is a symlink (vqdeploy writes only to real directories here)")
        if not stat.S_ISDIR(st.st_mode):
            raise ArtifactError(f"{path}: exists and is not a directory")
    return path


def check_writable(directory: Path, what: str) -> None:
    """Fail before expensive work when ``directory`` (created if missing) cannot take new files."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise InputError(f"{what}: {directory} exists and is not a directory") from None
    except OSError as e:
        raise InputError(f"{what}: cannot create {directory} ({e.strerror})") from None
    if not directory.is_dir():
        raise InputError(f"{what}: {directory} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".vqdeploy-probe-", dir=directory)
    except OSError as e:
        raise InputError(f"{what}: cannot write to {directory} ({e.strerror})") from None
    os.close(fd)
    os.unlink(probe)


@contextlib.contextmanager
def exclusive_lock(path: Path, busy: str) -> Iterator[None]:
    """Hold ``flock`` on ``path`` (created if missing; a symlink there is refused, nothing is
    truncated); ``busy`` is the error when another process holds it. POSIX; a no-op elsewhere."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | _NOFOLLOW | getattr(os, "O_CLOEXEC", 0), default_mode())
    except OSError as e:
        why = "it is a symlink" if os.path.islink(path) else e.strerror
        raise ArtifactError(f"{path}: cannot use as a lock file ({why})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ArtifactError(f"{path}: cannot use as a lock file (not a regular file)")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ArtifactError(busy) from None
        yield
    finally:
        os.close(fd)
