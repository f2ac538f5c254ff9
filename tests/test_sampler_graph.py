"""sampler.onnx: the host sampler's rules as a graph, so that a graph-only loop (a C++ app with
engine files) samples the same tokens as ``vqdeploy run``."""

from __future__ import annotations

import numpy as np
import pytest

from vqdeploy.artifacts import Artifacts
from vqdeploy.parity.checks import check_sampler
from vqdeploy.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
from vqdeploy.runtime.decoding import sample_tokens
from vqdeploy.runtime.sampling import SamplingParams, uniform_noise


def test_sampler_graph_matches_host_sampler_on_many_draws(exported) -> None:
    _, out, manifest = exported("seg")
    backend = OnnxRuntimeBackend(Artifacts(out, manifest))
    report = check_sampler(backend, manifest.raw["model"]["transformer"]["vocab_size"], seed=3, rounds=60)
    # measured: 0 of 1440 draws differ (and 0 of 11200 with vocab 256), logits with many exact ties
    assert report.passed and report.metrics["draws"] == 1440 and report.metrics["differing"] == 0, report


def test_graph_only_loop_samples_what_the_host_sampler_samples(exported) -> None:
    """transformer -> sampler -> transformer, with no logits post-processing outside the graphs."""
    _, out, manifest = exported("seg")
    backend = OnnxRuntimeBackend(Artifacts(out, manifest))
    tr = manifest.raw["graphs"]["transformer"]
    rng = np.random.default_rng(0)
    batch, steps = 3, manifest.raw["model"]["tokens"]["image"]
    vocab = manifest.raw["model"]["transformer"]["vocab_size"]
    cond = rng.integers(0, vocab, (batch, manifest.raw["model"]["tokens"]["cond"]))
    params = SamplingParams(temperature=0.9, top_k=8, top_p=0.95)
    noise = uniform_noise(7, batch, steps)
    host = sample_tokens(backend.transformer(), cond, steps, params, noise)

    cache = {t["name"]: np.zeros([batch, *t["shape"][1:]], np.float32) for t in tr["inputs"][2:]}
    tokens = cond
    position = 0
    sampled = []
    for step in range(steps):
        outs = backend.run_graph("transformer", {"tokens": tokens, "position": np.full(batch, position), **cache})
        cache = {name.replace("cache_out", "cache"): v for name, v in outs.items()
                 if name.startswith("cache_out")}
        position += tokens.shape[1]
        tokens = backend.run_graph("sampler", {
            "logits": outs["logits"], "uniform": noise[step].astype(np.float32),
            "temperature": np.array([params.temperature], np.float32), "top_k": np.array([params.top_k], np.int64),
            "top_p": np.array([params.top_p], np.float32)})["tokens"]  # (B,1): the next step's input
        sampled.append(tokens[:, 0])
    assert np.array_equal(np.stack(sampled, axis=1), host)


def test_run_with_the_graph_sampler_gives_the_host_samplers_tokens(exported) -> None:
    from vqdeploy.parity.inputs import sample_condition
    from vqdeploy.runtime.pipeline import Pipeline

    _, out, manifest = exported("seg")
    backend = OnnxRuntimeBackend(Artifacts(out, manifest))
    condition = sample_condition(manifest.model, 0)
    for params in (SamplingParams(top_k=8), SamplingParams(temperature=1.2, top_k=None, top_p=0.8),
                   SamplingParams(top_k=1)):
        host = Pipeline(backend, manifest)(condition, num_samples=3, params=params, seed=5)
        graph = Pipeline(backend, manifest, sampler="graph")(condition, num_samples=3, params=params, seed=5)
        assert np.array_equal(host.tokens, graph.tokens)
        assert np.array_equal(host.images, graph.images)


def test_graph_sampler_needs_a_graph_backend_and_runs_the_sliding_window(exported) -> None:
    """One loop for both strategies: the sliding window (a larger grid) samples the same tokens with the
    sampler graph as with the host sampler."""
    from vqdeploy.conditions.coordinates import coord_map
    from vqdeploy.errors import InputError
    from vqdeploy.families import load_reference
    from vqdeploy.runtime.backends.torch_backend import TorchBackend
    from vqdeploy.runtime.pipeline import Pipeline

    _, out, manifest = exported("coord_identity")
    with pytest.raises(InputError, match="needs a graph backend"):
        Pipeline(TorchBackend(load_reference(manifest), manifest), manifest, sampler="graph")
    backend = OnnxRuntimeBackend(Artifacts(out, manifest))
    params = SamplingParams(temperature=1.1, top_k=6)
    graph = Pipeline(backend, manifest, sampler="graph")(coord_map(32, 32), num_samples=2, params=params, seed=4)
    host = Pipeline(backend, manifest)(coord_map(32, 32), num_samples=2, params=params, seed=4)
    assert graph.sliding_window and graph.tokens.shape[1:] != tuple(manifest.raw["model"]["first_stage"]["latent_grid"])
    assert np.array_equal(graph.tokens, host.tokens)


class _OneGraph:
    """What ``check_sampler`` needs of a backend, over one sampler.onnx under ONNX Runtime."""

    def __init__(self, path) -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def max_batch(self, graph: str) -> int:
        return 4

    def run_graph(self, graph: str, inputs: dict) -> dict:
        return dict(zip(["tokens"], self.session.run(None, inputs)))


# settings beyond check_sampler's: top-k at TensorRT's TopK limit and beyond it, top-p without top-k
LARGE_VOCAB_SETTINGS = (SamplingParams(1.0, 3840, 0.95), SamplingParams(1.0, 5000, None),
                        SamplingParams(0.8, 3841, 0.7), SamplingParams(1.0, None, 0.99))


@pytest.fixture(scope="module")
def large_samplers(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from vqdeploy.export.onnx_export import export_graph
    from vqdeploy.families.graph_spec import sampler_spec

    out = {}
    for vocab in (8192, 16384):
        path = tmp_path_factory.mktemp(f"sampler{vocab}") / "sampler.onnx"
        export_graph(sampler_spec(vocab, 16, 4), path)
        out[vocab] = path
    return out


@pytest.mark.parametrize("vocab", [8192, 16384])
def test_sampler_graph_matches_the_host_sampler_at_large_vocabularies(large_samplers, vocab: int) -> None:
    """Beyond 3840 tokens the graph sorts in rounds of TopK(3840): every setting stays exact."""
    import onnx

    from vqdeploy.runtime.sampling import next_tokens, sampler_inputs

    path = large_samplers[vocab]
    graph = _OneGraph(path)
    report = check_sampler(graph, vocab, seed=1, rounds=10)
    assert report.passed and report.metrics == {"draws": 240, "differing": 0}, report
    rng = np.random.default_rng([vocab, 1])
    draws = 0
    for _ in range(10):
        logits = (np.round(rng.normal(size=(4, 1, vocab)) * 6) / 2).astype(np.float32)  # many exact ties
        u = rng.random(4).astype(np.float32)
        for params in LARGE_VOCAB_SETTINGS:
            got = graph.run_graph("sampler", {"logits": logits, "uniform": u, **sampler_inputs(params, vocab)})
            assert np.array_equal(got["tokens"][:, 0], next_tokens(logits[:, -1], u, params)), params
            draws += 4
    assert draws == 160
    topk = [n for n in onnx.load(str(path)).graph.node if n.op_type == "TopK"]
    assert len(topk) == -(-vocab // 3840)  # one TopK(<= 3840) per round


@pytest.mark.parametrize("vocab", [8192, 16384])
def test_tensorrt_rtx_builds_the_large_vocabulary_sampler(large_samplers, vocab: int) -> None:
    trt = pytest.importorskip("tensorrt_rtx_bindings")
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    ok = parser.parse_from_file(str(large_samplers[vocab]))
    assert ok, [str(parser.get_error(i)) for i in range(parser.num_errors)]
    config = builder.create_builder_config()
    config.num_compute_capabilities = 1
    config.set_compute_capability(trt.ComputeCapability.SM86, 0)
    profile = builder.create_optimization_profile()
    profile.set_shape("logits", trt.Dims([1, 1, vocab]), trt.Dims([4, 1, vocab]), trt.Dims([4, 16, vocab]))
    profile.set_shape("uniform", trt.Dims([1]), trt.Dims([4]), trt.Dims([4]))
    config.add_optimization_profile(profile)
    assert builder.build_serialized_network(network, config) is not None
