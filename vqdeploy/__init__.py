"""vqdeploy: taming-transformers (VQGAN + transformer) from a Lightning checkpoint to
ONNX / TensorRT inference.

Importing the package is cheap: onnx, onnxruntime and TensorRT are imported only by the
subcommands that need them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Pipeline", "SamplingParams", "__version__", "load_model"]

if TYPE_CHECKING:
    from vqdeploy.loading.load import load_model
    from vqdeploy.runtime.pipeline import Pipeline
    from vqdeploy.runtime.sampling import SamplingParams


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def __getattr__(name: str) -> Any:
    if name == "load_model":
        from vqdeploy.loading.load import load_model

        return load_model
    if name == "Pipeline":
        from vqdeploy.runtime.pipeline import Pipeline

        return Pipeline
    if name == "SamplingParams":
        from vqdeploy.runtime.sampling import SamplingParams

        return SamplingParams
    raise AttributeError(f"module 'vqdeploy' has no attribute {name!r}")
