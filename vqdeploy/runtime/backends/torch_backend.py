"""PyTorch eager backend: the model the artifacts were exported from, run through the same
stage modules as the export (its family's ``TorchStages``: preprocessing is identical), with the
KV-cached forward. Importing this module imports torch; the registry opens it only when asked."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from vqdeploy.artifacts import Artifacts, Manifest
from vqdeploy.errors import BackendError, InputError
from vqdeploy.families import family_named, load_reference
from vqdeploy.families.base import CachedGPT
from vqdeploy.limits import MAX_SAMPLES
from vqdeploy.models.kv_cache import KVCache, write_at
from vqdeploy.runtime.backends.registry import OpenOptions


class TorchTransformer:
    """The KV-cached GPT on a fixed-capacity cache (block size) written in place: the buffers are
    allocated when a batch first needs them and reused by every later generation of that batch.

    ``cuda_graphs`` (CUDA only): the one-token step is captured once per batch size as a CUDA graph
    (``torch.cuda.CUDAGraph``) over static token and position tensors and replayed at every later
    step; the position is read on the device (``kv_cache.write_at``), so one capture serves every
    position. The prefill runs eagerly."""

    def __init__(self, gpt: CachedGPT, device: torch.device, cuda_graphs: bool = False) -> None:
        if cuda_graphs and device.type != "cuda":
            raise BackendError("CUDA graphs need a CUDA device (the torch backend runs on the CPU here)")
        self.gpt = gpt
        self.device = device
        self.cache: KVCache | None = None
        self.batch = 0
        self.cuda_graphs = cuda_graphs
        self.graphs: dict[int, StepGraph] = {}

    @property
    def length(self) -> int:
        return 0 if self.cache is None else self.cache.length

    def rewind(self, length: int) -> None:
        if self.cache is None or not 0 <= length <= self.cache.length:
            raise InputError(f"transformer: cannot rewind {self.length} cached positions to {length}")
        self.cache.length = length

    def reset(self, batch: int) -> None:
        if self.cache is None or self.cache.batch != batch:
            self.cache = self.gpt.new_cache(batch, device=self.device)
            self.graphs = {}  # captured over the old buffers
        self.cache.length, self.batch = 0, batch

    @torch.no_grad()
    def forward(self, tokens: np.ndarray) -> np.ndarray:
        if self.cache is None or tokens.shape[0] != self.batch:
            raise InputError(f"transformer: batch {tokens.shape[0]} does not match the cache's batch {self.batch}")
        if self.length + tokens.shape[1] > self.gpt.block_size:
            raise InputError(f"transformer: {self.length + tokens.shape[1]} tokens exceed the block size")
        idx = torch.from_numpy(np.ascontiguousarray(tokens, dtype=np.int64)).to(self.device)
        if self.cuda_graphs and tokens.shape[1] == 1:
            graph = self.graphs.get(self.batch)
            if graph is None:
                graph = self.graphs[self.batch] = StepGraph(self.gpt, self.cache, idx, self.length)
            logits = graph.replay(idx, self.length)
            self.cache.length += 1
        else:
            logits, self.cache = self.gpt.forward_cached(idx, self.cache)
        return logits.float().cpu().numpy()


class StepGraph:
    """One-token steps of one batch size, captured once (after warm-up runs on a side stream, as
    PyTorch's CUDA-graph notes prescribe) and replayed with new token and position values."""

    def __init__(self, gpt: CachedGPT, cache: KVCache, idx: torch.Tensor, position: int) -> None:
        self.idx = idx.clone()
        self.position = torch.tensor([position], dtype=torch.int64, device=idx.device)
        layers = cache.layers

        def step() -> torch.Tensor:
            return gpt.forward_at(self.idx, self.position, layers, write_at(self.position))[0]

        # the warm-up runs compute this very step (same token, same position): their cache writes are the real ones
        side = torch.cuda.Stream(device=idx.device)
        side.wait_stream(torch.cuda.current_stream(idx.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                step()
        torch.cuda.current_stream(idx.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = step()

    def replay(self, idx: torch.Tensor, position: int) -> torch.Tensor:
        self.idx.copy_(idx)
        self.position.fill_(position)
        self.graph.replay()
        return self.logits


class TorchBackend:
    name = "torch"
    emulation: str | None = None

    def __init__(self, model: nn.Module, manifest: Manifest, device: str = "cpu", cuda_graphs: bool = False) -> None:
        self.device = device
        self.manifest = manifest
        self.torch_device = torch.device(device)
        self.model = model.to(self.torch_device)
        self.family = family_named(manifest.model.family)
        stages = self.family.torch_stages(self.model, manifest)
        self._encoder, self._decoder = stages.encoder, stages.decoder
        self.cond_graph = stages.cond_encoder
        self.cuda_graphs = cuda_graphs
        self._runner = (TorchTransformer(stages.transformer, self.torch_device, cuda_graphs)
                        if stages.transformer is not None else None)

    def max_batch(self, graph: str) -> int:
        """PyTorch takes any batch; the request limit applies."""
        return MAX_SAMPLES

    def synchronize(self) -> None:
        if self.torch_device.type == "cuda":
            torch.cuda.synchronize(self.torch_device)

    def has_graph(self, name: str) -> bool:
        return False

    def run_graph(self, name: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise InputError(f"the torch backend runs the checkpoint, not the exported '{name}' graph")

    def device_decoding(self, groups: Any, noise: np.ndarray, null_tokens: Any = None) -> None:
        """No sampler graph here: the host sampler."""
        return None

    @torch.no_grad()
    def _run(self, module: nn.Module, x: np.ndarray) -> np.ndarray:
        return module(torch.from_numpy(np.ascontiguousarray(x)).to(self.torch_device)).cpu().numpy()

    def encode(self, image: np.ndarray) -> np.ndarray:
        return self._run(self._encoder, image.astype(np.float32))

    def encode_cond(self, cond: np.ndarray) -> np.ndarray:
        if self.cond_graph is None:
            raise InputError("this model has no image condition")
        return self._run(self.cond_graph, cond)

    def decode(self, indices: np.ndarray) -> np.ndarray:
        return self._run(self._decoder, indices.astype(np.int64))

    def transformer(self) -> TorchTransformer:
        if self._runner is None:
            raise InputError("this model has no transformer")
        return self._runner


def open_torch(artifacts: Artifacts, device: str, options: OpenOptions) -> TorchBackend:
    """The registry's opener: the exported checkpoint (or ``options.ckpt``), checked by fingerprint."""
    model = options.model if options.model is not None else load_reference(artifacts.manifest, options.ckpt,
                                                                             options.config)
    return TorchBackend(model, artifacts.manifest, device, options.cuda_graphs)
