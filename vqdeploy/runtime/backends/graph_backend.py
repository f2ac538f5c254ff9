"""What the graph runtimes (onnxruntime on CPU/CUDA, TensorRT) share: preallocated buffers bound
by address, output shapes from the manifest, and the KV-cached transformer.

A subclass provides its ``Memory`` (``buffers``: numpy on the host, OrtValues or cuda-python on the
GPU; no PyTorch) and ``executor(graph, profile)``: an object whose ``run(inputs, outputs)`` binds
``Buffer``s by address and runs the graph. The KV cache is one zeroed buffer per layer and part,
(batch, n_head, block_size, head_dim), allocated when a batch first needs it: every call binds it
as the graph's ``cache.*`` input and as its ``cache_out.*`` output, and the graph's TensorScatter
writes the new positions in place (ONNX Runtime skips the copy when the two are one buffer;
TensorRT's KVCacheUpdate aliases them). A step neither allocates nor copies the cache, and its
shapes and addresses are the same at every position.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from vqdeploy.artifacts import Artifacts
from vqdeploy.artifacts.tensors import TensorSpec, bind_dims
from vqdeploy.errors import ArtifactError, InputError
from vqdeploy.runtime.backends.base import RowLengths
from vqdeploy.runtime.backends.buffers import Buffer, HostMemory, Memory
from vqdeploy.runtime.guidance import GUIDED_SAMPLER, RowPlan
from vqdeploy.runtime.sampling import SamplingParams, sampler_inputs


class Executor(Protocol):
    def run(self, inputs: dict[str, Buffer], outputs: dict[str, Buffer]) -> None: ...


class GraphBackend:
    name = "graph"
    emulation: str | None = None  # what this backend does differently from the graphs' own arithmetic
    # every step binds the same addresses (the drawn token is copied out of one fixed buffer), so that
    # a step can be captured as a CUDA graph once and replayed; set by backends that capture
    cuda_graphs = False

    def __init__(self, artifacts: Artifacts, device: str, memory: Memory | None = None) -> None:
        self.artifacts = artifacts
        self.manifest = artifacts.manifest
        self.device = device
        self.memory: Memory = memory if memory is not None else HostMemory()
        self._runner: KVTransformer | None = None

    # --- to implement -------------------------------------------------------------------
    def executor(self, graph: str, profile: str | None = None) -> Executor:
        """The runner of ``graph`` (fixed to ``profile`` where the engine has several)."""
        raise NotImplementedError

    def synchronize(self) -> None:
        self.memory.synchronize()

    def transformer_graph(self, batch: int, tokens: int, lengths: np.ndarray) -> str:
        """The graph a transformer call of (batch, tokens) at the rows' ``lengths`` runs: the portable one here
        (ONNX Runtime picks its valid-length twin where it can)."""
        return "transformer"

    def max_batch(self, graph: str) -> int:
        """Largest batch the graph accepts here (engines may narrow or widen the exported range)."""
        return int(self.graph(graph)["dims"]["batch"]["max"])

    # --- shared ---------------------------------------------------------------------------
    def graph(self, name: str) -> Mapping[str, Any]:
        try:
            return self.manifest.graphs[name]
        except KeyError:
            raise ArtifactError(f"{self.artifacts.path}: the artifacts have no '{name}' graph") from None

    def specs(self, name: str, kind: str) -> list[TensorSpec]:
        return [TensorSpec.from_dict(t) for t in self.graph(name)[kind]]

    def has_graph(self, name: str) -> bool:
        return name in self.manifest.graphs

    def run_graph(self, name: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One call of graph ``name`` on host arrays; host outputs."""
        inputs = self.specs(name, "inputs")
        missing = [t.name for t in inputs if t.name not in arrays]
        if missing:
            raise InputError(f"{name}: missing input {missing[0]}")
        dims = bind_dims(inputs, [arrays[t.name].shape for t in inputs], name)
        ins = {}
        for t in inputs:
            ins[t.name] = buf = self.memory.empty(tuple(arrays[t.name].shape), t.dtype)
            self.memory.upload(arrays[t.name], buf)
        outs = {t.name: self.memory.empty(tuple(t.concrete(dims)), t.dtype) for t in self.specs(name, "outputs")}
        self.executor(name).run(ins, outs)
        return {k: self.memory.download(b) for k, b in outs.items()}

    def encode(self, image: np.ndarray) -> np.ndarray:
        return self.run_graph("encoder", {"image": image})["indices"]

    def encode_cond(self, cond: np.ndarray) -> np.ndarray:
        graph = "cond_encoder" if "cond_encoder" in self.manifest.graphs else "encoder"
        name = self.graph(graph)["inputs"][0]["name"]
        return self.run_graph(graph, {name: cond})["indices"]

    def decode(self, indices: np.ndarray) -> np.ndarray:
        return self.run_graph("decoder", {"indices": indices})["image"]

    def transformer(self) -> KVTransformer:
        if self._runner is None:
            self._runner = KVTransformer(self)
        return self._runner

    def device_decoding(self, groups: list[tuple[SamplingParams, np.ndarray]],
                        noise: np.ndarray, null_tokens: np.ndarray | None = None) -> DeviceDecoding | None:
        """The sampler graph's loop on this backend's memory (None: artifacts without a sampler graph,
        a vocabulary beyond TensorRT's TopK limit)."""
        if not self.has_graph("sampler"):
            return None
        return DeviceDecoding(self.transformer(), groups, noise, null_tokens)


def transformer_profile(profiles: Mapping[str, Mapping[str, Sequence[int]]], tokens: int) -> str:
    """The transformer's optimization profile for a call of ``tokens`` new tokens per row: "step" for one; the
    prefill's for the condition's length (the length that profile is tuned for); "window" for Jacobi decoding's
    calls where the artifacts have that profile (exported before it: the prefill's) and the call fits it; the
    prefill's otherwise. Only TensorRT's engines differ by profile."""
    if tokens == 1:
        return "step"
    window = profiles.get("window")
    if (window is not None and tokens != profiles["prefill"]["tokens"][1]
            and window["tokens"][0] <= tokens <= window["tokens"][2]):
        return "window"
    return "prefill"


class KVTransformer(RowLengths):
    """The transformer graph with a device-resident, preallocated KV cache and a length per row: a call runs
    rows ``first .. first + n - 1`` (the leading rows, or one row alone: ``serve``'s continuous batching
    prefills a joining row by itself), each at its own position."""

    def __init__(self, backend: GraphBackend) -> None:
        self.backend = backend
        _, info = backend.manifest.model.sampling()
        self.n_layer, self.n_head = info.n_layer, info.n_head
        self.head_dim, self.block = info.head_dim, info.block_size
        self.vocab = info.vocab_size
        cache = next((t for t in backend.graph("transformer")["inputs"] if t["name"] == "cache.0.key"), None)
        if cache is None:
            raise ArtifactError(f"{backend.artifacts.path}: the transformer graph has no in-place KV cache "
                                "(exported by an older vqdeploy); re-export")
        self.kv_dtype = str(cache["dtype"])
        self.profiles = backend.graph("transformer")["profiles"]
        self.names = [(f"cache.{i}.{p}", f"cache_out.{i}.{p}") for i in range(self.n_layer) for p in ("key", "value")]
        self.memory = backend.memory
        self.capacity = 0
        self.batch = 0
        self.lengths = np.zeros(0, dtype=np.int64)  # cached positions per row of the current batch
        self.buffers: list[Buffer] = []
        self.io: dict[tuple[int, int], tuple[Buffer, Buffer]] = {}  # (B,T) -> token and logits buffers
        self.views: dict[tuple[int, int], tuple[list[Buffer], Buffer]] = {}  # (first, n) -> cache and position rows

    def _allocate(self, batch: int) -> None:
        shape = (batch, self.n_head, self.block, self.head_dim)
        # zeroed: masked positions still multiply their (finite) values by 0
        self.buffers = [self.memory.zeros(shape, self.kv_dtype) for _ in self.names]
        self.io, self.views = {}, {}
        self.capacity = batch

    def reset(self, batch: int) -> None:
        max_batch = self.backend.max_batch("transformer")
        if batch > max_batch:
            raise InputError(f"batch {batch} exceeds this backend's maximum {max_batch} "
                             "(re-export with --max-batch, or rebuild engines with --batch)")
        if batch > self.capacity:
            self._allocate(batch)
        self.batch = batch
        self.lengths = np.zeros(batch, dtype=np.int64)

    def rows(self, first: int, n: int) -> tuple[list[Buffer], Buffer]:
        """The cache buffers of rows ``first .. first + n - 1`` (contiguous views) and their (n,) position buffer
        (a whole buffer: device uploads take no views), made once: a step binds the same addresses every time."""
        pair = self.views.get((first, n))
        if pair is None:
            row = self.n_head * self.block * self.head_dim
            shape = (n, self.n_head, self.block, self.head_dim)
            pair = self.views[(first, n)] = ([buf.view(shape, first * row) for buf in self.buffers],
                                             self.memory.empty((n,), "int64"))
        return pair

    def move(self, src: int, dst: int) -> None:
        """Row ``src``'s cache (every layer's key and value, the whole capacity) and length into row ``dst``."""
        self._check_move(src, dst)
        for a, b in zip(self.rows(src, 1)[0], self.rows(dst, 1)[0]):
            self.memory.copy(a, b)
        self._moved(src, dst)

    @property
    def position(self) -> Buffer:
        """The position buffer of the whole batch (what a step of every row binds)."""
        return self.rows(0, self.batch)[1]

    def io_buffers(self, batch: int, t: int) -> tuple[Buffer, Buffer]:
        """The (B,T) token and (B,T,V) logits buffers, allocated once per shape (prefill, step)."""
        pair = self.io.get((batch, t))
        if pair is None:
            pair = self.io[(batch, t)] = (self.memory.empty((batch, t), "int64"),
                                          self.memory.empty((batch, t, self.vocab), "float32"))
        return pair

    def forward(self, tokens: np.ndarray, first: int = 0) -> np.ndarray:
        """Append (n,T) tokens to rows ``first .. first + n - 1``, each at its own length; their (n,T,V) logits."""
        if tokens.ndim != 2:
            raise InputError(f"transformer: tokens must be (batch, length), got shape {tokens.shape}")
        tok, _ = self.io_buffers(*tokens.shape)
        self.memory.upload(tokens, tok)
        return self.memory.download(self.run(tok, first))  # a copy: the buffer is reused next call

    def run(self, tok: Buffer, first: int = 0) -> Buffer:
        """Append the (n,T) device tokens to rows ``first ..`` at each row's length; the (n,T,V) logits buffer,
        reused by the next call of that shape. The cache is bound as input and output: written in place."""
        b, t = tok.shape
        if first < 0 or first + b > self.batch:
            raise InputError(f"transformer: rows {first}..{first + b - 1} are outside the cache's batch {self.batch}")
        lengths = self.lengths[first : first + b]
        if int(lengths.max()) + t > self.block:
            raise InputError(f"transformer: {int(lengths.max()) + t} tokens exceed the block size {self.block}")
        cache, position = self.rows(first, b)
        self.memory.upload(lengths, position)
        logits = self.io_buffers(b, t)[1]
        ins = {"tokens": tok, "position": position}
        outs = {"logits": logits}
        for (in_name, out_name), buf in zip(self.names, cache):
            ins[in_name] = outs[out_name] = buf
        profile = transformer_profile(self.profiles, t)
        self.backend.executor(self.backend.transformer_graph(b, t, lengths), profile).run(ins, outs)
        lengths += t
        return logits


class DeviceDecoding:
    """The graph-only loop: transformer -> sampler graph -> transformer, with the logits and the drawn
    tokens in device memory (each token is bound as the next step's input) and the tokens read back
    only when asked. Same rules as the host sampler, in fp32 (parity checks them against each other);
    this is the loop an app that loads only engine files runs.

    The sampler graph takes one setting for its whole batch, so rows with different params (``serve``)
    come as groups of contiguous rows, one sampler call each, on views of the same buffers. A guided group
    (classifier-free guidance) runs its conditional rows then its null rows (``guidance.RowPlan``) and draws
    with the guided sampler graph, which combines the two halves and writes the token to both: the transformer
    batch is the plan's rows, the uniforms and the tokens read back are per sample."""

    def __init__(self, kv: KVTransformer, groups: list[tuple[SamplingParams, np.ndarray]], noise: np.ndarray,
                 null_tokens: np.ndarray | None = None) -> None:
        backend = kv.backend
        self.kv, self.memory = kv, kv.memory
        steps, self.batch = noise.shape
        self.plan = RowPlan.make(groups, self.batch, null_tokens)
        self.rows = self.plan.rows
        self.samplers: dict[str, Executor] = {}
        # (first sample, samples, first row, rows, graph, settings, params)
        self.groups: list[tuple[int, int, int, int, str, dict[str, Buffer], SamplingParams]] = []
        for g in self.plan.groups:
            first, count = int(g.samples[0]), len(g.samples)
            if not np.array_equal(g.samples, np.arange(first, first + count)):
                raise InputError("the graph sampler needs each sampling setting's rows together")
            graph = GUIDED_SAMPLER if g.null is not None else "sampler"
            if graph not in self.samplers:
                self.samplers[graph] = backend.executor(graph)
            dtypes = {t["name"]: str(t["dtype"]) for t in backend.graph(graph)["inputs"]}
            settings = {}
            for name, value in sampler_inputs(g.params, kv.vocab).items():
                settings[name] = buf = self.memory.empty(tuple(value.shape), dtypes[name])
                self.memory.upload(value, buf)
            self.groups.append((first, count, int(g.cond[0]), count * (2 if g.null is not None else 1), graph,
                                settings, g.params))
        self.uniform = self.memory.empty((steps, self.batch), "float32")
        self.memory.upload(np.ascontiguousarray(noise, dtype=np.float32), self.uniform)
        self.history = self.memory.empty((steps, self.rows, 1), "int64")
        # CUDA graphs: the sampler writes the step's fixed token buffer, and the token is copied to the history
        self.fixed = backend.cuda_graphs
        self.drawn = 0
        self.logits: Buffer | None = None

    def prefill(self, prompt: np.ndarray) -> None:
        if prompt.shape[0] != self.batch:
            raise InputError(f"transformer: batch {prompt.shape[0]} does not match the decoding's {self.batch}")
        rows = self.plan.prompt(prompt)
        self.kv.reset(self.rows)
        tok = self.kv.io_buffers(*rows.shape)[0]
        self.memory.upload(np.ascontiguousarray(rows, dtype=np.int64), tok)
        self.logits = self.kv.run(tok)

    def draw(self) -> None:
        r, b, k = self.rows, self.batch, self.drawn
        assert self.logits is not None, "prefill first"
        drawn = self.history.view((r, 1), k * r)
        into = self.kv.io_buffers(r, 1)[0] if self.fixed else drawn
        if len(self.groups) == 1 and r == b:
            self.sampler_run("sampler", {"logits": self.logits, "uniform": self.uniform.view((b,), k * b),
                                         **self.groups[0][5]}, {"tokens": into})
        else:
            t, v = self.logits.shape[1], self.logits.shape[2]
            for first, count, row, rows, graph, settings, params in self.groups:
                if graph == GUIDED_SAMPLER and k > 0 and params.guided_at(k - 1) and not params.guided_at(k):
                    # guidance off from here on (LlamaGen's cfg_interval): a scale of 1 draws from the cond rows
                    self.memory.upload(np.array([1.0], np.float32), settings["cfg_scale"])
                self.sampler_run(graph, {"logits": self.logits.view((rows, t, v), row * t * v),
                                         "uniform": self.uniform.view((count,), k * b + first), **settings},
                                 {"tokens": into.view((rows, 1), row)})
        if self.fixed:
            self.memory.copy(into, drawn)
        self.drawn = k + 1

    def sampler_run(self, graph: str, inputs: dict[str, Buffer], outputs: dict[str, Buffer]) -> None:
        self.samplers[graph].run(inputs, outputs)

    def extend(self) -> None:
        r = self.rows
        self.logits = self.kv.run(self.kv.io_buffers(r, 1)[0] if self.fixed else
                                  self.history.view((r, 1), (self.drawn - 1) * r))

    def tokens(self) -> np.ndarray:
        rows = self.memory.download(self.history)[: self.drawn, :, 0]
        return rows[:, self.plan.cond].T.copy()
