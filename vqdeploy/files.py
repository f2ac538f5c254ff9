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
import hashlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from vqdeploy.errors import ArtifactError, InputError

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


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
    atomic_write_many({Path(path): data})


def atomic_write_many(files: dict[Path, bytes | memoryview | str]) -> None:
    """Write several files as one step: every temp file is written and fsynced first, then all are
    renamed, so a failure (a directory in the way, a full disk) leaves none of them."""
    for path in files:
        if Path(path).is_dir() and not Path(path).is_symlink():
            raise InputError(f"cannot write {path}: it is a directory")
    temps: list[tuple[str, Path]] = []
    try:
        for path, data in files.items():
            path = Path(path)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            temps.append((tmp, path))
            os.fchmod(fd, default_mode())
            with os.fdopen(fd, "wb") as f:
                f.write(data.encode() if isinstance(data, str) else data)
                f.flush()
                os.fsync(f.fileno())
        for tmp, path in temps:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in temps:
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
    """Fail before expensive work when ``directory`` cannot take new files. Nothing is created: a
    missing directory is judged by its nearest existing ancestor (the write creates it later)."""
    directory = Path(directory).absolute()
    probe_dir = directory
    while not os.path.lexists(probe_dir) and probe_dir != probe_dir.parent:
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise InputError(f"{what}: cannot create {directory}: {probe_dir} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".vqdeploy-probe-", dir=probe_dir)
    except OSError as e:
        raise InputError(f"{what}: cannot write to {probe_dir} ({e.strerror})") from None
    os.close(fd)
    os.unlink(probe)


@contextlib.contextmanager
def exclusive_lock(path: Path, busy: str, remove: bool = False) -> Iterator[None]:
    """Hold ``flock`` on ``path`` (created if missing; a symlink there is refused, nothing is
    truncated); ``busy`` is the error when another process holds it. POSIX; a no-op elsewhere.

    ``remove``: unlink the lock file on release (so it does not outlive the work beside the user's
    files). Safe against the classic race: a waiter that locked a file which was unlinked meanwhile
    sees that the path no longer names its file and starts over.
    """
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    while True:
        try:
            # O_NONBLOCK: a FIFO planted at the lock's name must not block the open (it is refused below)
            flags = os.O_RDONLY | os.O_CREAT | _NOFOLLOW | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
            fd = os.open(path, flags, default_mode())
        except OSError as e:
            why = "it is a symlink" if os.path.islink(path) else e.strerror
            raise ArtifactError(f"{path}: cannot use as a lock file ({why})") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ArtifactError(f"{path}: cannot use as a lock file (not a regular file)")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ArtifactError(busy) from None
            try:
                now = os.lstat(path)
            except FileNotFoundError:
                now = None
            if now is None or (now.st_ino, now.st_dev) != (st.st_ino, st.st_dev):
                continue  # the holder before us removed this file: lock the one that is there now
            try:
                yield
            finally:
                if remove:
                    with contextlib.suppress(OSError):
                        os.unlink(path)
            return
        finally:
            os.close(fd)
