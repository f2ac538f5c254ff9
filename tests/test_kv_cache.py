"""The in-place KV cache: buffers allocated once per generation, written in place (same data
pointers at every step), the same input shapes at every position, and logits equal to full
recomputation; on ONNX Runtime (the exported TensorScatter graph) and the torch backend."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pytest
import torch

from vqdeploy.artifacts import Artifacts
from vqdeploy.artifacts.manifest import read_manifest
from vqdeploy.errors import InputError
from vqdeploy.models.mingpt import GPT
from vqdeploy.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
from vqdeploy.runtime.backends.torch_backend import TorchTransformer
from vqdeploy.runtime.decoding import sample_tokens
from vqdeploy.runtime.sampling import SamplingParams, uniform_noise


class Recorder:
    """Wraps an executor: per call, the input shapes and the data pointer of every tensor."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[tuple[dict[str, tuple[int, ...]], dict[str, int], dict[str, int]]] = []

    def run(self, inputs: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor]) -> None:
        self.calls.append(({n: tuple(t.shape) for n, t in inputs.items()},
                           {n: t.ptr for n, t in inputs.items()}, {n: t.ptr for n, t in outputs.items()}))
        self.inner.run(inputs, outputs)


def record_transformer(backend: Any) -> dict[str, Recorder]:
    """Wraps the backend's transformer executors; ``"transformer/<profile>"`` -> its recorder."""
    recorders: dict[str, Recorder] = {}
    inner = backend.executor

    def executor(name: str, profile: str | None = None) -> Any:
        ex = inner(name, profile)
        return recorders.setdefault(f"{name}/{profile}", Recorder(ex)) if name == "transformer" else ex

    backend.executor = executor
    return recorders


def test_onnxruntime_cache_is_written_in_place_with_static_step_shapes(exported) -> None:
    _, out, manifest = exported("seg")
    backend = OnnxRuntimeBackend(Artifacts(out, manifest))
    graph = onnx.load(str(out / "transformer.onnx"), load_external_data=False)
    assert "TensorScatter" in {n.op_type for n in graph.graph.node}
    assert {o.domain: o.version for o in graph.opset_import}[""] == 24

    recorders = record_transformer(backend)
    runner = backend.transformer()
    tokens = manifest.raw["model"]["tokens"]
    batch, steps = 3, tokens["image"]
    cond = np.random.default_rng(0).integers(0, manifest.raw["model"]["transformer"]["vocab_size"], (batch, tokens["cond"]))
    params = SamplingParams(temperature=1.0, top_k=8)
    first = sample_tokens(runner, cond, steps, params, uniform_noise(3, batch, steps))
    buffers = [b.ptr for b in runner.buffers]
    second = sample_tokens(runner, cond, steps, params, uniform_noise(3, batch, steps))
    assert np.array_equal(first, second)  # stale entries of the last generation are masked
    assert [b.ptr for b in runner.buffers] == buffers  # allocated once, reused by the next generation

    prefill, step = recorders["transformer/prefill"].calls, recorders["transformer/step"].calls
    assert len(prefill) == 2 and len(step) == 2 * (steps - 1)
    cache_names = [n for n in prefill[0][0] if n.startswith("cache.")]
    for shapes, ins, outs in prefill + step:
        for name in cache_names:
            assert ins[name] == outs[name.replace("cache.", "cache_out.")]  # bound as input and output: in place
            assert ins[name] == prefill[0][1][name]  # the same buffer at every call
            assert shapes[name] == (batch, *manifest.raw["graphs"]["transformer"]["inputs"][2]["shape"][1:])
    assert all(shapes == step[0][0] for shapes, _, _ in step)  # identical step shapes at every position
    assert all(ins == step[0][1] and outs == step[0][2] for _, ins, outs in step)  # and identical addresses


def test_onnxruntime_steps_match_full_recomputation(exported) -> None:
    """Teacher-forced steps at every position against one prefill of the whole sequence."""
    _, out, manifest = exported("seg")
    runner = OnnxRuntimeBackend(Artifacts(out, manifest)).transformer()
    info = manifest.raw["model"]
    gpt = info["transformer"]
    seq = np.random.default_rng(1).integers(0, gpt["vocab_size"], (2, gpt["block_size"]))
    runner.reset(2)
    full = runner.forward(seq)
    n = info["tokens"]["cond"]
    runner.reset(2)
    parts = [runner.forward(seq[:, :n])]
    parts += [runner.forward(seq[:, i : i + 1]) for i in range(n, seq.shape[1])]
    assert runner.length == seq.shape[1]
    assert float(np.abs(np.concatenate(parts, axis=1) - full).max()) <= 1e-4 * max(1.0, float(np.abs(full).max()))


def test_torch_cache_is_allocated_once_and_written_in_place() -> None:
    torch.manual_seed(0)
    gpt = GPT(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=16, n_unmasked=4).eval()
    runner = TorchTransformer(gpt, torch.device("cpu"))
    cond = np.random.default_rng(2).integers(0, gpt.vocab_size, (2, 4))
    runner.reset(2)
    assert runner.cache is not None
    pointers = [(k.data_ptr(), v.data_ptr()) for k, v in runner.cache.layers]
    logits = [runner.forward(cond)]
    for k in range(6):
        logits.append(runner.forward(np.full((2, 1), k, np.int64)))
        assert [(a.data_ptr(), b.data_ptr()) for a, b in runner.cache.layers] == pointers
        assert runner.cache.layers[0][0].shape == (2, 2, gpt.block_size, 8)
    runner.reset(2)
    assert [(k.data_ptr(), v.data_ptr()) for k, v in runner.cache.layers] == pointers and runner.length == 0
    seq = np.concatenate([cond, np.arange(6)[None].repeat(2, 0)], axis=1)
    with torch.no_grad():
        full = gpt(torch.from_numpy(seq))[0].numpy()
    assert float(np.abs(np.concatenate(logits, axis=1) - full).max()) <= 1e-5 * max(1.0, float(np.abs(full).max()))


# --- CUDA graphs: what a captured step needs, checked on CPU ---------------------------------------
def test_device_side_position_writer_matches_the_eager_step() -> None:
    """The torch backend's captured step writes at a position tensor (``write_at``), so one capture
    serves every position: bit-identical logits and caches to the eager slice writes."""
    from vqdeploy.models.kv_cache import write_at

    torch.manual_seed(1)
    gpt = GPT(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=16, n_unmasked=4).eval()
    seq = torch.from_numpy(np.random.default_rng(3).integers(0, 40, (2, 12)))
    with torch.no_grad():
        eager = gpt.new_cache(2)
        eager_logits = [gpt.forward_cached(seq[:, :4], eager)[0]]
        tensor = gpt.new_cache(2)
        gpt.forward_cached(seq[:, :4], tensor)
        position = torch.zeros(2, dtype=torch.int64)  # one per row
        tensor_logits = [eager_logits[0]]
        for i in range(4, 12):
            eager_logits.append(gpt.forward_cached(seq[:, i : i + 1], eager)[0])
            position.fill_(i)  # a value in a tensor, as a replay sets it
            tensor_logits.append(gpt.forward_at(seq[:, i : i + 1], position, tensor.layers, write_at(position))[0])
    assert all(torch.equal(a, b) for a, b in zip(eager_logits, tensor_logits))
    assert all(torch.equal(a, b) for la, lb in zip(eager.layers, tensor.layers) for a, b in zip(la, lb))


def test_cuda_graph_steps_bind_the_same_addresses_with_either_sampler(exported) -> None:
    """With CUDA graphs on, every step of a generation binds the same buffers (the sampler graph writes
    the step's fixed token buffer, and the token is copied to the history), so one captured step
    replays at every position; and the tokens are unchanged."""
    from vqdeploy.runtime.decoding import generate, start_decoding

    _, out, manifest = exported("seg")
    backend = OnnxRuntimeBackend(Artifacts(out, manifest))
    backend.cuda_graphs = True  # the address discipline, on CPU (capture itself needs a GPU)
    recorders = record_transformer(backend)
    tokens = manifest.raw["model"]["tokens"]
    batch, steps = 2, tokens["image"]
    cond = np.random.default_rng(4).integers(0, manifest.raw["model"]["transformer"]["vocab_size"], (batch, tokens["cond"]))
    params = SamplingParams(temperature=1.0, top_k=8)
    noise = uniform_noise(9, batch, steps)
    host = sample_tokens(backend.transformer(), cond, steps, params, noise)
    device = generate(start_decoding(backend, "graph", params, noise), cond, steps)
    assert np.array_equal(host, device)
    step = recorders["transformer/step"].calls
    assert len(step) == 2 * (steps - 1)
    assert all(ins == step[0][1] and outs == step[0][2] for _, ins, outs in step)


def test_onnxruntime_captures_the_step_per_batch_and_never_the_prefill() -> None:
    """``gpu_graph_id``: one captured graph per batch size (its buffers), -1 (uncaptured) for the prefill,
    nothing for sessions that do not capture."""
    import onnxruntime

    from vqdeploy.runtime.backends.buffers import HostMemory
    from vqdeploy.runtime.backends.onnxruntime_backend import OrtExecutor

    mem = HostMemory()
    ex = OrtExecutor(None, "cuda", 0, "transformer", onnxruntime, capture=False)
    for batch in (1, 4):
        inputs = {"tokens": mem.empty((batch, 1), "int64")}
        assert ex.profile(True).run_options(inputs).get_run_config_entry("gpu_graph_id") == str(batch)
        assert ex.profile(False).run_options(inputs).get_run_config_entry("gpu_graph_id") == "-1"
    plain = OrtExecutor(None, "cpu", 0, "decoder", onnxruntime)
    assert plain.profile(True) is plain and plain.run_options({}) is None


def test_cuda_graphs_need_a_cuda_device(exported) -> None:
    import pytest

    from vqdeploy.errors import BackendError

    _, out, manifest = exported("seg")
    with pytest.raises(BackendError, match="CUDA graphs need a CUDA device"):
        OnnxRuntimeBackend(Artifacts(out, manifest), "cpu", cuda_graphs=True)
    with pytest.raises(BackendError, match="CUDA graphs need a CUDA device"):
        TorchTransformer(GPT(vocab_size=8, block_size=4, n_layer=1, n_head=1, n_embd=4), torch.device("cpu"), True)


# --- a position per row: rows at different positions in one batch --------------------------------
def staggered(runner: Any, seqs: np.ndarray, prompt: int, join: int) -> list[list[np.ndarray]]:
    """Row 0 prefills ``prompt`` tokens and steps alone (a batch of one) ``join`` times; then row 1 prefills by
    itself on its own cache row while row 0 waits, and both step together, each at its own position. Returns each
    row's logits, one (V,) array per token position."""
    runner.reset(2)
    out: list[list[np.ndarray]] = [[], []]
    out[0] += list(runner.forward(seqs[:1, :prompt])[0])
    for i in range(prompt, prompt + join):
        out[0].append(runner.forward(seqs[:1, i : i + 1])[0, 0])
    out[1] += list(runner.forward(seqs[1:, :prompt], first=1)[0])
    assert list(runner.lengths) == [prompt + join, prompt]
    for k in range(seqs.shape[1] - prompt - join):
        step = np.stack([seqs[0, prompt + join + k], seqs[1, prompt + k]])[:, None]
        logits = runner.forward(step)
        out[0].append(logits[0, 0])
        out[1].append(logits[1, 0])
    return out


def alone(runner: Any, seq: np.ndarray, prompt: int) -> list[np.ndarray]:
    """One row by itself: the prefill, then one token per step."""
    runner.reset(1)
    out = list(runner.forward(seq[None, :prompt])[0])
    for i in range(prompt, len(seq)):
        out.append(runner.forward(seq[None, i : i + 1])[0, 0])
    return out


def assert_as_alone(runner: Any, seqs: np.ndarray, joined: list[list[np.ndarray]], prompt: int, rtol: float) -> None:
    """Each sequence's logits in a shared batch (``joined``) equal its run alone, position for position."""
    for row in range(len(seqs)):
        got = np.stack(joined[row])
        ref = np.stack(alone(runner, seqs[row], prompt))[: len(got)]
        assert got.shape == ref.shape
        err = float(np.abs(got - ref).max())
        assert err <= rtol * max(1.0, float(np.abs(ref).max())), (row, err)
        assert np.array_equal(got.argmax(-1), ref.argmax(-1))


def check_rows_alone(runner: Any, vocab: int, prompt: int, length: int, rtol: float) -> None:
    seqs = np.random.default_rng(5).integers(0, vocab, (2, length))
    joined = staggered(runner, seqs, prompt, join=3)
    assert [len(j) for j in joined] == [length, length - 3]  # row 1 joined 3 steps late: that many fewer positions
    assert_as_alone(runner, seqs, joined, prompt, rtol)


def test_rows_at_different_positions_give_what_they_would_alone_torch() -> None:
    """taming's minGPT (an ``n_unmasked`` block over the prompt) and LlamaGen's GPT (per-row rotary rows and the
    class-token embedding) on the torch runner: row 1 joins three steps after row 0, and every logit of each row
    equals that row's run alone. 1e-5: batch-1 and batch-2 matmuls round differently (measured up to 2e-7 here)."""
    from vqdeploy.families.llamagen.gpt import Transformer

    torch.manual_seed(2)
    gpt = GPT(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=16, n_unmasked=4).eval()
    check_rows_alone(TorchTransformer(gpt, torch.device("cpu")), 40, prompt=4, length=14, rtol=1e-5)
    llama = Transformer(dim=16, n_layer=2, n_head=2, vocab_size=40, class_rows=11, hidden=32, block_size=16).eval()
    with torch.no_grad():
        for p in llama.parameters():
            p.normal_(0, 0.3)
    check_rows_alone(TorchTransformer(llama, torch.device("cpu")), 10, prompt=1, length=14, rtol=1e-5)


def test_rows_at_different_positions_give_what_they_would_alone_onnxruntime(exported) -> None:
    """The exported graph (per-row TensorScatter write indices, mask and position embedding) on ONNX Runtime:
    the same staggered schedule, bound to one cache; each row's logits equal its run alone, and rows at different
    positions bind one position buffer per row."""
    _, out, manifest = exported("seg")
    backend = OnnxRuntimeBackend(Artifacts(out, manifest))
    recorders = record_transformer(backend)
    tokens = manifest.raw["model"]["tokens"]
    vocab = manifest.raw["model"]["transformer"]["vocab_size"]
    check_rows_alone(backend.transformer(), vocab, prompt=tokens["cond"], length=tokens["cond"] + 8, rtol=1e-5)
    steps = [shapes for shapes, _, _ in recorders["transformer/step"].calls]
    assert {s["position"] for s in steps} == {(1,), (2,)}


# --- moving a row: serve's continuous batching packs its rows low ----------------------------------
def moved(runner: Any, seqs: np.ndarray, prompt: int) -> list[list[np.ndarray]]:
    """Row 0 prefills and takes one step; row 2 prefills on its own cache row (row 1 is free); then row 2 moves
    into row 1, and rows 0-1 step together. Returns each sequence's logits, one (V,) array per position."""
    runner.reset(3)
    out: list[list[np.ndarray]] = [[], []]
    out[0] += list(runner.forward(seqs[:1, :prompt])[0])
    out[0].append(runner.forward(seqs[:1, prompt : prompt + 1])[0, 0])
    out[1] += list(runner.forward(seqs[1:, :prompt], first=2)[0])
    runner.move(2, 1)
    assert list(runner.lengths) == [prompt + 1, prompt, 0]
    for k in range(seqs.shape[1] - prompt - 1):
        logits = runner.forward(np.stack([seqs[0, prompt + 1 + k], seqs[1, prompt + k]])[:, None])
        out[0].append(logits[0, 0])
        out[1].append(logits[1, 0])
    return out


def check_moved_rows_alone(runner: Any, vocab: int, prompt: int, length: int, rtol: float) -> None:
    seqs = np.random.default_rng(7).integers(0, vocab, (2, length))
    joined = moved(runner, seqs, prompt)
    assert [len(j) for j in joined] == [length, length - 1]  # the second sequence started one step late
    assert_as_alone(runner, seqs, joined, prompt, rtol)
    with pytest.raises(InputError, match="cannot move row 1 to row 1"):
        runner.move(1, 1)


def test_a_moved_row_gives_what_it_would_alone_torch() -> None:
    """Row 2's cache moved into row 1 between steps: every later logit equals its run alone (1e-5, as above)."""
    torch.manual_seed(3)
    gpt = GPT(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=16, n_unmasked=4).eval()
    check_moved_rows_alone(TorchTransformer(gpt, torch.device("cpu")), 40, prompt=4, length=14, rtol=1e-5)


def test_a_moved_row_gives_what_it_would_alone_onnxruntime(exported) -> None:
    """The same on ONNX Runtime's buffers (a device-to-device copy of every layer's key and value row)."""
    _, out, manifest = exported("seg")
    backend = OnnxRuntimeBackend(Artifacts(out, manifest))
    tokens = manifest.raw["model"]["tokens"]
    vocab = manifest.raw["model"]["transformer"]["vocab_size"]
    check_moved_rows_alone(backend.transformer(), vocab, prompt=tokens["cond"], length=tokens["cond"] + 8, rtol=1e-5)


class _CountingSession:
    """An ONNX Runtime session that counts the IO bindings made on it."""

    def __init__(self, session: Any) -> None:
        self.session, self.made = session, 0

    def io_binding(self) -> Any:
        self.made += 1
        return self.session.io_binding()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.session, name)


def test_onnxruntime_binds_a_steps_buffers_once(demo_export) -> None:
    """A step binds the same buffers every time, so the executor makes its IO binding once and reuses it; other
    addresses (a larger batch's cache) get bindings of their own, and what a kept binding gives is what fresh ones
    gave."""
    manifest = read_manifest(demo_export)
    tokens = manifest.raw["model"]["tokens"]
    vocab = manifest.raw["model"]["transformer"]["vocab_size"]
    cond = np.random.default_rng(0).integers(0, vocab, (4, tokens["cond"]))
    params = SamplingParams(temperature=1.0, top_k=8)
    backend = OnnxRuntimeBackend(Artifacts(demo_export, manifest))
    runner = backend.transformer()

    def generate(batch: int) -> np.ndarray:
        runner.reset(batch)
        return sample_tokens(runner, cond[:batch], tokens["image"], params, uniform_noise(5, batch, tokens["image"]))

    first = generate(2)  # fresh bindings: one for the prefill, one for the steps
    opened = set(backend._executors)
    for ex in backend._executors.values():
        ex.session = _CountingSession(ex.session)
    assert np.array_equal(generate(2), first)
    assert {n: ex.session.made for n, ex in backend._executors.items()} == dict.fromkeys(opened, 0)
    generate(4)  # a larger cache: new addresses
    made = sum(ex.session.made for ex in backend._executors.values())
    assert made == 2, made  # its prefill and its step
    assert np.array_equal(generate(2), first)  # the batch-2 views of the new cache: bound anew, same tokens
