"""The artifacts format: what ``vqdeploy export`` writes and every runtime (ours, or a C++ app) reads.

Modules, one job each:
  paths            resolving a file or name that the directory's JSON supplies (inside, no symlink, regular)
  manifest_schema  what manifest.json must hold (types, bounds, consistency) before anything indexes it
  manifest         manifest.json as typed objects (Manifest, ModelInfo, ...), its format constants, reading
  tensors          tensor names, dtypes and symbolic shapes of the graphs
  graph_files      a graph's files and their external-data references, checked before a loader follows them
  engines          engines/engines.json (TensorRT): format, schema, reading and writing
  outputs          where reports inside an artifacts tree may be written
  directory        ``Artifacts``: a directory opened once (manifest, verified graphs, engines record)
"""

from vqdeploy.artifacts.directory import Artifacts, open_artifacts
from vqdeploy.artifacts.graph_files import verify_graph_files
from vqdeploy.artifacts.manifest import FORMAT, FORMAT_VERSION, MANIFEST, Manifest, ModelInfo, read_manifest

__all__ = ["FORMAT", "FORMAT_VERSION", "MANIFEST", "Artifacts", "Manifest", "ModelInfo", "open_artifacts",
           "read_manifest", "verify_graph_files"]
