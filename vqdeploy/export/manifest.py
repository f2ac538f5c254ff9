"""Writing ``manifest.json`` (the format: ``vqdeploy.artifacts.manifest``)."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

from vqdeploy import __version__
from vqdeploy.artifacts.manifest import MANIFEST
from vqdeploy.files import atomic_write


def versions() -> dict[str, str]:
    import onnx
    import onnxscript
    import torch

    out = {"vqdeploy": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
           "onnxscript": onnxscript.__version__, "python": platform.python_version()}
    try:
        import onnxruntime

        out["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return out


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    atomic_write(directory / MANIFEST, json.dumps(manifest, indent=2) + "\n")
