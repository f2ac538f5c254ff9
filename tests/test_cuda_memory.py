"""cuda-python glue without a GPU: a fake ``cuda.bindings.runtime`` whose "device" memory is host
memory, so ``CudaMemory`` drives the real KV-cached transformer through ONNX Runtime CPU sessions
and must give the host backend's tokens (every upload, download and view is exercised)."""

from __future__ import annotations

import ctypes
import enum
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from vqdeploy.artifacts import Artifacts
from vqdeploy.errors import BackendError
from vqdeploy.runtime.backends.cuda_memory import CudaMemory, CudaRuntime


class FakeCudart:
    class cudaMemcpyKind(enum.IntEnum):  # noqa: N801 (cuda-python's name)
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    def __init__(self) -> None:
        self.blocks: dict[int, Any] = {}
        self.calls: list[str] = []
        self.streams = 0

    def _ok(self, name: str, *values: Any) -> tuple[Any, ...]:
        self.calls.append(name)
        return (0, *values)

    def cudaMalloc(self, n: int) -> tuple[Any, ...]:  # noqa: N802
        block = ctypes.create_string_buffer(n)
        self.blocks[ctypes.addressof(block)] = block
        return self._ok("cudaMalloc", ctypes.addressof(block))

    def cudaFree(self, ptr: int) -> tuple[Any, ...]:  # noqa: N802
        self.blocks.pop(ptr)
        return self._ok("cudaFree")

    def cudaMemcpyAsync(self, dst: int, src: int, n: int, kind: Any, stream: int) -> tuple[Any, ...]:  # noqa: N802
        assert stream == 7
        ctypes.memmove(dst, src, n)
        return self._ok("cudaMemcpyAsync")

    def cudaMemsetAsync(self, ptr: int, value: int, n: int, stream: int) -> tuple[Any, ...]:  # noqa: N802
        ctypes.memset(ptr, value, n)
        return self._ok("cudaMemsetAsync")

    def cudaStreamCreate(self) -> tuple[Any, ...]:  # noqa: N802
        return self._ok("cudaStreamCreate", 7)

    def cudaStreamSynchronize(self, stream: int) -> tuple[Any, ...]:  # noqa: N802
        return self._ok("cudaStreamSynchronize")

    def cudaSetDevice(self, index: int) -> tuple[Any, ...]:  # noqa: N802
        return self._ok("cudaSetDevice")

    def cudaGetDeviceCount(self) -> tuple[Any, ...]:  # noqa: N802
        return self._ok("cudaGetDeviceCount", 1)

    def cudaGetDeviceProperties(self, index: int) -> tuple[Any, ...]:  # noqa: N802
        return self._ok("cudaGetDeviceProperties", SimpleNamespace(name=b"Fake GPU\x00", major=9, minor=0))

    def cudaGetErrorName(self, err: Any) -> tuple[Any, ...]:  # noqa: N802
        return (0, b"cudaErrorMemoryAllocation")


def test_transfers_views_and_errors() -> None:
    rt = FakeCudart()
    cuda = CudaRuntime(rt)
    assert cuda.device(0) == ("Fake GPU", "9.0") and cuda.device_count() == 1
    mem = CudaMemory(0, cuda)
    buf = mem.zeros((2, 3), "float32")
    assert np.array_equal(mem.download(buf), np.zeros((2, 3), np.float32))
    mem.upload(np.arange(6).reshape(2, 3), buf)
    assert np.array_equal(mem.download(buf), np.arange(6, dtype=np.float32).reshape(2, 3))
    assert np.array_equal(mem.download(buf.view((3,), 3)), [3, 4, 5])
    bf16 = mem.empty((4,), "bfloat16")
    mem.upload(np.array([1, 2, 3, 0x3F80], np.uint16), bf16)
    assert mem.download(bf16).tolist() == [1, 2, 3, 0x3F80]
    rt.cudaMalloc = lambda n: (2, None)  # type: ignore[method-assign]
    with pytest.raises(BackendError, match=r"^CUDA cudaMalloc failed \(cudaErrorMemoryAllocation\)$"):
        mem.empty((1,), "int64")


@pytest.mark.parametrize("memory", ["cuda-python", "ortvalue"])
def test_kv_transformer_on_device_memory_matches_host(demo_export: Path, memory: str) -> None:
    """The same loop on the two device memories: cuda-python (fake: host pointers) and OrtValues (on
    ONNX Runtime's CPU allocator here; the CUDA ones take the same calls)."""
    from vqdeploy.artifacts import read_manifest
    from vqdeploy.runtime.backends.graph_backend import GraphBackend
    from vqdeploy.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
    from vqdeploy.runtime.decoding import generate, sample_tokens, start_decoding
    from vqdeploy.runtime.sampling import SamplingParams, uniform_noise

    out = demo_export
    manifest = read_manifest(out)
    host = OnnxRuntimeBackend(Artifacts(out, manifest))
    if memory == "ortvalue":
        import onnxruntime

        from vqdeploy.runtime.backends.ort_memory import OrtDeviceMemory

        mem: Any = OrtDeviceMemory(onnxruntime, "cpu", 0)
    else:
        mem = CudaMemory(0, CudaRuntime(FakeCudart()))
    fake = GraphBackend(Artifacts(out, manifest), "cuda", mem)
    fake.executor = host.executor  # type: ignore[method-assign]  # CPU sessions reading the "device" memory
    tokens = manifest.raw["model"]["tokens"]
    cond = np.random.default_rng(0).integers(0, 64, (2, tokens["cond"]))
    params = SamplingParams(top_k=8)
    noise = uniform_noise(1, 2, tokens["image"])
    want = sample_tokens(host.transformer(), cond, tokens["image"], params, noise)
    assert np.array_equal(sample_tokens(fake.transformer(), cond, tokens["image"], params, noise), want)
    on_device = [generate(start_decoding(be, "graph", params, noise), cond, tokens["image"]) for be in (fake, host)]
    assert np.array_equal(on_device[0], on_device[1])
    assert np.array_equal(on_device[0], want)  # the sampler graph draws what the host sampler draws
    z = np.random.default_rng(1).integers(0, 64, (1, *manifest.raw["model"]["first_stage"]["latent_grid"]))
    assert np.array_equal(fake.decode(z), host.decode(z))


class CaptureCudart(FakeCudart):
    """Adds stream capture: enqueues between begin and end are recorded, not run; a launch runs them."""

    class cudaStreamCaptureMode(enum.IntEnum):  # noqa: N801
        cudaStreamCaptureModeThreadLocal = 1

    class cudaMemcpyKind(enum.IntEnum):  # noqa: N801
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2
        cudaMemcpyDeviceToDevice = 3

    def __init__(self) -> None:
        super().__init__()
        self.capturing = False

    def cudaStreamBeginCapture(self, stream: int, mode: Any) -> tuple[Any, ...]:  # noqa: N802
        assert stream == 7 and not self.capturing
        self.capturing = True
        return self._ok("cudaStreamBeginCapture")

    def cudaStreamEndCapture(self, stream: int) -> tuple[Any, ...]:  # noqa: N802
        self.capturing = False
        return self._ok("cudaStreamEndCapture", "graph")

    def cudaGraphInstantiate(self, graph: Any, flags: int) -> tuple[Any, ...]:  # noqa: N802
        return self._ok("cudaGraphInstantiate", f"exec-{self.calls.count('cudaGraphInstantiate')}")

    def cudaGraphLaunch(self, exe: Any, stream: int) -> tuple[Any, ...]:  # noqa: N802
        return self._ok("cudaGraphLaunch")

    def cudaGraphExecDestroy(self, exe: Any) -> tuple[Any, ...]:  # noqa: N802
        return self._ok("cudaGraphExecDestroy")

    def cudaGraphDestroy(self, graph: Any) -> tuple[Any, ...]:  # noqa: N802
        return self._ok("cudaGraphDestroy")


def test_captured_launches_run_once_capture_once_then_replay() -> None:
    from vqdeploy.runtime.backends.cuda_graphs import CapturedLaunches

    rt = CaptureCudart()
    launches = CapturedLaunches(CudaRuntime(rt), 7)
    enqueued: list[bool] = []  # whether each enqueue happened inside a capture
    for key in ["a", "a", "a", "a", "b", "b", "a"]:
        launches.launch(key, lambda: enqueued.append(rt.capturing))
    # a: eager, captured, replay x2 (+1 at the end); b: eager, captured
    assert enqueued == [False, True, False, True]
    assert launches.captures == 2 and rt.calls.count("cudaGraphLaunch") == launches.replays == 5
    with pytest.raises(BackendError):  # a failing enqueue ends the capture and leaves the stream usable
        launches.launch("c", lambda: None)
        launches.launch("c", lambda: (_ for _ in ()).throw(BackendError("enqueue failed")))
    assert not rt.capturing
    del launches
    assert rt.calls.count("cudaGraphExecDestroy") == 2


def test_device_copy_on_the_stream() -> None:
    mem = CudaMemory(0, CudaRuntime(CaptureCudart()))
    src, dst = mem.empty((2, 1), "int64"), mem.zeros((4, 2, 1), "int64")
    mem.upload(np.array([[5], [6]]), src)
    mem.copy(src, dst.view((2, 1), 4))
    assert mem.download(dst)[:, :, 0].tolist() == [[0, 0], [0, 0], [5, 6], [0, 0]]
    with pytest.raises(ValueError):
        mem.copy(src, dst)
