"""TensorRT backend (datacenter TensorRT or TensorRT-RTX): the engines of ``vqdeploy build-trt``
driven through ``GraphBackend``, which owns buffers, output shapes and the KV cache.

What is TensorRT-specific, and kept here:
- loading: engines.json is checked against this machine (TensorRT flavour and version, GPU
  compute capability) and the manifest (graph hash) before TensorRT sees the engine;
- one execution context per (engine, optimization profile), the profile selected once at
  creation: the transformer engine has "prefill", "step" and "window" (Jacobi's calls), so no call switches
  profiles;
- ``run``: set the input shapes, bind every tensor by address (``set_tensor_address``) and
  enqueue ``execute_async_v3`` on the backend's CUDA stream; nothing is copied or synchronized.
- memory and the stream come from cuda-python (``cuda_memory``): no PyTorch.
- activation memory: the stages run one after another on one stream, so every context shares one
  device buffer (the largest any of them needs) instead of holding its own. This is valid only
  while the contexts are not run concurrently on different streams: pass ``share_memory=False``
  for that.

KV cache: the transformer's ``cache_out.*`` outputs come from TensorRT's KVCacheUpdate layer (the
parsed ONNX TensorScatter) and alias the ``cache.*`` inputs; ``GraphBackend`` binds both names to the
same buffer, so the update is in place and a step has the same shapes and addresses at every
position (only the device-side ``position`` value changes). That is what a captured CUDA graph
needs: with ``cuda_graphs=True`` TensorRT-RTX captures by itself (IRuntimeConfig.cuda_graph_strategy)
and datacenter TensorRT's step enqueue is captured explicitly and replayed (``cuda_graphs.py``).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from vqdeploy import machine
from vqdeploy.artifacts import Artifacts
from vqdeploy.errors import ArtifactError, BackendError, InputError
from vqdeploy.files import read_regular
from vqdeploy.runtime.backends.buffers import Buffer, Memory
from vqdeploy.runtime.backends.cuda_graphs import CapturedLaunches
from vqdeploy.runtime.backends.cuda_memory import CudaMemory, CudaRuntime
from vqdeploy.runtime.backends.graph_backend import GraphBackend
from vqdeploy.trt import check
from vqdeploy.trt.logs import BuildLog, Discard, last_error
from vqdeploy.trt.network import dims
from vqdeploy.trt.shim import TensorRT, load, trt

MAX_ENGINE_BYTES = 1 << 40  # no real bound: the engine file is regular and its sha256 was checked


class SharedActivations:
    """One device buffer bound to every execution context as its activation memory; it grows to
    the largest request, and growing rebinds the contexts already attached."""

    def __init__(self, memory: Memory) -> None:
        self.memory = memory
        self.buffer: Buffer | None = None
        self.contexts: list[trt.IExecutionContext] = []

    @property
    def size(self) -> int:
        return 0 if self.buffer is None else self.buffer.nbytes

    def ensure(self, size: int) -> None:
        if size <= self.size:
            return
        # the old buffer may still be used by work enqueued on the stream: wait before it is freed
        self.memory.synchronize()
        self.buffer = self.memory.empty((size,), "uint8")
        for ctx in self.contexts:
            ctx.set_device_memory(self.buffer.ptr, size)

    def attach(self, ctx: trt.IExecutionContext, size: int) -> None:
        self.contexts.append(ctx)
        if size > self.size:
            self.ensure(max(size, 256))
        else:
            assert self.buffer is not None
            ctx.set_device_memory(self.buffer.ptr, self.size)


class TrtExecutor:
    """One execution context of one engine, fixed to one optimization profile."""

    def __init__(self, label: str, ctx: trt.IExecutionContext, entry: dict[str, Any], profile: str,
                 stream: int, scratch: Buffer, memory: SharedActivations | None, rtx: bool,
                 errors: list[str] | None = None, captured: CapturedLaunches | None = None) -> None:
        self.label = label
        self.errors = errors if errors is not None else []  # the runtime logger's last errors
        self.ctx = ctx
        self.entry = entry
        self.profile = profile
        self.stream = stream
        self.scratch = scratch  # an address for zero-size tensors
        self.memory = memory
        self.rtx = rtx
        self.captured = captured  # explicit CUDA-graph capture (datacenter TensorRT's step)
        self.checked: set[tuple[tuple[int, ...], ...]] = set()  # input shapes whose output shapes were verified

    def _address(self, t: Buffer) -> int:
        return t.ptr if t.nbytes else self.scratch.ptr

    def _shape_error(self, name: str, shape: tuple[int, ...]) -> InputError:
        rng = self.entry["profiles"][self.profile].get(name, {})
        return InputError(f"{self.label}: input '{name}' of shape {shape} is outside the engine's '{self.profile}' "
                          f"profile (min {tuple(rng.get('min', ()))}, max {tuple(rng.get('max', ()))}); rebuild with "
                          "vqdeploy build-trt --batch/--size to cover it")

    def run(self, inputs: dict[str, Buffer], outputs: dict[str, Buffer]) -> None:
        ctx = self.ctx
        for name, t in inputs.items():
            if not ctx.set_input_shape(name, tuple(t.shape)):
                raise self._shape_error(name, tuple(t.shape))
            ctx.set_tensor_address(name, self._address(t))
        key = tuple(tuple(t.shape) for t in inputs.values())
        if key not in self.checked:  # the buffers GraphBackend sized from the manifest fit the engine
            for name, t in outputs.items():
                want = dims(ctx.get_tensor_shape(name))
                if want != tuple(t.shape):
                    raise BackendError(f"{self.label}: output '{name}' has shape {want} in the engine but {tuple(t.shape)} "
                                       "from the manifest; rebuild the engines")
            self.checked.add(key)
        for name, t in outputs.items():
            ctx.set_tensor_address(name, self._address(t))
        if self.memory is not None and self.rtx:
            # TensorRT-RTX sizes activations per shape; datacenter TensorRT's per-profile size is an upper bound
            self.memory.ensure(ctx.update_device_memory_size_for_shapes())
        if self.captured is None:
            self._enqueue()
        else:
            bound = tuple((n, tuple(t.shape), t.ptr) for n, t in (*inputs.items(), *outputs.items()))
            self.captured.launch(bound, self._enqueue)

    def _enqueue(self) -> None:
        if not self.ctx.execute_async_v3(self.stream):
            raise BackendError(f"{self.label}: TensorRT failed to enqueue the engine ({last_error(self.errors)})")


class TensorRTBackend(GraphBackend):
    name = "tensorrt"

    def __init__(self, artifacts: Artifacts, device: str = "cuda",
                 share_memory: bool = True, cuda_graphs: bool = False) -> None:
        kind, _, index = device.partition(":")
        if kind != "cuda":
            raise BackendError("the tensorrt backend runs on a CUDA GPU only")
        if not machine.gpu_present():
            raise BackendError("the tensorrt backend runs on a CUDA GPU only, and none is available here")
        cuda = CudaRuntime()
        self.index = int(index or 0)
        memory = CudaMemory(self.index, cuda)  # current device, its primary context and our stream
        super().__init__(artifacts, f"cuda:{self.index}" if index else "cuda", memory)
        self.stream = memory.stream
        self.scratch = memory.empty((256,), "uint8")
        self.api: TensorRT = load()
        name, cc = cuda.device(self.index)
        self.machine = check.Machine(self.api.flavour, self.api.version, name, cc)
        # TensorRT's runtime messages: kept (the last errors explain a failure in its one error line),
        # printed only when debugging
        self.log = BuildLog(sys.stderr, "warning") if os.environ.get("VQDEPLOY_DEBUG") else BuildLog(Discard(), "error")
        self.runtime = trt.Runtime(self.log.logger)
        # TensorRT-RTX captures by itself; datacenter TensorRT's step enqueue is captured explicitly
        self.cuda = cuda
        self.cuda_graphs = cuda_graphs
        # a captured graph records buffer addresses: give each context its own activation memory then
        self.memory_pool = SharedActivations(memory) if share_memory and not self.cuda_graphs else None
        self._engines: dict[str, tuple[trt.ICudaEngine, dict[str, Any]]] = {}
        self._executors: dict[tuple[str, str], TrtExecutor] = {}

    def max_batch(self, graph: str) -> int:
        """The smallest batch maximum over the profiles, of the inputs with a batch axis (not the
        sampler's (1,) settings)."""
        _, entry = self._engine(graph)
        batched = [t["name"] for t in self.graph(graph)["inputs"] if t["shape"][:1] == ["batch"]]
        return min((int(prof[n]["max"][0]) for prof in entry["profiles"].values() for n in batched if prof[n]["max"]),
                   default=super().max_batch(graph))

    def _engine(self, graph: str) -> tuple[trt.ICudaEngine, dict[str, Any]]:
        if graph not in self._engines:
            self.graph(graph)  # the manifest has it
            path, entry = check.engine_path(self.artifacts, graph, self.machine)
            blob = read_regular(path, "TensorRT engine", MAX_ENGINE_BYTES, ArtifactError)
            rebuild = f"rebuild: vqdeploy build-trt --artifacts {self.artifacts.path}"
            if hasattr(self.runtime, "get_engine_validity"):  # TensorRT-RTX: names the reason before loading
                validity, diagnostics = self.runtime.get_engine_validity(blob)
                if validity == trt.EngineValidity.INVALID:
                    reasons = [n.lower() for n, m in trt.EngineInvalidityDiagnostics.__members__.items()
                               if int(diagnostics) & int(m)]
                    raise ArtifactError(f"{path}: {self.api} reports the engine invalid here "
                                        f"({', '.join(reasons) or 'no reason given'}); {rebuild}")
            self.log.errors.clear()
            engine = self.runtime.deserialize_cuda_engine(blob)
            if engine is None:
                why = last_error(self.log.errors)
                raise ArtifactError(f"{path}: {self.api} cannot load it ({why}); {rebuild}")
            self._engines[graph] = (engine, entry)
        return self._engines[graph]

    def _context(self, engine: trt.ICudaEngine) -> trt.IExecutionContext:
        strategy = (trt.ExecutionContextAllocationStrategy.USER_MANAGED if self.memory_pool is not None
                    else trt.ExecutionContextAllocationStrategy.STATIC)
        if self.cuda_graphs and self.api.rtx:
            config = engine.create_runtime_config()
            config.set_execution_context_allocation_strategy(strategy)
            config.cuda_graph_strategy = trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
            ctx = engine.create_execution_context(config)
        else:
            ctx = engine.create_execution_context(strategy)
        if ctx is None:
            raise BackendError(f"{self.api} could not create an execution context (out of GPU memory?)")
        return ctx

    def executor(self, graph: str, profile: str | None = None) -> TrtExecutor:
        engine, entry = self._engine(graph)
        order: list[str] = entry["profile_order"]
        profile = profile or order[0]
        ex = self._executors.get((graph, profile))
        if ex is None:
            if profile not in order:
                raise ArtifactError(f"{graph}: the engine has no '{profile}' profile (it has {', '.join(order)}); "
                                    f"rebuild: vqdeploy build-trt --artifacts {self.artifacts.path}")
            index = order.index(profile)
            ctx = self._context(engine)
            ctx.set_optimization_profile_async(index, self.stream)
            if self.memory_pool is not None:
                self.memory_pool.attach(ctx, engine.get_device_memory_size_for_profile_v2(index))
            label = graph if len(order) == 1 else f"{graph} ({profile})"
            captured = None
            if self.cuda_graphs and not self.api.rtx and profile == "step":
                captured = CapturedLaunches(self.cuda, self.stream)
            ex = self._executors[(graph, profile)] = TrtExecutor(label, ctx, entry, profile, self.stream, self.scratch,
                                                                 self.memory_pool, self.api.rtx, self.log.errors,
                                                                 captured)
        return ex
