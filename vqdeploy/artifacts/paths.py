"""Resolving a path or a name that an artifacts directory supplies (manifest.json, engines.json).

Artifacts directories are downloaded, shared and written by other tools, so every file they name
goes through ``artifact_file``: a relative, normalized path inside the directory, no symlink in any
component, a regular file. Graph and engine names become file names, so they must be plain
identifiers. Anything else is refused with one line naming the offending entry.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path, PurePosixPath
from typing import Any

from vqdeploy.errors import ArtifactError
from vqdeploy.schema import IDENTIFIER, fail, identifier

NAME = IDENTIFIER
_FILE_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


def check_name(name: object, where: str) -> str:
    """A graph or engine name: a plain identifier (it becomes part of file names)."""
    identifier(name, where)
    return str(name)


def check_relative(rel: object, where: str) -> str:
    """A relative, normalized file path of plain components (no '..', no absolute path, no '.' parts)."""
    if not isinstance(rel, str) or not rel:
        raise ArtifactError(f"{where}: refused file {rel!r}: expected a relative path")
    parts = rel.split("/")
    if (rel.startswith("/") or "\\" in rel or "\0" in rel or PurePosixPath(rel).as_posix() != rel
            or not all(_FILE_PART.fullmatch(p) for p in parts)):
        raise ArtifactError(f"{where}: refused file {rel!r}: must be a plain relative path inside the artifacts "
                            "directory (no '..', no absolute path)")
    return rel


def artifact_file(root: Path, rel: object, where: str, must_exist: bool = True, single_link: bool = False) -> Path:
    """``root/rel`` for a file named by untrusted data; ``where`` names the entry (e.g.
    ``manifest.json graphs.decoder.file``). With ``must_exist``, it must be a regular file; with
    ``single_link``, not a hard link either (a second name of a file that may lie outside the directory)."""
    rel = check_relative(rel, where)
    path = Path(root)
    parts = rel.split("/")
    for i, part in enumerate(parts):
        path = path / part
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            if must_exist:
                raise ArtifactError(f"{where}: {path} is missing; re-export") from None
            return path
        if stat.S_ISLNK(st.st_mode):
            raise ArtifactError(f"{where}: refused {path}: is a symlink (artifact files must be real files inside "
                                "the artifacts directory)")
        last = i == len(parts) - 1
        if last and not stat.S_ISREG(st.st_mode):
            raise ArtifactError(f"{where}: refused {path}: not a regular file")
        if last and single_link and st.st_nlink > 1:
            raise ArtifactError(f"{where}: refused {path}: it has {st.st_nlink} hard links, so it may be a file "
                                "outside the artifacts directory; copy the directory (cp -r) rather than linking it")
        if not last and not stat.S_ISDIR(st.st_mode):
            raise ArtifactError(f"{where}: refused {path}: not a directory")
    return path


# --- as schema rules (``vqdeploy.schema``) -----------------------------------------------------------
name = identifier


def relative_file(v: Any, where: str) -> None:
    check_relative(v, where)


def plain_file(v: Any, where: str) -> None:
    """A file in the same directory: one path component."""
    check_relative(v, where)
    if "/" in v:
        fail(where, "a file name in the same directory", v)
