"""What the graph runtimes (onnxruntime on CPU/CUDA, TensorRT) share: preallocated buffers bound
by pointer, output shapes from the manifest, and the KV-cached transformer.

A subclass only provides ``_executor(graph, profile)``: an object whose ``run(inputs, outputs)``
binds contiguous torch tensors (host or device) by address and enqueues the graph. The KV
cache is one zeroed buffer per layer and part, (batch, n_head, block_size, head_dim), allocated
when a batch first needs it: every call binds it as the graph's ``cache.*`` input and as its
``cache_out.*`` output, and the graph's TensorScatter writes the new positions in place (ONNX
Runtime skips the copy when the two are one buffer; TensorRT's KVCacheUpdate aliases them). A step
neither allocates nor copies the cache, and its shapes are the same at every position.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from vqdeploy.errors import ArtifactError, InputError
from vqdeploy.runtime.sampling import SamplingParams, sampler_inputs
from vqdeploy.tensor_spec import TensorSpec, bind_dims

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "int64": torch.int64}


class Executor(Protocol):
    def run(self, inputs: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor]) -> None: ...


class GraphBackend:
    name = "graph"

    def __init__(self, artifacts: Path, manifest: dict[str, Any], device: str) -> None:
        self.artifacts = Path(artifacts)
        self.manifest = manifest
        self.device = device
        self.torch_device = torch.device(device)
        self._runner: KVTransformer | None = None

    # --- to implement -------------------------------------------------------------------
    def _executor(self, graph: str, profile: str | None = None) -> Executor:
        raise NotImplementedError

    def synchronize(self) -> None:
        if self.torch_device.type == "cuda":
            torch.cuda.synchronize(self.torch_device)

    def max_batch(self, graph: str) -> int:
        """Largest batch the graph accepts here (engines may narrow or widen the exported range)."""
        return int(self.graph(graph)["dims"]["batch"]["max"])

    # --- shared ---------------------------------------------------------------------------
    def graph(self, name: str) -> dict[str, Any]:
        try:
            return self.manifest["graphs"][name]
        except KeyError:
            raise ArtifactError(f"{self.artifacts}: the artifacts have no '{name}' graph") from None

    def specs(self, name: str, kind: str) -> list[TensorSpec]:
        return [TensorSpec.from_dict(t) for t in self.graph(name)[kind]]

    def run_graph(self, name: str, arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        inputs = self.specs(name, "inputs")
        missing = [t.name for t in inputs if t.name not in arrays]
        if missing:
            raise InputError(f"{name}: missing input {missing[0]}")
        dims = bind_dims(inputs, [arrays[t.name].shape for t in inputs], name)
        ins = {t.name: torch.as_tensor(np.ascontiguousarray(arrays[t.name], dtype=np.dtype(t.dtype))).to(self.torch_device)
               for t in inputs}
        outs = {t.name: torch.empty(t.concrete(dims), dtype=TORCH_DTYPES[t.dtype], device=self.torch_device)
                for t in self.specs(name, "outputs")}
        self._executor(name).run(ins, outs)
        return outs

    def encode(self, image: np.ndarray) -> np.ndarray:
        return self.run_graph("encoder", {"image": image})["indices"].cpu().numpy()

    def encode_cond(self, cond: np.ndarray) -> np.ndarray:
        graph = "cond_encoder" if "cond_encoder" in self.manifest["graphs"] else "encoder"
        name = self.graph(graph)["inputs"][0]["name"]
        return self.run_graph(graph, {name: cond})["indices"].cpu().numpy()

    def decode(self, indices: np.ndarray) -> np.ndarray:
        return self.run_graph("decoder", {"indices": indices})["image"].cpu().numpy()

    def transformer(self) -> KVTransformer:
        if self._runner is None:
            self._runner = KVTransformer(self)
        return self._runner


class KVTransformer:
    """The transformer graph with a device-resident, preallocated KV cache."""

    def __init__(self, backend: GraphBackend) -> None:
        self.backend = backend
        info = backend.manifest["model"]["transformer"]
        self.n_layer, self.n_head = int(info["n_layer"]), int(info["n_head"])
        self.head_dim, self.block = int(info["head_dim"]), int(info["block_size"])
        self.vocab = int(info["vocab_size"])
        cache = next((t for t in backend.graph("transformer")["inputs"] if t["name"] == "cache.0.key"), None)
        if cache is None:
            raise ArtifactError(f"{backend.artifacts}: the transformer graph has no in-place KV cache "
                                "(exported by an older vqdeploy); re-export")
        self.kv_dtype = TORCH_DTYPES[cache["dtype"]]
        self.names = [(f"cache.{i}.{p}", f"cache_out.{i}.{p}") for i in range(self.n_layer) for p in ("key", "value")]
        self.capacity = 0
        self.batch = 0
        self.length = 0

    def _allocate(self, batch: int) -> None:
        dev = self.backend.torch_device
        shape = (batch, self.n_head, self.block, self.head_dim)
        # zeroed: masked positions still multiply their (finite) values by 0
        self.buffers = [torch.zeros(shape, dtype=self.kv_dtype, device=dev) for _ in self.names]
        self.position = torch.zeros(1, dtype=torch.int64, device=dev)
        self.logits = torch.empty(batch * self.block * self.vocab, dtype=torch.float32, device=dev)
        self.tokens = torch.empty(batch * self.block, dtype=torch.int64, device=dev)
        self.capacity = batch

    def reset(self, batch: int) -> None:
        max_batch = self.backend.max_batch("transformer")
        if batch > max_batch:
            raise InputError(f"batch {batch} exceeds this backend's maximum {max_batch} "
                             "(re-export with --max-batch, or rebuild engines with --batch)")
        if batch > self.capacity:
            self._allocate(batch)
        self.batch, self.length = batch, 0
        self.cache = [buf[:batch] for buf in self.buffers]  # contiguous views, bound at every call

    def forward(self, tokens: np.ndarray) -> np.ndarray:
        return self._run(self._upload(tokens)).to("cpu", copy=True).numpy()  # the buffer is reused next call

    def _upload(self, tokens: np.ndarray) -> torch.Tensor:
        """Host (B,T) tokens into the preallocated device token buffer."""
        tok = self.tokens[: tokens.size].view(tokens.shape)
        tok.copy_(torch.from_numpy(np.ascontiguousarray(tokens, dtype=np.int64)))
        return tok

    def _run(self, tok: torch.Tensor) -> torch.Tensor:
        """Append the (B,T) device tokens at the cache's length; the (B,T,V) logits view of a buffer
        reused by the next call. The cache is bound as input and output: written in place."""
        b, t = tok.shape
        if b != self.batch:
            raise InputError(f"transformer: batch {b} does not match the cache's batch {self.batch}")
        p = self.length
        if p + t > self.block:
            raise InputError(f"transformer: {p + t} tokens exceed the block size {self.block}")
        self.position.fill_(p)
        ins = {"tokens": tok, "position": self.position}
        outs = {"logits": self.logits[: b * t * self.vocab].view(b, t, self.vocab)}
        for (in_name, out_name), buf in zip(self.names, self.cache):
            ins[in_name] = outs[out_name] = buf
        profile = "step" if t == 1 else "prefill"
        self.backend._executor("transformer", profile).run(ins, outs)
        self.length = p + t
        return outs["logits"]

    def generate_on_device(self, prompt: np.ndarray, steps: int, params: SamplingParams, noise: np.ndarray,
                           progress: Callable[[int], None] | None = None) -> np.ndarray:
        """``generator.generate`` with the exported sampler graph: logits and tokens stay on the device
        (each sampled token is bound as the next step's input) and the tokens come back once, at the
        end. Same rules as the host sampler, in fp32 (parity checks them against each other)."""
        if "sampler" not in self.backend.manifest["graphs"]:
            raise ArtifactError("these artifacts have no sampler graph (vocabulary over 3840?): use the host sampler")
        batch = prompt.shape[0]
        self.reset(batch)
        dev = self.backend.torch_device
        sampler = self.backend._executor("sampler")
        settings = {k: torch.from_numpy(v).to(dev) for k, v in sampler_inputs(params, self.vocab).items()}
        uniform = torch.from_numpy(np.ascontiguousarray(noise[:steps], dtype=np.float32)).to(dev)  # (steps, B)
        tokens = torch.empty((steps, batch, 1), dtype=torch.int64, device=dev)
        logits = self._run(self._upload(prompt))
        for k in range(steps):
            sampler.run({"logits": logits, "uniform": uniform[k], **settings}, {"tokens": tokens[k]})
            if progress is not None:
                progress(1)
            if k + 1 < steps:
                logits = self._run(tokens[k])
        return tokens[:, :, 0].T.cpu().numpy()
