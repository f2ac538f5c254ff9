"""The backends by name: what each one is, where it runs, what installs it, and how to open it.

A backend is one module (its ``Backend`` implementation, importing its runtime when opened) plus one
``BackendSpec`` registered here. Everything that used to test backend names (the device choice, the
``--backends auto`` list and what it skipped, ``auto``, the CLI choices, report labels) asks the spec.
Machine probes come from ``vqdeploy.machine`` (one module to fake in tests).

Device rules: ``auto`` (no ``--device``) means ONNX Runtime on CUDA only when ``CUDAExecutionProvider``
is really there (onnxruntime-gpu) and a GPU is present, else CPU; TensorRT on CUDA (a GPU is
required); torch on CUDA when torch sees a GPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vqdeploy import machine
from vqdeploy.artifacts import Artifacts
from vqdeploy.errors import BackendError
from vqdeploy.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
from vqdeploy.runtime.backends.tensorrt_backend import TensorRTBackend

if TYPE_CHECKING:
    from vqdeploy.runtime.backends.base import Backend

DEVICES = ("cpu", "cuda")
GPU_EXTRA = "pip install 'vqdeploy[gpu]' for the GPU"


@dataclass(frozen=True)
class OpenOptions:
    """What opening a backend may need besides the artifacts and the device."""

    cuda_graphs: bool = False
    ckpt: str | None = None  # torch: the checkpoint instead of the exported one
    config: str | None = None
    model: Any = None  # torch: an already loaded reference model


@dataclass(frozen=True)
class BackendSpec:
    name: str
    extra: str | None  # the pip extra that installs it (None: part of the base install)
    help: str
    resolve: Callable[[str | None], tuple[str, str]]  # --device (None: not given) -> (device, note); BackendError
    compare_on: Callable[[Artifacts | Path, str | None], list[str]]  # devices ``--backends auto`` compares here
    not_compared: Callable[[Artifacts | Path, str | None], list[str]]  # why ``auto`` leaves a device out
    open: Callable[[Artifacts, str, OpenOptions], Backend]
    installed: Callable[[], bool] = lambda: True
    reference: bool = False  # runs the PyTorch checkpoint (the reference of parity and bench)

    def label(self, device: str) -> str:
        return f"{self.name}-{device}"


BACKENDS: dict[str, BackendSpec] = {}


def register(spec: BackendSpec) -> BackendSpec:
    if spec.name in BACKENDS or spec.name == "auto":
        raise ValueError(f"backend '{spec.name}' registered twice")
    BACKENDS[spec.name] = spec
    return spec


def names() -> tuple[str, ...]:
    return tuple(BACKENDS)


def choices() -> tuple[str, ...]:
    """The ``--backend`` choices: ``auto`` and every registered backend."""
    return ("auto", *BACKENDS)


def spec(name: str) -> BackendSpec:
    try:
        return BACKENDS[name]
    except KeyError:
        raise BackendError(f"unknown backend '{name}' (auto, {', '.join(BACKENDS)})") from None


def resolve_device(backend: str, requested: str | None) -> tuple[str, str]:
    """(device, why): the device ``backend`` runs on, given ``--device`` (None: not passed), and a note
    on the choice ("" when nothing needs saying). Raises ``BackendError`` when it cannot run."""
    s = spec(backend)
    if requested is not None and requested not in DEVICES:
        raise BackendError(f"--device {requested}: expected {' or '.join(DEVICES)}")
    return s.resolve(requested)


def announce(backend: str, device: str, why: str, log: Callable[[str], None] | None) -> None:
    """The choice, once, on the caller's log (stderr for the CLI)."""
    if log is not None:
        log(f"backend {backend} on {device}" + (f" ({why})" if why else ""))


def _engines_there(artifacts: Artifacts | Path) -> bool:
    if isinstance(artifacts, Artifacts):
        return artifacts.has_engines()
    return (Path(artifacts) / "engines" / "engines.json").is_file()


def auto_backend(artifacts: Artifacts | Path, device: str | None) -> str:
    """TensorRT when engines and a GPU are there, else ONNX Runtime."""
    if (device in (None, "cuda") and _engines_there(artifacts) and machine.gpu_present()
            and machine.tensorrt_installed()):
        return "tensorrt"
    return "onnxruntime"


def open_backend(name: str, artifacts: Artifacts, device: str | None = None, options: OpenOptions = OpenOptions(),
                 log: Callable[[str], None] | None = None) -> Backend:
    """``name`` (or ``auto``) on ``device`` (None: resolved by the backend's rule, and the choice reported on
    ``log`` where there was one to make: a GPU, or a reason not to use it)."""
    if name == "auto":
        name = auto_backend(artifacts, device)
    s = spec(name)
    resolved, why = resolve_device(name, device)
    if device is None and (why or resolved != "cpu"):  # a GPU machine: say which way the choice went
        announce(name, resolved, why, log)
    if options.cuda_graphs and not resolved.startswith("cuda"):
        raise BackendError(f"--cuda-graphs needs a CUDA device; {name} runs on the CPU here")
    if s.reference and log is not None:
        note = reference_weights_note(artifacts)
        if note:
            log(note)
    return s.open(artifacts, resolved, options)


def reference_weights_note(artifacts: Artifacts) -> str | None:
    """What the torch backend runs on artifacts whose graphs are not fp32 (``--quantize``, ``--precision``):
    the checkpoint's fp32 weights, so its images are not those of the exported graphs."""
    m = artifacts.manifest
    exported = m.quantization.scheme if m.quantization is not None else m.precision
    if exported == "fp32":
        return None
    return (f"note: the torch backend runs the checkpoint's fp32 weights, not these artifacts' {exported} graphs: "
            f"its images are the fp32 model's (--backend onnxruntime or tensorrt runs the {exported} graphs)")


def parse_backends(text: str, artifacts: Artifacts | Path, device: str | None) -> list[tuple[str, str]]:
    """``--backends``: 'auto' (every (backend, device) this machine can compare against the torch-CPU
    reference) or a comma list, each resolved to its device here (so an impossible one fails before any
    backend runs)."""
    if text == "auto":
        return [(s.name, d) for s in BACKENDS.values() for d in s.compare_on(artifacts, device)]
    out = []
    for name in text.split(","):
        name = name.strip()
        if name not in BACKENDS:
            raise BackendError(f"unknown backend '{name}' ({', '.join(BACKENDS)})")
        s = BACKENDS[name]
        resolved = resolve_device(name, device)[0]
        if not s.installed():
            raise BackendError(f"the {name} backend is not available (pip install 'vqdeploy[{s.extra}]')")
        out.append((name, resolved))
    return out


def skipped_backends(artifacts: Artifacts | Path, device: str | None) -> list[str]:
    """What ``--backends auto`` leaves out on this machine, and why (for the parity report)."""
    if device == "cpu":
        return ["GPU backends: --device cpu"]
    return [why for s in BACKENDS.values() for why in s.not_compared(artifacts, device)]


# --- the backends -----------------------------------------------------------------------------------
def _gpu_wanted(device: str | None) -> bool:
    return device in (None, "cuda") and machine.gpu_present()


def _torch_device(requested: str | None) -> tuple[str, str]:
    if requested == "cuda" and not machine.torch_cuda():
        raise BackendError("--device cuda: torch sees no CUDA device here")
    if requested:
        return requested, ""
    return ("cuda", "") if machine.torch_cuda() else ("cpu", "")


def _open_torch(artifacts: Artifacts, device: str, options: OpenOptions) -> Backend:
    try:
        from vqdeploy.runtime.backends.torch_backend import open_torch  # imports torch
    except ImportError:
        raise BackendError("the torch backend needs PyTorch: pip install torch") from None
    return open_torch(artifacts, device, options)


register(BackendSpec(
    name="torch", extra="export", reference=True,
    help="the PyTorch checkpoint the artifacts were exported from (KV-cached, eager)",
    resolve=_torch_device,
    compare_on=lambda a, d: ["cuda"] if _gpu_wanted(d) and machine.torch_cuda() else [],
    not_compared=lambda a, d: ([] if _gpu_wanted(d) and machine.torch_cuda() else
                               ["torch-cuda: this torch has no CUDA"] if _gpu_wanted(d) else
                               ["torch-cuda: no CUDA GPU here"]),
    open=_open_torch, installed=machine.torch_installed))


def _ort_device(requested: str | None) -> tuple[str, str]:
    has_provider = "CUDAExecutionProvider" in machine.ort_providers()
    if requested == "cuda":
        if not machine.gpu_present():
            raise BackendError("--device cuda: no CUDA device is available here")
        if not has_provider:
            raise BackendError(f"--device cuda: onnxruntime has no CUDA provider here ({GPU_EXTRA})")
        return "cuda", ""
    if requested == "cpu":
        return "cpu", ""
    if machine.gpu_present() and has_provider:
        return "cuda", ""
    if machine.gpu_present():
        return "cpu", f"no CUDAExecutionProvider: {GPU_EXTRA}"
    return "cpu", ""


def _ort_compare_on(artifacts: Artifacts | Path, device: str | None) -> list[str]:
    out = ["cpu"] if device in (None, "cpu") else []
    if _gpu_wanted(device) and "CUDAExecutionProvider" in machine.ort_providers():
        out.append("cuda")
    return out


def _ort_not_compared(artifacts: Artifacts | Path, device: str | None) -> list[str]:
    if not _gpu_wanted(device):
        return ["onnxruntime-cuda: no CUDA GPU here"]
    if "CUDAExecutionProvider" not in machine.ort_providers():
        return ["onnxruntime-cuda: no CUDAExecutionProvider (pip install 'vqdeploy[gpu]')"]
    return []


def _open_onnxruntime(artifacts: Artifacts, device: str, options: OpenOptions) -> Backend:
    artifacts.verify()
    return OnnxRuntimeBackend(artifacts, device, options.cuda_graphs)


register(BackendSpec(
    name="onnxruntime", extra=None,
    help="the exported graphs on ONNX Runtime (CPU; CUDA with onnxruntime-gpu)",
    resolve=_ort_device, compare_on=_ort_compare_on, not_compared=_ort_not_compared,
    open=_open_onnxruntime, installed=lambda: True))


def _trt_device(requested: str | None) -> tuple[str, str]:
    if requested == "cpu":
        raise BackendError("--device cpu: the tensorrt backend runs on a CUDA GPU only")
    if not machine.gpu_present():
        flag = f"--device {requested}: " if requested else ""
        raise BackendError(f"{flag}the tensorrt backend needs a CUDA GPU; none is available here")
    return "cuda", ""


def _trt_not_compared(artifacts: Artifacts | Path, device: str | None) -> list[str]:
    if not machine.tensorrt_installed():
        return []
    if not _gpu_wanted(device):
        return ["tensorrt: installed, but no CUDA GPU here"]
    if not _engines_there(artifacts):
        path = artifacts.path if hasattr(artifacts, "path") else artifacts
        return [f"tensorrt: no engines (vqdeploy build-trt --artifacts {path})"]
    return []


def _open_tensorrt(artifacts: Artifacts, device: str, options: OpenOptions) -> Backend:
    return TensorRTBackend(artifacts, device, cuda_graphs=options.cuda_graphs)


register(BackendSpec(
    name="tensorrt", extra="tensorrt",
    help="TensorRT engines built by `vqdeploy build-trt` (datacenter TensorRT or TensorRT-RTX; a GPU)",
    resolve=_trt_device,
    compare_on=lambda a, d: (["cuda"] if machine.tensorrt_installed() and _gpu_wanted(d) and _engines_there(a)
                             else []),
    not_compared=_trt_not_compared, open=_open_tensorrt, installed=machine.tensorrt_installed))
