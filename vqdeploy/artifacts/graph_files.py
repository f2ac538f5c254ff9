"""The files of an exported graph, resolved the one way artifact files are (``artifact_file``),
and the external-data references inside the ``.onnx`` checked before any loader follows them.

An ONNX file names its own external data file (``location`` in each TensorProto) and ONNX Runtime
and the TensorRT parser read whatever it names, relative to the graph: ``../../etc/passwd`` or an
absolute path included. So before a graph is loaded, every tensor stored outside the protobuf must
point at the manifest's ``external_data.file``, a plain name beside the graph, itself a regular
file inside the artifacts directory with one link (a hard link is a second name of a file that may
lie outside it). The references are read from the protobuf's wire format (``onnx_scan``: no ``onnx``
import, weights skipped by their length prefix over a memory map).
"""

from __future__ import annotations

import posixpath
from pathlib import Path

from vqdeploy.artifacts.manifest import Manifest
from vqdeploy.artifacts.onnx_scan import MalformedOnnx, external_tensors
from vqdeploy.artifacts.paths import artifact_file
from vqdeploy.errors import ArtifactError
from vqdeploy.files import sha256_file


def where(name: str, field: str = "file") -> str:
    return f"manifest.json graphs.{name}.{field}"


def graph_files(artifacts: Path, manifest: Manifest, name: str) -> list[tuple[Path, str, str]]:
    """(path, sha256, manifest entry) of the graph and of its external data, each checked by
    ``artifact_file`` (relative, inside, no symlink, a regular file)."""
    g = manifest.graphs[name]
    out = [(artifact_file(artifacts, g["file"], where(name)), g["sha256"], where(name))]
    ext = g.get("external_data")
    if ext is not None:
        rel = posixpath.join(posixpath.dirname(g["file"]), ext["file"])  # beside the graph, as loaders resolve it
        out.append((artifact_file(artifacts, rel, where(name, "external_data.file"), single_link=True), ext["sha256"],
                    where(name, "external_data.file")))
    return out


def verify_graph_files(directory: Path, manifest: Manifest) -> None:
    """Every graph file (and its external data) is a regular file inside ``directory`` and has the
    hash the manifest recorded (catches mixed or tampered artifacts)."""
    for name in manifest.graphs:
        for path, digest, _ in graph_files(Path(directory), manifest, name):
            if sha256_file(path) != digest:
                raise ArtifactError(f"{path}: does not match the manifest (sha256 differs); re-export")


def graph_file(artifacts: Path, manifest: Manifest, name: str) -> Path:
    """The checked ``.onnx`` of graph ``name``, safe to hand to a loader that follows its external data."""
    path = graph_files(artifacts, manifest, name)[0][0]
    ext = manifest.graphs[name].get("external_data")
    check_external_data(path, None if ext is None else ext["file"], name)
    return path


def check_external_data(path: Path, expected: str | None, name: str) -> None:
    """Every tensor of ``path`` stored outside the protobuf names ``expected`` (None: none may)."""
    try:
        found = external_tensors(path)
    except (MalformedOnnx, OSError):  # not decodable: no loader gets as far as its external data; it reports this itself
        return
    for tensor, location in found:
        if expected is None:
            raise ArtifactError(f"{path}: tensor '{tensor[:64]}' keeps its data in file {location!r}, but "
                                f"{where(name, 'external_data')} lists none; refused (re-export)")
        if location != expected:
            raise ArtifactError(f"{path}: tensor '{tensor[:64]}' keeps its data in file {location!r}, not in "
                                f"{where(name, 'external_data.file')} {expected!r}; refused (re-export)")
