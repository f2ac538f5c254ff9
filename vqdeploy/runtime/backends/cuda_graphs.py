"""Explicit CUDA-graph capture of an enqueue (datacenter TensorRT's ``execute_async_v3``), with
cuda-python: TensorRT documents capturing the enqueue on a stream and replaying it with
``cudaGraphLaunch``. A captured graph replays the addresses and shapes it was captured with, so
graphs are keyed by everything bound; the first enqueue of a key runs uncaptured (TensorRT may
allocate or update state on a context's first run, which a capture must not record).

TensorRT-RTX captures by itself (``IRuntimeConfig.cuda_graph_strategy``) and does not go through here.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

from vqdeploy.errors import BackendError
from vqdeploy.runtime.backends.cuda_memory import CudaRuntime


class CapturedLaunches:
    """Per binding key: run once, then capture, then replay."""

    def __init__(self, cuda: CudaRuntime, stream: int) -> None:
        self.cuda = cuda
        self.stream = stream
        self.seen: set[Hashable] = set()
        self.graphs: dict[Hashable, tuple[Any, Any]] = {}  # key -> (graph, executable graph)
        self.captures = 0
        self.replays = 0

    def launch(self, key: Hashable, enqueue: Callable[[], None]) -> None:
        ready = self.graphs.get(key)
        if ready is None:
            if key not in self.seen:
                self.seen.add(key)
                enqueue()
                return
            ready = self.graphs[key] = self._capture(enqueue)
            self.captures += 1
        self.cuda.call("cudaGraphLaunch", ready[1], self.stream)
        self.replays += 1

    def _capture(self, enqueue: Callable[[], None]) -> tuple[Any, Any]:
        rt = self.cuda.rt
        self.cuda.call("cudaStreamBeginCapture", self.stream,
                       rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal)
        try:
            enqueue()
        except BaseException:
            try:  # leave the stream usable: end the capture and drop what it recorded
                self.cuda.call("cudaStreamEndCapture", self.stream)
            except BackendError:
                pass
            raise
        graph = self.cuda.call("cudaStreamEndCapture", self.stream)
        return graph, self.cuda.call("cudaGraphInstantiate", graph, 0)

    def __del__(self) -> None:
        for graph, executable in getattr(self, "graphs", {}).values():
            try:
                self.cuda.call("cudaGraphExecDestroy", executable)
                self.cuda.call("cudaGraphDestroy", graph)
            except Exception:  # noqa: BLE001 (interpreter shutdown: the driver frees them anyway)
                pass
