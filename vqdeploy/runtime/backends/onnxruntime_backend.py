"""ONNX Runtime backend (CPU by default, CUDA with onnxruntime-gpu): IO binding by address into
the preallocated buffers of ``GraphBackend``; sessions are created once, on first use. bf16 graphs
run on CPU through ``bf16_emulation`` (ONNX Runtime CPU has no bf16 kernels).

A graph file is resolved, hashed and its external data checked (``Artifacts.graph_file``) before ONNX
Runtime opens it, and the session's inputs and outputs must be the manifest's (the buffers bound by
address are sized from the manifest). ONNX Runtime's own log is off (fatal only, or errors with
VQDEPLOY_DEBUG=1): its errors arrive as exceptions, folded into one line here."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from vqdeploy.artifacts import Artifacts
from vqdeploy.artifacts.manifest_schema import VALID_LENGTH
from vqdeploy.errors import ArtifactError, BackendError, VQDeployError
from vqdeploy.runtime.backends.buffers import ELEMENT_TYPE, Buffer, HostMemory
from vqdeploy.runtime.backends.graph_backend import GraphBackend
from vqdeploy.runtime.backends.ort_memory import OrtDeviceMemory

BF16_EMULATION = "bf16 graphs emulated on CPU: fp32 arithmetic, bf16 rounding at every node output"
# CPU sessions: worker threads spin between the parallel sections of a run (fast), and stop the moment the run
# returns. By default they go on spinning after it, and on two cores they then take the CPU from whatever runs
# next: the host sampler, the next graph (the demo's decoder took 32 ms after a token loop instead of 11), the
# server's other threads (`serve` on the demo at 24 requests/s: p50 2.9 s with the default, 0.13 s with this)
FORCE_SPINNING_STOP = "session.force_spinning_stop"
# IO bindings an executor keeps (per session and profile): a token loop's step, a prefill, the rows of a continuous
# batch that join; more would only hold the addresses of buffers long gone
BINDINGS_KEPT = 8
# the manifest's dtype names as ONNX Runtime spells them
_ORT_TYPES = {"float32": "tensor(float)", "float16": "tensor(float16)", "bfloat16": "tensor(bfloat16)",
              "int64": "tensor(int64)"}


def log_severity() -> int:
    """ONNX Runtime's log level: 4 (fatal only) unless debugging (3: errors)."""
    return 3 if os.environ.get("VQDEPLOY_DEBUG") else 4


def one_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0][:300] if lines else type(e).__name__


def check_io(session: Any, name: str, graph: dict[str, Any], path: Path) -> None:
    """The session's tensors are the manifest's: names, dtypes, ranks and fixed extents."""
    for kind, got in (("inputs", session.get_inputs()), ("outputs", session.get_outputs())):
        have = {a.name: a for a in got}
        want = {t["name"]: t for t in graph[kind]}
        if set(have) != set(want):
            raise ArtifactError(f"{path}: the graph's {kind} {sorted(have)[:8]} differ from manifest.json "
                                f"graphs.{name}.{kind} {sorted(want)[:8]}; re-export")
        for t_name, t in want.items():
            a = have[t_name]
            shape = list(a.shape)
            fixed_ok = len(shape) == len(t["shape"]) and all(
                not isinstance(w, int) or not isinstance(g, int) or g == w for g, w in zip(shape, t["shape"]))
            if a.type != _ORT_TYPES[t["dtype"]] or not fixed_ok:
                raise ArtifactError(f"{path}: {kind[:-1]} '{t_name}' is {a.type} {shape} in the graph but {t['dtype']} "
                                    f"{t['shape']} in manifest.json graphs.{name}; re-export")


class OrtExecutor:
    """One session; ``run`` binds the buffers by address (IO binding) and runs it.

    ``capture`` (not None): the session captures CUDA graphs (``enable_cuda_graph``); a captured graph replays
    the addresses and shapes it was captured with, so each batch size gets its own ``gpu_graph_id``
    (the step's buffers are allocated once per batch) and ``capture=False`` calls (the prefill, whose
    length varies) run uncaptured (id -1)."""

    def __init__(self, session: Any, device: str = "cpu", index: int = 0, label: str = "graph",
                 ort: Any = None, capture: bool | None = None) -> None:
        self.session = session
        self.label = label
        self.device_type = device
        self.index = index
        self.ort = ort
        self.capture = capture  # None: the session does not capture
        self.profiles: dict[bool, OrtExecutor] = {}
        self.options: dict[int, Any] = {}  # gpu_graph_id -> RunOptions, made once (a step is a hot path)
        self.bindings: dict[Any, Any] = {}  # addresses and shapes -> IO binding, most recently used last

    def profile(self, capture: bool) -> OrtExecutor:
        """This session, run captured (the step) or uncaptured (the prefill)."""
        if self.capture is None:
            return self
        if capture not in self.profiles:
            self.profiles[capture] = OrtExecutor(self.session, self.device_type, self.index, self.label, self.ort, capture)
        return self.profiles[capture]

    def run_options(self, inputs: dict[str, Buffer]) -> Any:
        if self.capture is None:
            return None
        graph_id = next(iter(inputs.values())).shape[0] if self.capture else -1  # >= 1 per batch size; -1: uncaptured
        if graph_id not in self.options:
            opts = self.options[graph_id] = self.ort.RunOptions()
            opts.add_run_config_entry("gpu_graph_id", str(graph_id))
        return self.options[graph_id]

    def binding(self, inputs: dict[str, Buffer], outputs: dict[str, Buffer]) -> Any:
        """The IO binding of these buffers, made once per set of addresses and shapes: a step binds the same ones
        every time, and binding its 19-35 tensors anew took 0.15 ms of the demo's 0.48 ms token (profiled). A
        binding holds addresses only, so one that matches the key is exactly the one a fresh bind would make."""
        key = (tuple((n, t.ptr, t.shape, t.dtype) for n, t in inputs.items()),
               tuple((n, t.ptr, t.shape, t.dtype) for n, t in outputs.items()))
        io = self.bindings.pop(key, None)
        if io is None:
            io = self.session.io_binding()
            for name, t in inputs.items():
                io.bind_input(name, self.device_type, self.index, ELEMENT_TYPE[t.dtype], list(t.shape), t.ptr)
            for name, t in outputs.items():
                io.bind_output(name, self.device_type, self.index, ELEMENT_TYPE[t.dtype], list(t.shape), t.ptr)
            if len(self.bindings) >= BINDINGS_KEPT:
                self.bindings.pop(next(iter(self.bindings)))  # the least recently used
        self.bindings[key] = io
        return io

    def run(self, inputs: dict[str, Buffer], outputs: dict[str, Buffer]) -> None:
        io = self.binding(inputs, outputs)
        try:
            self.session.run_with_iobinding(io, self.run_options(inputs))
        except Exception as e:  # noqa: BLE001 (onnxruntime raises its own, unexported exception types)
            raise BackendError(f"{self.label}: onnxruntime failed to run it ({one_line(e)})") from None


def cuda_provider(index: int, cuda_graph: bool = False) -> tuple[str, dict[str, str]]:
    """The CUDA provider with IEEE fp32 arithmetic: ONNX Runtime turns TF32 on by default (``use_tf32``), whose
    10-bit mantissa put an H200's fp32 logits up to 1.1e-3 of their largest value off PyTorch's, 11x the fp32
    parity bound (docs/performance.md#on-a-gpu). fp16 and bf16 exports are the fast path on tensor cores."""
    options = {"device_id": str(index), "use_tf32": "0"}
    if cuda_graph:
        options["enable_cuda_graph"] = "1"
    return "CUDAExecutionProvider", options


class OnnxRuntimeBackend(GraphBackend):
    name = "onnxruntime"

    def __init__(self, artifacts: Artifacts, device: str = "cpu", cuda_graphs: bool = False,
                 valid_length: bool = True) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendError("onnxruntime is not installed (pip install onnxruntime)") from None
        kind, _, index = device.partition(":")
        self.index = int(index or 0)
        if kind == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendError("onnxruntime has no CUDA provider here (pip install 'vqdeploy[gpu]' for onnxruntime-gpu)")
            super().__init__(artifacts, device, OrtDeviceMemory(ort, "cuda", self.index))
            self.providers: list[Any] = [cuda_provider(self.index), "CPUExecutionProvider"]
        else:
            super().__init__(artifacts, device, HostMemory())
            self.providers = ["CPUExecutionProvider"]
        self.device_type = kind
        self.ort = ort
        if cuda_graphs and kind != "cuda":
            raise BackendError("CUDA graphs need a CUDA device (onnxruntime runs on the CPU here)")
        self.cuda_graphs = cuda_graphs
        ort.set_default_logger_severity(log_severity())
        self._executors: dict[str, OrtExecutor] = {}
        self.emulation = BF16_EMULATION if self.manifest.precision == "bf16" and kind == "cpu" else None
        self.valid_length = valid_length  # False: the portable transformer graph only (parity, bench compare both)

    def transformer_graph(self, batch: int, tokens: int, lengths: np.ndarray) -> str:
        """The valid-length twin (GroupQueryAttention: each row reads only its valid prefix of the cache) on the
        CPU, where the artifacts have it and ``valid_length`` is on, for every call it takes: one token per row,
        one row, or every row from position 0 (GroupQueryAttention refuses more tokens than one at a batch above
        one once a row has a past); the portable graph otherwise."""
        if (self.valid_length and self.device_type == "cpu" and self.has_graph(VALID_LENGTH)
                and (tokens == 1 or batch == 1 or not lengths.any())):
            return VALID_LENGTH
        return "transformer"

    def executor(self, graph: str, profile: str | None = None) -> OrtExecutor:
        ex = self._executors.get(graph)
        if ex is None:
            ex = self._executors[graph] = self._session(graph)
        return ex.profile(profile == "step")

    def captures(self, graph: str) -> bool:
        return self.cuda_graphs and self.device_type == "cuda" and graph == "transformer"

    def _providers(self, graph: str) -> list[Any]:
        """The transformer captures its step as a CUDA graph where asked (the other graphs run once
        per image: nothing to gain)."""
        if self.captures(graph):
            return [cuda_provider(self.index, cuda_graph=True)]
        return self.providers

    def _session(self, graph: str) -> OrtExecutor:
        path = self.artifacts.graph_file(graph)
        opts = self.ort.SessionOptions()
        opts.graph_optimization_level = self.ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = log_severity()
        if self.device_type == "cpu":
            opts.intra_op_num_threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0
            opts.add_session_config_entry(FORCE_SPINNING_STOP, "1")
        try:
            source: str | bytes = str(path)
            if self.emulation:
                from vqdeploy.runtime.backends.bf16_emulation import load_emulated

                source = load_emulated(path)
            session = self.ort.InferenceSession(source, opts, providers=self._providers(graph))
        except VQDeployError:
            raise
        except Exception as e:  # noqa: BLE001 (onnx and onnxruntime raise their own, unexported exception types)
            if self.captures(graph):
                raise BackendError(f"{path}: onnxruntime cannot run it with CUDA graphs ({one_line(e)[:200]}); "
                                   "run without --cuda-graphs") from None
            raise ArtifactError(f"{path}: onnxruntime cannot load it ({one_line(e)[:200]})") from None
        check_io(session, graph, self.graph(graph), path)
        capture = False if self.captures(graph) else None
        return OrtExecutor(session, self.device_type, self.index, graph, self.ort, capture)
