"""``engines/engines.json``: what every engine was built from and for (``build-trt``'s cache key among it).

engines.json is read as untrusted input like the manifest (``ENGINES``): every field that the
build's cache, the load-time checks and the TensorRT backend read is checked, and an engine's file
is always ``<graph name>.engine`` beside engines.json.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from vqdeploy.artifacts.manifest_schema import TENSOR_NAME
from vqdeploy.artifacts.paths import artifact_file
from vqdeploy.bounds import MAX_DIM, MAX_RANK, MAX_TENSORS, PRECISIONS
from vqdeploy.files import atomic_write
from vqdeploy.schema import (
    Rule,
    all_of,
    at,
    fail,
    integer,
    list_of,
    mapping,
    nullable,
    number,
    obj,
    one_of,
    read_json,
    sha256,
    string,
)

ENGINES_DIR = "engines"
ENGINES_JSON = "engines.json"
FORMAT = "vqdeploy-engines"
FORMAT_VERSION = 1


def empty(model_fingerprint: str | None) -> dict[str, Any]:
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "model_fingerprint": model_fingerprint, "engines": {}}


def _shapes(v: Any, where: str) -> None:
    if not len(v["min"]) == len(v["opt"]) == len(v["max"]) or not all(
            a <= b <= c for a, b, c in zip(v["min"], v["opt"], v["max"])):
        fail(where, "min <= opt <= max of one rank", v)


def _profiles(v: Any, where: str) -> None:
    if v["profile_order"] != list(v["profiles"]):
        fail(at(where, "profile_order"), "the names of profiles, in order", v["profile_order"])


def _files(v: Any, where: str) -> None:
    for name, entry in v["engines"].items():
        if entry["file"] != f"{name}.engine":
            fail(at(where, f"engines.{name}.file"), f"'{name}.engine'", entry["file"])


_DIMS = list_of(integer(0, MAX_DIM), 0, MAX_RANK)
_TENSOR = obj({"name": string(128, TENSOR_NAME, "a tensor name"), "dtype": string(32),
               "shape": list_of(integer(-1, MAX_DIM), 0, MAX_RANK)})
ENTRY: Rule = all_of(obj({
    "file": string(80),
    "sha256": sha256,
    "cache_key": sha256,
    "graph": obj({"sha256": sha256}, {"external_data_sha256": nullable(sha256)}),
    "tensorrt": obj({"flavour": string(32), "version": string(64)}),
    "target": obj({"compute_capabilities": list_of(string(8, r"[0-9]{1,3}\.[0-9]", "a compute capability"), 1, 16)},
                  {"gpu": nullable(string(256))}),
    "precision": one_of(*PRECISIONS),
    "profiles": mapping(mapping(all_of(obj({"min": _DIMS, "opt": _DIMS, "max": _DIMS}), _shapes),
                                key=string(128, TENSOR_NAME, "a tensor name"), lo=1, hi=MAX_TENSORS), lo=1, hi=16),
    "profile_order": list_of(string(64), 1, 16),
    "inputs": list_of(_TENSOR, 1, MAX_TENSORS),
    "outputs": list_of(_TENSOR, 1, MAX_TENSORS),
}, {"bytes": integer(0, 1 << 48), "build_seconds": number(0, 1e9), "workspace": nullable(integer(1, 1 << 50))}),
    _profiles)
ENGINES: Rule = all_of(obj({"model_fingerprint": nullable(sha256), "engines": mapping(ENTRY, hi=32)}), _files)


def read(directory: Path) -> dict[str, Any] | None:
    """engines.json of ``directory`` (the engines dir), validated; None when there is none or it is
    another format (a build starts over); ArtifactError naming the entry when it is malformed."""
    label = str(directory / ENGINES_JSON)
    path = artifact_file(directory, ENGINES_JSON, label, must_exist=False)
    if not path.exists():
        return None
    data = read_json(path, label)
    if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("format_version") != FORMAT_VERSION:
        return None
    ENGINES(data, f"{label}:")
    return data


def write(directory: Path, data: dict[str, Any]) -> None:
    text = json.dumps(data, indent=2)
    # shapes on one line: [1, 4, 0, 16] rather than one number per line
    text = re.sub(r"\[\s*(-?\d+(?:,\s*-?\d+)*)\s*\]",
                  lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text)
    atomic_write(directory / ENGINES_JSON, (text + "\n").encode())
