"""``engines/engines.json``: what every engine was built from and for, and its cache key.

An engine is rebuilt only when its cache key changes. The key hashes everything that decides
the engine's content: the graph bytes (sha256 from the manifest, plus external data), the
resolved optimization profiles, precision, workspace limit, the TensorRT flavour and version,
the target (compute capabilities; the GPU name for datacenter TensorRT) and ``RECIPE``, the
version of the way vqdeploy configures the builder. The timing cache and the log level are not
part of it: they change build time, not what the engine computes.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from vqdeploy.files import atomic_write

ENGINES_DIR = "engines"
ENGINES_JSON = "engines.json"
FORMAT = "vqdeploy-engines"
FORMAT_VERSION = 1
RECIPE = 1  # bump when the builder configuration changes in a way that changes engines


def cache_key(inputs: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of ``inputs`` (graph hash, options, TensorRT, target)."""
    blob = json.dumps({"recipe": RECIPE, **inputs}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def empty(model_fingerprint: str | None) -> dict[str, Any]:
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "model_fingerprint": model_fingerprint, "engines": {}}


def read(directory: Path) -> dict[str, Any] | None:
    """engines.json of ``directory`` (the engines dir), or None when absent or unreadable."""
    path = directory / ENGINES_JSON
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("format_version") != FORMAT_VERSION:
        return None
    return data


def write(directory: Path, data: dict[str, Any]) -> None:
    text = json.dumps(data, indent=2)
    # shapes on one line: [1, 4, 0, 16] rather than one number per line
    text = re.sub(r"\[\s*(-?\d+(?:,\s*-?\d+)*)\s*\]",
                  lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text)
    atomic_write(directory / ENGINES_JSON, (text + "\n").encode())
