"""Which TensorRT is installed: datacenter ``tensorrt`` or TensorRT-RTX (``tensorrt_rtx_bindings``).

Both expose the same Python API for everything vqdeploy calls, so the rest of ``vqdeploy.trt``
is written once against ``trt`` below: for the type checker it is the RTX bindings module (the
stubs we generate, see tests/test_trt_types.py), at run time a proxy that imports the chosen
flavour on first attribute access. Nothing here imports TensorRT at import time.

``tensorrt`` wins when both are importable (it is what datacenter users install on purpose);
``VQDEPLOY_TENSORRT=tensorrt-rtx`` (or ``=tensorrt``) picks one explicitly.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from functools import cache
from types import ModuleType
from typing import TYPE_CHECKING, Any

from vqdeploy.errors import BackendError

__all__ = ["ENV", "FLAVOURS", "TensorRT", "load", "trt"]

ENV = "VQDEPLOY_TENSORRT"
# flavour -> (python module, display name, pip extra)
FLAVOURS = {
    "tensorrt": ("tensorrt", "TensorRT", "tensorrt"),
    "tensorrt-rtx": ("tensorrt_rtx_bindings", "TensorRT-RTX", "tensorrt-rtx"),
}


@dataclass(frozen=True)
class TensorRT:
    module: ModuleType
    flavour: str  # "tensorrt" | "tensorrt-rtx"
    version: str

    @property
    def rtx(self) -> bool:
        return self.flavour == "tensorrt-rtx"

    @property
    def name(self) -> str:
        return FLAVOURS[self.flavour][1]

    def __str__(self) -> str:
        return f"{self.name} {self.version}"


def _import(flavour: str) -> ModuleType:
    """The module of ``flavour``; raises ImportError when it is missing or not a real build
    (e.g. the ``tensorrt`` placeholder that pip leaves when the real wheel could not be fetched)."""
    mod = importlib.import_module(FLAVOURS[flavour][0])
    if not (hasattr(mod, "Builder") and hasattr(mod, "OnnxParser") and isinstance(getattr(mod, "__version__", None), str)):
        raise ImportError(f"{FLAVOURS[flavour][0]} is installed but is not a usable TensorRT build")
    return mod


@cache
def load() -> TensorRT:
    """The installed TensorRT; a BackendError with the install command when there is none."""
    wanted = os.environ.get(ENV, "").strip().lower()
    if wanted and wanted not in FLAVOURS:
        raise BackendError(f"{ENV}={wanted!r}: expected one of {', '.join(FLAVOURS)}")
    broken = []  # installed but unusable: worth saying why
    for flavour in [wanted] if wanted else list(FLAVOURS):
        try:
            mod = _import(flavour)
        except ModuleNotFoundError as e:
            if e.name != FLAVOURS[flavour][0]:  # the module is there, a dependency of it is not
                broken.append(f"{FLAVOURS[flavour][0]}: {e}")
            continue
        except (ImportError, OSError) as e:  # OSError: shared libraries that do not load (CUDA / driver)
            broken.append(f"{FLAVOURS[flavour][0]}: {e}")
            continue
        return TensorRT(mod, flavour, str(mod.__version__))
    hint = " or ".join(f"pip install 'vqdeploy[{FLAVOURS[f][2]}]'" for f in ([wanted] if wanted else FLAVOURS))
    raise BackendError(f"TensorRT is not installed ({hint})" + (f"; {'; '.join(broken)}" if broken else ""))


class _Module:
    """Attribute access resolves against the loaded TensorRT module (imported on first use)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(load().module, name)


if TYPE_CHECKING:
    import tensorrt_rtx_bindings as trt  # the API both flavours share
else:
    trt = _Module()
