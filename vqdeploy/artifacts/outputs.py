"""Where ``parity`` and ``bench`` write their reports: checked before the expensive work, created
only when the results are written.

Inside the artifacts directory (the defaults ``<artifacts>/parity/`` and ``<artifacts>/bench.json``)
no component may be a symlink (``inside_dir``), so nothing is written outside the tree. A
user-given ``--out`` elsewhere is used as given. Either way every file is written with
``atomic_write``, and only a new name or a regular file is replaced: a directory, a symlink, a
device node, a FIFO or a socket where a report file goes is refused before any work starts.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from vqdeploy.files import check_target, check_writable, inside_dir


def _inside(artifacts: Path, path: Path) -> str | None:
    """``path`` relative to ``artifacts`` when it lies inside it (lexically, or under its real path)."""
    target = os.path.abspath(path)
    for root in {os.path.abspath(artifacts), os.path.realpath(artifacts)}:
        if os.path.commonpath([root, target]) == root:
            return os.path.relpath(target, root)
    return None


def check_output_dir(artifacts: Path, directory: Path, what: str) -> None:
    """Fail now if ``directory`` could not take the reports: a symlinked or non-directory component
    inside the artifacts tree, or no write permission."""
    rel = _inside(artifacts, directory)
    if rel not in (None, "."):
        existing = Path(artifacts)
        for part in Path(rel).parts:  # the part that exists must be real directories
            if not os.path.lexists(existing / part):
                break
            existing = existing / part
        if existing != Path(artifacts):
            inside_dir(artifacts, os.path.relpath(existing, artifacts))
    check_writable(directory, what)


def make_output_dir(artifacts: Path, directory: Path) -> Path:
    """``directory``, created (inside the artifacts tree: component by component, no symlink)."""
    rel = _inside(artifacts, directory)
    if rel == ".":
        return Path(artifacts)
    if rel is not None:
        return inside_dir(artifacts, rel, create=True)
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def check_files(paths: Iterable[Path], what: str, hint: str = "") -> None:
    """Every one of ``paths`` is a new name or a regular file (``check_target``; ``atomic_write`` would refuse
    anything else after the work is done)."""
    for p in paths:
        check_target(p, what, hint)
