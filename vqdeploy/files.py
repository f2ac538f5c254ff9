"""Writing files: the one way vqdeploy creates or replaces anything on disk; and opening the files it reads.

The write rule (docs/safety.md, Writes): vqdeploy writes only to a new name or over a regular file. A
directory, a symlink, a device node, a FIFO or a socket at a target is refused with one line
(``check_target``), before the command's work and again just before the file is installed, so
``--out /dev/null`` never replaces the system's ``/dev/null`` and a FIFO or a link planted in an
artifacts directory is left as it is. A file is written to a fresh temp file in its target directory
(``O_CREAT|O_EXCL|O_NOFOLLOW``: never an existing path, never through a symlink), fsynced and renamed
over the target, so a crash leaves the old file or the new one. Directories inside an artifacts tree
are created component by component and a symlinked component is refused. Locks are ``flock`` on a
lock file opened without following links and without truncation. Where a command will write is
checked before its expensive work starts. An OS error (no space, read-only file system, a name too
long, no permission, too many open files) is one line naming the path (``errors.os_error``).

The read rule: a file named by the user or by an artifacts directory is opened with ``O_NONBLOCK``
(a FIFO or a device cannot block the open) and read only when ``fstat`` says it is a regular file
(``open_regular``): a FIFO, a device, a socket or a directory is one line saying what it is.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from vqdeploy.errors import ArtifactError, InputError, VQDeployError, os_error, shown

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)


def kind_of(mode: int) -> str:
    """What a file of ``mode`` is, for a message: "a FIFO", "a character device", ..."""
    for test, name in ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a directory"), (stat.S_ISLNK, "a symlink"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _a(what: str) -> str:
    return f"{'an' if what[:1] in 'aeiou' else 'a'} {what}"


def open_regular(path: Path | str, what: str, error: type[VQDeployError] = InputError,
                 follow_symlinks: bool = True) -> BinaryIO:
    """``path`` opened for reading without blocking (``O_NONBLOCK``: a FIFO or a device does not hang the
    open) and only when it is a regular file; otherwise ``error`` in one line naming ``what`` and what the
    path is (a FIFO, a directory, a character device, ...). A missing file: "``what`` not found"."""
    flags = _READ_FLAGS | (0 if follow_symlinks else _NOFOLLOW)
    with contextlib.suppress(OSError):  # a device is not even opened (opening some has effects: a tape rewinds)
        mode = os.stat(path, follow_symlinks=follow_symlinks).st_mode
        if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode) and not stat.S_ISLNK(mode):
            raise error(f"{shown(path)} is {kind_of(mode)}, not {_a(what)} file")
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise error(f"{what} not found: {shown(path)}") from None
    except IsADirectoryError:
        raise error(f"{shown(path)} is a directory, not {_a(what)} file") from None
    except OSError as e:
        if not follow_symlinks and os.path.islink(path):
            raise error(f"{shown(path)} is a symlink; refused ({_a(what)} file must be a regular file)") from None
        raise error(f"cannot read {what} {shown(path)}: {e.strerror or e}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise error(f"{shown(path)} is {kind_of(mode)}, not {_a(what)} file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: Path | str, what: str, max_bytes: int, error: type[VQDeployError] = InputError,
                 too_large: type[VQDeployError] | None = None) -> bytes:
    """The bytes of ``path`` (``open_regular``), at most ``max_bytes`` (``too_large`` or ``error`` beyond)."""
    with open_regular(path, what, error) as f:
        try:
            data = f.read(max_bytes + 1)
        except OSError as e:
            raise error(f"cannot read {what} {shown(path)}: {e.strerror or e}") from None
    if len(data) > max_bytes:
        size = f"{max_bytes >> 20} MiB" if max_bytes >= 1 << 20 else f"{max_bytes} bytes"
        raise (too_large or error)(f"{shown(path)}: over {size}; too large for {_a(what)} file")
    return data


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open_regular(path, "artifact", ArtifactError) as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def check_target(path: Path | str, what: str = "", hint: str = "", error: type[VQDeployError] = InputError) -> None:
    """The write rule: ``path`` must be a new name or a regular file. A directory, a symlink, a device node,
    a FIFO or a socket there is refused (``error``: one line with ``what`` and ``hint``) and left as it is."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except NotADirectoryError:
        raise error(f"{what + ': ' if what else ''}cannot write {shown(path)}: a component of its directory is not "
                    "a directory") from None
    except OSError as e:
        raise os_error(e, path, "write") from None
    if stat.S_ISREG(st.st_mode):
        return
    raise error(f"{what + ': ' if what else ''}refused to write {shown(path)}: it is {kind_of(st.st_mode)}; vqdeploy "
                f"writes only to a regular file or a new name{hint}")


def default_mode(directory: bool = False) -> int:
    """The mode a plain ``open``/``mkdir`` would give (``mkstemp``/``mkdtemp`` make private ones)."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def atomic_write(path: Path, data: bytes | memoryview | str) -> None:
    """Write ``data`` to a new temp file beside ``path``, fsync, then rename over ``path`` (``check_target``:
    only a new name or a regular file is replaced).

    ``mkstemp`` opens with ``O_EXCL`` (a planted symlink or file at the temp name fails the open).
    """
    atomic_write_many({Path(path): data})


def atomic_write_many(files: dict[Path, bytes | memoryview | str]) -> None:
    """Write several files as one step: every target is checked (``check_target``), every temp file is
    written and fsynced, then all are renamed, so a failure (something in the way, a full disk) leaves none
    of them. An OS error is one line naming the target."""
    for path in files:
        check_target(path)
    temps: list[tuple[str, Path]] = []
    try:
        for path, data in files.items():
            path = Path(path)
            try:  # a short temp name: a target name near the file system's limit must still fit
                fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:64]}.", suffix=".tmp", dir=path.parent)
            except OSError as e:
                raise os_error(e, path, "write") from None
            temps.append((tmp, path))
            try:
                with os.fdopen(fd, "wb") as f:
                    os.fchmod(fd, default_mode())
                    f.write(data.encode() if isinstance(data, str) else data)
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as e:
                raise os_error(e, path, "write") from None
        for tmp, path in temps:
            check_target(path)  # again: something planted while the files were written is not replaced either
            try:
                os.replace(tmp, path)
            except OSError as e:
                raise os_error(e, path, "write") from None
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
            try:
                path.mkdir(mode=default_mode(directory=True) | 0o700)
            except OSError as e:
                raise os_error(e, path, "create") from None
            continue
        if stat.S_ISLNK(st.st_mode):
            raise ArtifactError(f"{path}: refused: is a symlink (vqdeploy writes only to real directories here)")
        if not stat.S_ISDIR(st.st_mode):
            raise ArtifactError(f"{path}: exists and is not a directory")
    return path


def check_writable(directory: Path, what: str) -> None:
    """Fail before expensive work when ``directory`` cannot take new files (not a directory, no permission, a
    read-only file system, a full one). Nothing is created: a missing directory is judged by its nearest
    existing ancestor (the write creates it later)."""
    directory = Path(directory).absolute()
    probe_dir = directory
    while not os.path.lexists(probe_dir) and probe_dir != probe_dir.parent:
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise InputError(f"{what}: cannot create {shown(directory)}: {shown(probe_dir)} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".vqdeploy-probe-", dir=probe_dir)
    except OSError as e:
        raise InputError(f"{what}: cannot write to {shown(probe_dir)} ({e.strerror})") from None
    os.close(fd)
    os.unlink(probe)
    with contextlib.suppress(OSError, AttributeError):  # statvfs: POSIX
        fs = os.statvfs(probe_dir)
        if fs.f_blocks > 0 and fs.f_bavail == 0:  # not one block left (f_blocks 0: a file system that does not say)
            raise InputError(f"{what}: cannot write to {shown(probe_dir)} (No space left on device: free some space "
                             "or write elsewhere)")


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
