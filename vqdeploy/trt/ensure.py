"""``run --build-engines`` (``VQDEPLOY_BUILD_ENGINES=1``, set in the GPU image): TensorRT engines
are built per GPU and TensorRT version, so an image cannot ship them. A container's first ``run``
builds them into ``<artifacts>/engines/`` (the mounted directory, which keeps them), later runs
find them current and build nothing, a new GPU or TensorRT rebuilds them. Without a GPU and
TensorRT, or when the run will not use TensorRT, this does nothing."""

from __future__ import annotations

from pathlib import Path

from vqdeploy import machine
from vqdeploy.artifacts import Artifacts
from vqdeploy.artifacts.manifest_schema import ONNXRUNTIME_ONLY
from vqdeploy.errors import ArtifactError
from vqdeploy.trt import check, engines, target
from vqdeploy.trt.logs import Echo
from vqdeploy.trt.shim import load

ENV = "VQDEPLOY_BUILD_ENGINES"


def wanted(backend: str, device: str | None) -> bool:
    """Whether the run could use TensorRT here: backend auto/tensorrt, not on the CPU, a GPU and
    TensorRT present (``auto`` then picks TensorRT once the engines exist)."""
    return backend in ("auto", "tensorrt") and device != "cpu" and machine.tensorrt_installed() and machine.gpu_present()


def engines_current(artifacts: Path) -> bool:
    """Every graph has an engine that the TensorRT backend would load on this GPU (the load-time
    checks of ``check.engine_path``). Current engines need no write, so a read-only mount works."""
    if not (Path(artifacts) / "engines" / "engines.json").is_file():
        return False
    gpu = target.current_gpu()
    if gpu is None:
        return False
    api = load()
    here = check.Machine(api.flavour, api.version, *gpu)
    opened = Artifacts.open(artifacts)
    try:
        for name in opened.manifest.graphs:
            if name not in ONNXRUNTIME_ONLY:
                check.engine_path(opened, name, here)
    except ArtifactError:
        return False
    return True


def ensure_engines(artifacts: Path, backend: str, device: str | None, echo: Echo) -> bool:
    """Build the engines (``build-trt``'s cache keeps unchanged ones) where the run could use TensorRT
    and they are missing or outdated; True when a build ran."""
    if not wanted(backend, device) or engines_current(artifacts):
        return False
    echo(f"TensorRT engines for this GPU are missing or outdated in {artifacts}/engines/: building them once "
         f"(later runs reuse them)")
    engines.build_engines(artifacts, echo=echo)
    return True
