"""Installing a finished artifacts directory at ``--out``: locked, atomic, and self-cleaning.

An export is built in ``.<out>.export-*`` beside ``--out`` and moved into place only when it is
complete. The whole export holds ``flock`` on ``.<out>.lock`` (beside ``--out``), so two exports to
one ``--out`` cannot interleave: the second fails at once instead of silently replacing the first.
Replacing an existing directory is one ``renameat2(RENAME_EXCHANGE)`` (Linux >= 3.15, glibc >= 2.28):
``--out`` is the old directory or the new one at every instant. Where the OS or file system lacks it,
the fallback is two renames (``--out`` -> ``.<out>.old-*``, new -> ``--out``); a kill between them
leaves ``--out`` missing, and the next export (or ``recover``) renames the old directory back.
Temp directories of killed exports are removed by the next export to the same ``--out``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

from vqdeploy.errors import ArtifactError
from vqdeploy.files import exclusive_lock

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _siblings(out: Path, kind: str) -> list[Path]:
    """Real directories ``.<out>.<kind>-*`` beside ``out`` (symlinks are never followed or removed)."""
    parent = out.parent
    found = []
    for p in parent.glob(f".{out.name}.{kind}-*"):
        with contextlib.suppress(OSError):
            if stat.S_ISDIR(os.lstat(p).st_mode):
                found.append(p)
    return sorted(found)


def temp_prefix(out: Path) -> str:
    return f".{out.name}.export-"


@contextlib.contextmanager
def export_lock(out: Path, log: Callable[[str], None] = print) -> Iterator[None]:
    """Hold the lock of ``out`` and clean up after killed exports before starting a new one."""
    out = Path(out)
    with exclusive_lock(out.parent / f".{out.name}.lock", f"another export to {out} is running; wait for it to finish",
                        remove=True):
        for line in recover(out):
            log(line)
        yield


def recover(out: Path) -> list[str]:
    """With the lock held: bring back ``out`` from an interrupted fallback swap, and remove the temp
    directories of killed exports. Returns what was done, for the log."""
    done = []
    old = _siblings(out, "old")
    if old and not os.path.lexists(out):
        os.rename(old[-1], out)  # the newest previous version: the swap was cut between its two renames
        done.append(f"restored {out} from {old[-1].name}")
        old = old[:-1]
    for p in old + _siblings(out, "export"):
        shutil.rmtree(p, ignore_errors=True)
        done.append(f"removed stale {p.name}")
    return done


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths; False where renameat2 or RENAME_EXCHANGE is not available."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _carry_engines(old: Path, new: Path) -> None:
    """Hard-link (or copy) ``old/engines`` into ``new``: build-trt rebuilds only what changed."""
    engines = old / "engines"
    try:
        if not stat.S_ISDIR(os.lstat(engines).st_mode):
            return
    except FileNotFoundError:
        return

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst, follow_symlinks=False)
        except OSError:
            shutil.copy2(src, dst, follow_symlinks=False)

    shutil.copytree(engines, new / "engines", symlinks=True, copy_function=link,
                    ignore=lambda d, names: [n for n in names if os.path.islink(os.path.join(d, n))])


def install(tmp: Path, out: Path, exchange: bool = True, log: Callable[[str], None] | None = None) -> None:
    """Move the finished ``tmp`` to ``out`` (the lock of ``out`` is held), keeping ``out``'s engines
    (build-trt reuses those whose graph did not change) and saying what else of the old one goes."""
    try:
        st = os.lstat(out)
    except FileNotFoundError:
        os.rename(tmp, out)
        return
    if stat.S_ISLNK(st.st_mode):
        raise ArtifactError(f"--out {out} is a symlink; pass the directory it points to")
    if not stat.S_ISDIR(st.st_mode):
        raise ArtifactError(f"--out {out} exists and is not a directory")
    _carry_engines(out, tmp)
    dropped = sorted(p.name + ("/" if p.is_dir() else "") for p in out.iterdir() if not (tmp / p.name).exists())
    if dropped and log is not None:
        log(f"replacing {out}: removed {', '.join(dropped)} (results of the previous graphs)")
    if exchange and _exchange(tmp, out):
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the previous version
        return
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    os.rename(out, old)
    os.rename(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
