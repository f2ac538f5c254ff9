"""What an engine is built for. A TensorRT engine runs only on the compute capability it was
built for: datacenter TensorRT builds for the GPU it runs on; TensorRT-RTX builds ahead of time
for the compute capabilities it is given (also on a machine without a GPU), one or several per
engine."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vqdeploy import machine
from vqdeploy.errors import BackendError, ConfigError
from vqdeploy.trt.shim import TensorRT


@dataclass(frozen=True)
class Target:
    compute_capabilities: tuple[str, ...]  # "8.6", "12.0"
    gpu: str | None = None  # the GPU the engine was built on (datacenter TensorRT); None: ahead of time

    def to_json(self) -> dict[str, Any]:
        return {"compute_capabilities": list(self.compute_capabilities), "gpu": self.gpu}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Target:
        return cls(tuple(d["compute_capabilities"]), d.get("gpu"))

    def __str__(self) -> str:
        ccs = ", ".join(sm_name(c) for c in self.compute_capabilities)
        return f"{self.gpu} ({ccs})" if self.gpu else ccs


def parse_cc(text: str) -> str:
    """'8.6', '86', 'sm86', 'SM_86', 'sm_120' -> '8.6' / '12.0'."""
    t = text.strip().lower().removeprefix("sm").lstrip("_")
    m = re.fullmatch(r"(\d+)\.(\d)", t) or re.fullmatch(r"(\d+)(\d)", t)
    if not m:
        raise ConfigError(f"--target-cc {text!r}: expected a compute capability such as 8.6 or sm86")
    return f"{int(m.group(1))}.{m.group(2)}"


def sm_name(cc: str) -> str:
    return "SM" + cc.replace(".", "")


def current_gpu() -> tuple[str, str] | None:
    """(name, compute capability) of CUDA device 0; None without one (asked of the driver)."""
    return machine.gpu_info(0)


def rtx_supported(api: TensorRT) -> list[str]:
    """Compute capabilities this TensorRT-RTX can build for (its ComputeCapability enum)."""
    names = api.module.ComputeCapability.__members__
    return [f"{n[2:-1]}.{n[-1]}" for n in names if re.fullmatch(r"SM\d+", n)]


def resolve(api: TensorRT, requested: Sequence[str]) -> Target:
    """The target for ``--target-cc`` (empty: the GPU present) under the installed TensorRT."""
    wanted = tuple(dict.fromkeys(parse_cc(c) for c in requested))
    gpu = current_gpu()
    if api.rtx:
        supported = rtx_supported(api)
        if not wanted:
            if gpu is None:
                raise ConfigError(f"no GPU here: pass --target-cc (TensorRT-RTX {api.version} builds for "
                                  f"{', '.join(supported)})")
            wanted = (gpu[1],)
        bad = [c for c in wanted if c not in supported]
        if bad:
            raise ConfigError(f"compute capability {bad[0]} is not supported by {api} "
                              f"(supported: {', '.join(supported)})")
        return Target(wanted)
    if gpu is None:
        raise BackendError(f"{api} builds engines for the GPU it runs on, and no CUDA GPU is visible here "
                           "(build on the target machine, or install TensorRT-RTX: pip install 'vqdeploy[tensorrt-rtx]' "
                           "and pass --target-cc)")
    if wanted and wanted != (gpu[1],):
        raise ConfigError(f"--target-cc {', '.join(wanted)}: {api} builds only for the GPU present, "
                          f"{gpu[0]} (compute capability {gpu[1]}); TensorRT-RTX builds for other GPUs")
    return Target((gpu[1],), gpu[0])
