"""Before loading an engine: does engines.json say it fits this machine and these graphs?

TensorRT itself fails late and cryptically on a mismatch ("engine plan file is generated on an
incompatible device", a version assertion); here every difference is named, with the command
that fixes it. Pure functions over engines.json, so they are testable without a GPU.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vqdeploy.artifacts import Artifacts
from vqdeploy.artifacts import engines as record
from vqdeploy.artifacts.paths import artifact_file
from vqdeploy.errors import ArtifactError
from vqdeploy.files import sha256_file
from vqdeploy.trt.shim import FLAVOURS
from vqdeploy.trt.target import sm_name


@dataclass(frozen=True)
class Machine:
    """What an engine is about to be loaded on."""

    flavour: str
    version: str
    gpu: str
    compute_capability: str  # "8.6"


def problems(entry: dict[str, Any], graph: Mapping[str, Any], machine: Machine) -> list[str]:
    """Every way ``entry`` (of engines.json) does not fit ``graph`` (of the manifest) on ``machine``."""
    out = []
    built = entry.get("tensorrt", {})
    if (built.get("flavour"), built.get("version")) != (machine.flavour, machine.version):
        name = FLAVOURS.get(str(built.get("flavour")), ("", str(built.get("flavour"))))[1]
        out.append(f"built with {name} {built.get('version')}, this machine runs "
                   f"{FLAVOURS[machine.flavour][1]} {machine.version}")
    ccs = list(entry.get("target", {}).get("compute_capabilities", []))
    if machine.compute_capability not in ccs:
        out.append(f"built for {', '.join(sm_name(c) for c in ccs) or 'an unknown GPU'}, this GPU ({machine.gpu}) "
                   f"is {sm_name(machine.compute_capability)}")
    if entry.get("graph", {}).get("sha256") != graph.get("sha256"):
        out.append(f"built from another {graph.get('file')} (the graphs were re-exported since)")
    return out


def engine_path(opened: Artifacts, name: str, machine: Machine) -> tuple[Path, dict[str, Any]]:
    """The checked engine file of graph ``name`` and its engines.json entry; ArtifactError saying
    what differs and how to rebuild otherwise. engines.json is validated (``record.ENGINES``) and
    the engine file resolved like every artifact file (inside ``engines/``, no symlink, regular)."""
    artifacts, manifest = opened.path, opened.manifest
    rebuild = f"rebuild: vqdeploy build-trt --artifacts {artifacts}"
    none = (f"{artifacts}: no TensorRT engines (no readable {record.ENGINES_DIR}/{record.ENGINES_JSON}); "
            f"build them: vqdeploy build-trt --artifacts {artifacts}")
    if not os.path.lexists(opened.engines_path):
        raise ArtifactError(none)
    directory = opened.engines_dir()
    data = opened.engines()
    if data is None:
        raise ArtifactError(none)
    entry = data["engines"].get(name)
    if entry is None:
        raise ArtifactError(f"{directory}: no engine for the {name} graph; {rebuild}")
    graph = manifest.graphs[name]
    found = problems(entry, graph, machine)
    if found:
        raise ArtifactError(f"{directory / entry['file']}: {'; '.join(found)}; {rebuild}")
    missing = [t["name"] for t in graph["inputs"] for p in entry["profiles"].values() if t["name"] not in p]
    if missing:
        raise ArtifactError(f"{directory / record.ENGINES_JSON}: engines.{name}.profiles has no shapes for input "
                            f"'{missing[0]}'; {rebuild}")
    path = artifact_file(directory, entry["file"], f"{record.ENGINES_JSON} engines.{name}.file", must_exist=False)
    if not path.is_file():
        raise ArtifactError(f"{path} is missing; {rebuild}")
    if sha256_file(path) != entry["sha256"]:
        raise ArtifactError(f"{path} does not match engines.json (modified or partly written); {rebuild}")
    return path, entry
