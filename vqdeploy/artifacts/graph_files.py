"""The files of an exported graph, resolved the one way artifact files are (``artifact_file``),
and the external-data references inside the ``.onnx`` checked before any loader follows them.

An ONNX file names its own external data file (``location`` in each TensorProto) and ONNX Runtime
and the TensorRT parser read whatever it names, relative to the graph: ``../../etc/passwd`` or an
absolute path included. So before a graph is loaded, every tensor stored outside the protobuf must
point at the manifest's ``external_data.file``, a plain name beside the graph, itself a regular
file inside the artifacts directory with one link (a hard link is a second name of a file that may
lie outside it). Reading the protobuf without its external data is cheap
(the weights of a graph with external data are not in it; demo graphs: < 0.1 s).
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vqdeploy.artifacts.manifest import Manifest
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
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001  not decodable: no loader gets as far as its external data; it reports this itself
        return
    for t in _tensors(model):
        if t.data_location != onnx.TensorProto.EXTERNAL and not len(t.external_data):
            continue
        location = next((e.value for e in t.external_data if e.key == "location"), None)
        if expected is None:
            raise ArtifactError(f"{path}: tensor '{t.name[:64]}' keeps its data in file {location!r}, but "
                                f"{where(name, 'external_data')} lists none; refused (re-export)")
        if location != expected:
            raise ArtifactError(f"{path}: tensor '{t.name[:64]}' keeps its data in file {location!r}, not in "
                                f"{where(name, 'external_data.file')} {expected!r}; refused (re-export)")


def _tensors(model: Any) -> Iterator[Any]:
    """Every TensorProto of a model: initializers (dense and sparse) and tensor attributes, in the
    graph, its subgraphs and its functions (iteratively: nesting depth is the file's choice)."""
    pending: list[Any] = [model.graph, *model.functions]
    while pending:
        g = pending.pop()
        for init in getattr(g, "initializer", ()):
            yield init
        for sparse in getattr(g, "sparse_initializer", ()):
            yield sparse.values
            yield sparse.indices
        for node in g.node:
            for a in node.attribute:
                if a.HasField("t"):
                    yield a.t
                yield from a.tensors
                if a.HasField("sparse_tensor"):
                    yield a.sparse_tensor.values
                    yield a.sparse_tensor.indices
                for s in a.sparse_tensors:
                    yield s.values
                    yield s.indices
                if a.HasField("g"):
                    pending.append(a.g)
                pending.extend(a.graphs)
