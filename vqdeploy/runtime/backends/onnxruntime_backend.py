"""ONNX Runtime backend (CPU by default, CUDA with onnxruntime-gpu): IO binding by address into
the preallocated buffers of ``GraphBackend``; sessions are created once, on first use. bf16 graphs
run on CPU through ``bf16_emulation`` (ONNX Runtime CPU has no bf16 kernels)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from vqdeploy.errors import ArtifactError, BackendError
from vqdeploy.runtime.backends.graph_backend import GraphBackend

BF16_EMULATION = "bf16 graphs emulated on CPU: fp32 arithmetic, bf16 rounding at every node output"
# ONNX TensorProto element types: IO binding takes these where numpy has no dtype (bfloat16)
_ELEMENT_TYPE = {torch.float32: 1, torch.float16: 10, torch.bfloat16: 16, torch.int64: 7}


class OrtExecutor:
    def __init__(self, session: Any, device: torch.device) -> None:
        self.session = session
        self.device = device
        self.kind = "cuda" if device.type == "cuda" else "cpu"
        self.index = (device.index or 0) if device.type == "cuda" else 0

    def run(self, inputs: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor]) -> None:
        io = self.session.io_binding()
        for name, t in inputs.items():
            io.bind_input(name, self.kind, self.index, _ELEMENT_TYPE[t.dtype], list(t.shape), t.data_ptr())
        for name, t in outputs.items():
            io.bind_output(name, self.kind, self.index, _ELEMENT_TYPE[t.dtype], list(t.shape), t.data_ptr())
        if self.kind == "cuda":
            torch.cuda.current_stream(self.device).synchronize()  # inputs written by torch copies
        self.session.run_with_iobinding(io)


class OnnxRuntimeBackend(GraphBackend):
    name = "onnxruntime"

    def __init__(self, artifacts: Path, manifest: dict[str, Any], device: str = "cpu") -> None:
        super().__init__(artifacts, manifest, device)
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendError("onnxruntime is not installed (pip install onnxruntime)") from None
        self.ort = ort
        if self.torch_device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendError("onnxruntime has no CUDA provider here (pip install 'vqdeploy[gpu]' for onnxruntime-gpu)")
            self.providers: list[Any] = [("CUDAExecutionProvider", {"device_id": self.torch_device.index or 0}),
                                         "CPUExecutionProvider"]
        else:
            self.providers = ["CPUExecutionProvider"]
        self._executors: dict[str, OrtExecutor] = {}
        # what this backend does differently from the graphs' own arithmetic (None: nothing)
        self.emulation = BF16_EMULATION if manifest.get("precision") == "bf16" and self.torch_device.type == "cpu" else None

    def _executor(self, graph: str, profile: str | None = None) -> OrtExecutor:
        ex = self._executors.get(graph)
        if ex is None:
            path = self.artifacts / self.graph(graph)["file"]
            if not path.is_file():
                raise ArtifactError(f"{path} is missing; re-export")
            opts = self.ort.SessionOptions()
            opts.graph_optimization_level = self.ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            opts.log_severity_level = 3
            if self.torch_device.type == "cpu":
                opts.intra_op_num_threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0
            source: str | bytes = str(path)
            if self.emulation:
                from vqdeploy.runtime.backends.bf16_emulation import load_emulated

                source = load_emulated(path)
            try:
                session = self.ort.InferenceSession(source, opts, providers=self.providers)
            except Exception as e:  # noqa: BLE001 (onnxruntime raises its own, unexported exception types)
                raise ArtifactError(f"{path}: onnxruntime cannot load it ({str(e).splitlines()[0][:200]})") from None
            ex = self._executors[graph] = OrtExecutor(session, self.torch_device)
        return ex
