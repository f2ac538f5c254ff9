"""Errors that the CLI turns into one clear line and a non-zero exit.

Anything raised as a ``VQDeployError`` is a problem with the user's input or environment
(a bad checkpoint, a wrong image, a missing backend); anything else is a bug in vqdeploy.
"""

from __future__ import annotations

import errno
import os
from typing import Any


class VQDeployError(Exception):
    """Base class: the message is shown to the user as is, without a traceback."""

    exit_code = 1


class CheckpointError(VQDeployError):
    """Missing, truncated, corrupt, unsafe or mismatched checkpoint."""


class ConfigError(VQDeployError):
    """Missing or invalid model config, or an unknown ``target``."""


class InputError(VQDeployError):
    """Bad condition image, class id, size or sampling option."""


class TooLargeError(InputError):
    """An input over a size limit (``serve`` answers 413)."""


class UnsupportedInputError(InputError):
    """An input of a type or mode the model does not take (``serve`` answers 415)."""


class ArtifactError(VQDeployError):
    """Missing, foreign or inconsistent export artifacts or engines."""


class BackendError(VQDeployError):
    """A runtime (onnxruntime, TensorRT, CUDA) is not installed or cannot run here."""


class FileSystemError(VQDeployError):
    """The operating system refused a read or write of a named path: no space left, a read-only file system,
    a name too long, no permission, too many open files. The message names the path and the reason."""


class ParityError(VQDeployError):
    """A deployed stage does not match the PyTorch reference within tolerance."""

    exit_code = 3


def shown(path: Any) -> str:
    """A path (or any name) as it appears in a message: as it is when every character is printable, else
    quoted with escapes, so that a name holding a newline or a terminal escape cannot print a second line."""
    text = os.fsdecode(path) if isinstance(path, (bytes, os.PathLike)) else str(path)
    return text if text.isprintable() else repr(text)


def one_line(text: str) -> str:
    """``text`` with every non-printable character escaped (a message is one line whatever it quotes)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


_HINTS = {
    errno.ENOSPC: "free some space or write elsewhere",
    errno.EDQUOT: "over the disk quota; free some space or write elsewhere",
    errno.EROFS: "the file system is read-only; write elsewhere",
    errno.ENAMETOOLONG: "use a shorter name",
    errno.EMFILE: "raise the limit (ulimit -n) or close other programs' files",
    errno.ENFILE: "the system's open-file table is full",
}


def os_error(e: OSError, path: Any = None, doing: str = "use") -> FileSystemError:
    """One line for an OS error on ``path`` (default: the error's own file name): what was done, which path,
    the system's reason and, for the common ones, what to do."""
    path = e.filename if path is None else path
    reason = e.strerror or type(e).__name__
    hint = _HINTS.get(e.errno or 0)
    where = f"cannot {doing} {shown(path)}: " if path is not None else ""
    return FileSystemError(f"{where}{reason}" + (f" ({hint})" if hint else ""))
