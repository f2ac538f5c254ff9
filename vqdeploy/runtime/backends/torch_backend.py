"""PyTorch eager backend: the model the artifacts were exported from, run through the same
stage modules as the export (its family's ``TorchStages``: preprocessing is identical), with the
KV-cached forward. Importing this module imports torch; the registry opens it only when asked."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn

from vqdeploy.artifacts import Artifacts, Manifest
from vqdeploy.errors import BackendError, InputError
from vqdeploy.families import family_named, load_reference
from vqdeploy.families.base import CachedGPT
from vqdeploy.limits import MAX_SAMPLES
from vqdeploy.models.kv_cache import KV, KVCache, write_at, write_in_place
from vqdeploy.runtime.backends.base import RowLengths
from vqdeploy.runtime.backends.registry import OpenOptions


class TorchTransformer(RowLengths):
    """The KV-cached GPT on a fixed-capacity cache (block size) written in place, with a length per row: the
    buffers are allocated when a batch first needs them and reused by every later generation of that batch. A
    call runs rows ``first .. first + n - 1`` (the leading rows, or one row alone), each at its own position.

    ``cuda_graphs`` (CUDA only): the one-token step of the leading n rows is captured once per n as a CUDA graph
    (``torch.cuda.CUDAGraph``) over static token and position tensors and replayed at every later step; the
    positions are read on the device (``kv_cache.write_at``), so one capture serves every position. The prefill
    runs eagerly."""

    def __init__(self, gpt: CachedGPT, device: torch.device, cuda_graphs: bool = False) -> None:
        if cuda_graphs and device.type != "cuda":
            raise BackendError("CUDA graphs need a CUDA device (the torch backend runs on the CPU here)")
        self.gpt = gpt
        self.device = device
        self.cache: KVCache | None = None
        self.batch = 0
        self.lengths = np.zeros(0, dtype=np.int64)  # cached positions per row
        self.cuda_graphs = cuda_graphs
        self.graphs: dict[int, StepGraph] = {}

    def reset(self, batch: int) -> None:
        if self.cache is None or self.cache.batch != batch:
            self.cache = self.gpt.new_cache(batch, device=self.device)
            self.graphs = {}  # captured over the old buffers
        self.batch = batch
        self.lengths = np.zeros(batch, dtype=np.int64)

    @torch.no_grad()
    def move(self, src: int, dst: int) -> None:
        """Row ``src``'s cache and length into row ``dst`` (in place: captured step graphs keep their buffers)."""
        self._check_move(src, dst)
        assert self.cache is not None
        for k, v in self.cache.layers:
            k[dst].copy_(k[src])
            v[dst].copy_(v[src])
        self._moved(src, dst)

    @torch.no_grad()
    def forward(self, tokens: np.ndarray, first: int = 0) -> np.ndarray:
        """Append (n,T) tokens to rows ``first .. first + n - 1``, each at its own length; their (n,T,V) logits."""
        n, t = tokens.shape
        if self.cache is None or first < 0 or first + n > self.batch:
            raise InputError(f"transformer: rows {first}..{first + n - 1} are outside the cache's batch {self.batch}")
        lengths = self.lengths[first : first + n]
        if int(lengths.max()) + t > self.gpt.block_size:
            raise InputError(f"transformer: {int(lengths.max()) + t} tokens exceed the block size")
        idx = torch.from_numpy(np.ascontiguousarray(tokens, dtype=np.int64)).to(self.device)
        layers = [(k[first : first + n], v[first : first + n]) for k, v in self.cache.layers]
        uniform = bool((lengths == lengths[0]).all())
        if self.cuda_graphs and t == 1 and first == 0:
            graph = self.graphs.get(n)
            if graph is None:
                graph = self.graphs[n] = StepGraph(self.gpt, layers, idx, lengths)
            logits = graph.replay(idx, lengths)
        else:
            position = torch.from_numpy(lengths.copy()).to(self.device)
            write = write_in_place(int(lengths[0])) if uniform else write_at(position)
            logits = self.gpt.forward_at(idx, position, layers, write)[0]
        lengths += t
        return logits.float().cpu().numpy()


class StepGraph:
    """One-token steps of the leading n rows, captured once (after warm-up runs on a side stream, as PyTorch's
    CUDA-graph notes prescribe) and replayed with new token and position values."""

    def __init__(self, gpt: CachedGPT, layers: list[KV], idx: torch.Tensor, lengths: np.ndarray) -> None:
        self.idx = idx.clone()
        self.position = torch.from_numpy(lengths.copy()).to(idx.device)

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

    def replay(self, idx: torch.Tensor, lengths: np.ndarray) -> torch.Tensor:
        self.idx.copy_(idx)
        self.position.copy_(torch.from_numpy(lengths))
        self.graph.replay()
        return self.logits


class TorchBackend:
    name = "torch"
    emulation: str | None = None

    def __init__(self, model: nn.Module, manifest: Manifest, device: str = "cpu", cuda_graphs: bool = False,
                 owned: bool = False) -> None:
        """``owned``: the caller hands the model over, so it is moved to ``device``; otherwise a model on another
        device is copied there (parity and bench keep running their reference on the CPU)."""
        self.device = device
        self.manifest = manifest
        self.torch_device = torch.device(device)
        if self.torch_device.type != "cpu":
            ieee_fp32()
        self.model = on_device(model, self.torch_device, owned)
        self.family = family_named(manifest.model.family)
        stages = self.family.torch_stages(self.model, manifest)
        for stage in (stages.encoder, stages.decoder, stages.cond_encoder):  # their own buffers (one-hot classes)
            if stage is not None:
                stage.to(self.torch_device)
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


def ieee_fp32() -> None:
    """Full fp32 convolutions and matmuls off the CPU, process-wide: PyTorch runs cuDNN convolutions in TF32 by
    default, which moved one cond-encoder code of the medium model on an H200 (a margin of 1.1e-4, ten times the
    near-tie bound). The torch backend is the reference the exported graphs are held to."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def on_device(model: nn.Module, device: torch.device, owned: bool) -> nn.Module:
    """``model`` on ``device``: moved if owned, else a copy where it lives elsewhere (``Module.to`` moves in place,
    and a shared reference moved to the GPU broke every CPU user of it)."""
    here = next(model.parameters(), None)
    same = here is not None and here.device.type == device.type and device.index in (None, here.device.index)
    if owned or here is None or same:
        return model.to(device)
    return copy.deepcopy(model).to(device)


def open_torch(artifacts: Artifacts, device: str, options: OpenOptions) -> TorchBackend:
    """The registry's opener: the exported checkpoint (or ``options.ckpt``), checked by fingerprint; a model in
    ``options`` is the caller's and stays where it is."""
    if options.model is not None:
        return TorchBackend(options.model, artifacts.manifest, device, options.cuda_graphs)
    model = load_reference(artifacts.manifest, options.ckpt, options.config)
    return TorchBackend(model, artifacts.manifest, device, options.cuda_graphs, owned=True)
