"""An artifacts directory opened once: what every command that reads one hands on.

``Artifacts.open(path)`` reads and validates ``manifest.json`` once; the graph files are resolved
and hashed once, on first use (``graph_file``); ``engines/engines.json`` is read once, when a
TensorRT backend or ``build-trt`` asks for it. Nothing below the command that opened the directory
resolves the path again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vqdeploy.artifacts import engines as records
from vqdeploy.artifacts.graph_files import check_external_data, graph_files
from vqdeploy.artifacts.manifest import MANIFEST, Manifest, read_manifest
from vqdeploy.errors import ArtifactError
from vqdeploy.files import inside_dir, sha256_file


@dataclass
class Artifacts:
    path: Path
    manifest: Manifest
    _verified: set[str] = field(default_factory=set, repr=False)
    _engines: dict[str, Any] | None = field(default=None, repr=False)

    @classmethod
    def open(cls, path: str | Path) -> Artifacts:
        """The artifacts directory ``path`` (its ``manifest.json`` is accepted too, meaning its directory)."""
        path = Path(path)
        if path.name == MANIFEST and not path.is_dir():
            path = path.parent
        elif path.is_file():
            what = "a checkpoint" if path.suffix in (".ckpt", ".pt", ".pth", ".safetensors") else "a file"
            raise ArtifactError(f"{path} is {what}, not an artifacts directory: pass the directory that "
                                f"`vqdeploy export --ckpt CKPT --out DIR` wrote")
        return cls(path, read_manifest(path))

    # --- graphs -----------------------------------------------------------------------------------
    def graph_file(self, name: str) -> Path:
        """The ``.onnx`` of graph ``name``: inside the directory, no symlink, regular, the manifest's
        sha256 (itself and its external data), and its external-data references pointing only at the
        manifest's file. Checked once per graph; safe to hand to a loader."""
        files = graph_files(self.path, self.manifest, name)
        if name not in self._verified:
            for path, digest, _ in files:
                if sha256_file(path) != digest:
                    raise ArtifactError(f"{path}: does not match the manifest (sha256 differs); re-export")
            ext = self.manifest.graphs[name].get("external_data")
            check_external_data(files[0][0], None if ext is None else ext["file"], name)
            self._verified.add(name)
        return files[0][0]

    def verify(self) -> None:
        """Every graph file checked (``graph_file``), before a backend or a build starts."""
        for name in self.manifest.graphs:
            self.graph_file(name)

    # --- TensorRT engines -------------------------------------------------------------------------
    @property
    def engines_path(self) -> Path:
        return self.path / records.ENGINES_DIR

    def has_engines(self) -> bool:
        """Whether an ``engines/engines.json`` entry is there (whatever it is: the TensorRT backend checks it)."""
        return os.path.lexists(self.engines_path / records.ENGINES_JSON)

    def engines_dir(self, create: bool = False) -> Path:
        """``engines/`` as a real directory inside the artifacts (created with ``create``)."""
        return inside_dir(self.path, records.ENGINES_DIR, create=create)

    def engines(self) -> dict[str, Any] | None:
        """engines.json, validated (None: there is none); read once."""
        if self._engines is None:
            if not os.path.lexists(self.engines_path):
                return None
            self._engines = records.read(self.engines_dir())
        return self._engines


def open_artifacts(path: str | Path | Artifacts) -> Artifacts:
    """``path`` opened (an ``Artifacts`` is returned as it is)."""
    return path if isinstance(path, Artifacts) else Artifacts.open(path)
