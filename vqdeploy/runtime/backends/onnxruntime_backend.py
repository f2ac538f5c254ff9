"""ONNX Runtime backend (CPU by default, CUDA with onnxruntime-gpu): IO binding by address into
the preallocated buffers of ``GraphBackend``; sessions are created once, on first use."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vqdeploy.errors import ArtifactError, BackendError
from vqdeploy.runtime.backends.graph_backend import GraphBackend

_NP = {torch.float32: np.float32, torch.float16: np.float16, torch.int64: np.int64}


class OrtExecutor:
    def __init__(self, session: Any, device: torch.device) -> None:
        self.session = session
        self.device = device
        self.kind = "cuda" if device.type == "cuda" else "cpu"
        self.index = (device.index or 0) if device.type == "cuda" else 0

    def run(self, inputs: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor]) -> None:
        io = self.session.io_binding()
        for name, t in inputs.items():
            io.bind_input(name, self.kind, self.index, _NP[t.dtype], list(t.shape), t.data_ptr())
        for name, t in outputs.items():
            io.bind_output(name, self.kind, self.index, _NP[t.dtype], list(t.shape), t.data_ptr())
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
            try:
                session = self.ort.InferenceSession(str(path), opts, providers=self.providers)
            except Exception as e:  # onnxruntime raises its own exception types
                raise ArtifactError(f"{path}: onnxruntime cannot load it ({str(e).splitlines()[0][:200]})") from None
            ex = self._executors[graph] = OrtExecutor(session, self.torch_device)
        return ex
