"""One serialized engine from one parsed network: the builder configuration in one place."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, cast

from vqdeploy.errors import ArtifactError
from vqdeploy.files import atomic_write, read_regular
from vqdeploy.trt.logs import BuildLog, Echo, last_error, make_progress
from vqdeploy.trt.profiles import Profiles
from vqdeploy.trt.shim import TensorRT, trt
from vqdeploy.trt.target import Target, sm_name

MAX_TIMING_CACHE_BYTES = 1 << 30  # a timing cache file read into memory (they are a few MB)


def host_memory(mem: trt.IHostMemory) -> memoryview:
    """IHostMemory without a copy (it has the buffer protocol, which the stubs do not show)."""
    return memoryview(cast(Any, mem))


def configure(api: TensorRT, builder: trt.Builder, profiles: Profiles, target: Target,
              workspace: int | None) -> trt.IBuilderConfig:
    """Builder config: one optimization profile per manifest profile (in manifest order, so the
    runtime finds profile i by the order recorded in engines.json), the target and the workspace.
    No precision flags: the network is strongly typed. TF32, which TensorRT sets by default, is cleared: fp32
    tensors keep fp32 arithmetic, as the fp32 parity bound assumes (ONNX Runtime's TF32 put an H200's logits 11x
    past it); fp16 and bf16 exports are the fast path."""
    config = builder.create_builder_config()
    config.clear_flag(trt.BuilderFlag.TF32)
    for shapes in profiles.values():
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in shapes.items():
            profile.set_shape(name, trt.Dims(lo), trt.Dims(opt), trt.Dims(hi))
        config.add_optimization_profile(profile)
    if api.rtx:  # ahead of time: the engine carries kernels for exactly these compute capabilities
        config.num_compute_capabilities = len(target.compute_capabilities)
        for i, cc in enumerate(target.compute_capabilities):
            if not config.set_compute_capability(getattr(trt.ComputeCapability, sm_name(cc)), i):
                raise ArtifactError(f"{api} refused compute capability {cc}")
    if workspace is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    return config


def load_timing_cache(config: trt.IBuilderConfig, path: Path | None, echo: Echo) -> None:
    """Start from ``path`` when it holds a timing cache (an unreadable one is ignored, with a note).
    Datacenter TensorRT only: TensorRT-RTX does not time tactics (its timing cache is a no-op)."""
    data = b""
    if path is not None and os.path.lexists(path):
        data = read_regular(path, "timing cache", MAX_TIMING_CACHE_BYTES)
    cache = config.create_timing_cache(data)
    if cache is None and data:
        echo(f"note: {path} is not a timing cache of this TensorRT; starting a new one")
        cache = config.create_timing_cache(b"")
    config.set_timing_cache(cache, ignore_mismatch=False)


def save_timing_cache(config: trt.IBuilderConfig, path: Path | None) -> None:
    if path is None:
        return
    cache = config.get_timing_cache()
    if cache is not None:
        atomic_write(path, host_memory(cache.serialize()))


def build(api: TensorRT, builder: trt.Builder, network: trt.INetworkDefinition, config: trt.IBuilderConfig,
          log: BuildLog, label: str, echo: Echo) -> memoryview:
    """The serialized engine; ArtifactError with TensorRT's last error when the build fails."""
    monitor = None
    if hasattr(trt, "IProgressMonitor"):  # TensorRT >= 10.0 and every TensorRT-RTX
        monitor = make_progress(log, label, echo)  # kept referenced here for the whole build
        config.progress_monitor = monitor
    plan = builder.build_serialized_network(network, config)
    del monitor
    if log.failure is not None:
        raise log.failure
    if log.interrupted:
        raise KeyboardInterrupt
    if plan is None:
        last = last_error(log.errors)
        raise ArtifactError(f"{label}: {api} could not build the engine: {last} (full log: engines/build.log)")
    return host_memory(plan)


