"""LlamaGen exported (``vqdeploy export --ckpt gpt.pt --vq-ckpt vq.pt``): the graphs against LlamaGen's own outputs
(``../shared/reference/llamagen_c2i``) on ONNX Runtime, classifier-free guidance on every backend and sampler through
the one path (library, ``run``, ``serve``'s batcher, ``bench``), the same tokens for the same seed everywhere, top-k up
to the vocabulary with the guided sampler graph, TensorRT-RTX engines (SM86, ahead of time), and taming models
refusing ``--cfg-scale``.

The fp32 export is made once per session (``llamagen_export`` in conftest.py); measured at export (ONNX Runtime CPU
vs torch): indices identical, decoder max |diff| 8.5e-6, teacher-forced and step logits max |diff| 8.6e-6 (bound
1.3e-3), greedy tokens with and without guidance identical, both sampler graphs 0 differing draws. Jacobi decoding
samples it unguided and refuses guidance.
"""

from __future__ import annotations

import json
import math
import threading

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from llamagen_ref import needs_reference, reference

from vqdeploy.artifacts import Artifacts, read_manifest
from vqdeploy.cli import main
from vqdeploy.errors import InputError
from vqdeploy.runtime.generation import Request, Rows
from vqdeploy.runtime.pipeline import Pipeline
from vqdeploy.runtime.sampling import SamplingParams
from vqdeploy.serve.batcher import Batcher
from vqdeploy.serve.requests import FieldError, parse_fields, read_condition
from vqdeploy.serve.runner import BatchRunner, Job

pytestmark = needs_reference
GUIDED_STAGES = {"guided_greedy_tokens", "guided_sampler_graph"}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()  # the tiny model's steps spin with two threads on a loaded machine
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def art(llamagen_export):
    return llamagen_export  # conftest.py: exported once per session (test_cpp.py refuses it too)


@pytest.fixture(scope="module")
def ref():
    return reference()


@pytest.fixture(scope="module")
def pipes(art):
    return {"torch": Pipeline.from_artifacts(art, backend="torch"),
            "onnxruntime": Pipeline.from_artifacts(art, backend="onnxruntime"),
            "onnxruntime graph": Pipeline.from_artifacts(art, backend="onnxruntime", sampler="graph")}


def test_manifest_and_export_parity(art) -> None:
    m = read_manifest(art)
    raw = m.raw
    assert raw["model"]["family"] == "llamagen" and raw["source"]["vq_checkpoint"].endswith("vq.pt")
    assert raw["model"]["conditioning"] == {"kind": "class", "n_classes": 10, "tokens": 1, "null_class": 10}
    assert raw["model"]["first_stage"]["metric"] == "cosine"
    assert set(m.graphs) == {"encoder", "transformer", "transformer_valid_length", "sampler", "guided_sampler",
                             "decoder"}
    g = {t["name"]: t["shape"] for t in m.graphs["guided_sampler"]["inputs"] + m.graphs["guided_sampler"]["outputs"]}
    assert g == {"logits": ["batch*2", "tokens", 1024], "uniform": ["batch"], "temperature": [1], "top_k": [1],
                 "top_p": [1], "cfg_scale": [1], "tokens": ["batch*2", 1]}
    assert m.graphs["guided_sampler"]["dims"]["batch"]["max"] == 4  # half the transformer's 8 rows
    parity = raw["parity"]
    assert parity["passed"] and GUIDED_STAGES <= {s["stage"] for s in parity["stages"]}
    stages = {s["stage"]: s["metrics"] for s in parity["stages"]}
    assert stages["encoder"]["differing"] == 0 and stages["guided_greedy_tokens"]["identical"]
    assert stages["valid_length/guided_greedy_tokens"]["identical"]  # the valid-length twin, guided
    assert stages["guided_sampler_graph"]["differing"] == 0
    assert "guidance" in raw["sampling"]


def test_graphs_match_llamagen_on_onnxruntime(pipes, ref) -> None:
    be = pipes["onnxruntime"].backend
    np.testing.assert_array_equal(be.encode(ref["x"].numpy()), ref["indices"].numpy())
    assert float(np.abs(be.decode(ref["indices"].numpy()) - ref["decoded"].numpy()).max()) < 1e-4
    runner = be.transformer()
    prefix = ref["indices"].numpy().reshape(2, -1)[:, :-1]
    for cls, want in ((ref["labels"].numpy(), ref["logits_cond"]), (np.array([10, 10]), ref["logits_uncond"])):
        runner.reset(2)
        got = runner.forward(np.concatenate([cls[:, None], prefix], axis=1))
        assert float(np.abs(got - want.numpy()).max()) <= 1e-4 * float(want.abs().max())  # measured 8.6e-6 / 12.0


@pytest.mark.parametrize("name", ["torch", "onnxruntime", "onnxruntime graph"])
def test_greedy_cfg_tokens_equal_llamagen_generate_on_every_backend(pipes, ref, name: str) -> None:
    pipe = pipes[name]
    for i, label in enumerate(ref["labels"].tolist()):
        r = pipe(class_id=label, num_samples=2, top_k=1, cfg_scale=float(ref["cfg_scale"]))
        assert (r.tokens.reshape(2, -1) == ref["greedy_cfg"][i].numpy()).all()
        err = r.images[0] - np.clip(ref["greedy_img"][i].numpy(), -1, 1)
        assert 10 * math.log10(4.0 / max(float((err**2).mean()), 1e-30)) > 60


@pytest.mark.parametrize("params", [
    SamplingParams(1.0, 1024, 0.95, cfg_scale=4.0),  # top-k = the vocabulary
    SamplingParams(0.9, 600, None, cfg_scale=1.5, cfg_interval=20),
    SamplingParams(1.0, 50, None),  # unguided, on the same model
], ids=["topk-vocab", "interval", "unguided"])
def test_same_seed_same_tokens_on_every_backend(pipes, params: SamplingParams) -> None:
    tokens = {name: p(class_id=7, num_samples=3, params=params, seed=11).tokens for name, p in pipes.items()}
    for name, t in tokens.items():
        np.testing.assert_array_equal(t, tokens["onnxruntime"], err_msg=name)
    assert len({t.tobytes() for t in tokens["torch"]}) > 1  # the samples differ from each other


@pytest.mark.parametrize("sampler", ["host", "graph"])
def test_a_mixed_batch_gives_each_request_its_own_tokens(pipes, sampler: str) -> None:
    """Guided and unguided requests (different settings) in one batch, as serve's batcher makes them: each gets the
    tokens it gets alone (its rows, their null rows and the other request's rows are one transformer batch)."""
    pipe = pipes["onnxruntime" if sampler == "host" else "onnxruntime graph"]
    gen = pipe.generator
    cls = pipe.read(class_id=3)
    a = Request(cls, 2, SamplingParams(1.0, 100, None, cfg_scale=3.0, cfg_interval=10), seed=1)
    b = Request(pipe.read(class_id=5), 2, SamplingParams(1.0, 20, 0.9), seed=2)
    out = gen.run([Rows(a, 0, 2), Rows(b, 0, 2)])  # 2 x 2 + 2 = 6 transformer rows
    for i, (req, rows) in enumerate(((a, Rows(a, 0, 2)), (b, Rows(b, 0, 2)))):
        np.testing.assert_array_equal(out.part(i, rows)[1], gen.run([Rows(req, 0, 2)]).tokens)
    with pytest.raises(InputError, match=r"batch 10 \(a guided sample runs two rows\) exceeds"):
        gen.run([Rows(Request(cls, 4, a.params), 0, 4), Rows(b, 0, 2)])
    assert gen.batch_limit(a.params) == 4 and gen.batch_limit(b.params) == 8


def test_run_cli_with_guidance(art, tmp_path, ref) -> None:
    out = tmp_path / "s.png"
    res = CliRunner().invoke(main, ["run", "--artifacts", str(art), "--class", "3", "--cfg-scale", "2", "--top-k", "1",
                                    "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["sampling"]["cfg_scale"] == 2.0 and summary["sampling"]["cfg_interval"] == -1 and out.exists()
    res = CliRunner().invoke(main, ["run", "--artifacts", str(art), "--class", "3", "--cfg-interval", "4",
                                    "--out", str(out)])
    assert res.exit_code != 0 and res.output.strip().splitlines()[-1].startswith("error: --cfg-interval applies")
    res = CliRunner().invoke(main, ["run", "--artifacts", str(art), "--class", "3", "--cfg-scale", "0.5",
                                    "--out", str(out)])
    assert res.exit_code != 0 and "error: --cfg-scale must be >= 1.0" in res.output


def test_taming_models_refuse_cfg_scale(demo_export, tmp_path) -> None:
    res = CliRunner().invoke(main, ["run", str(tmp_path / "none.png"), "--artifacts", str(demo_export),
                                    "--cfg-scale", "2", "--out", str(tmp_path / "x.png")])
    lines = res.output.strip().splitlines()
    assert res.exit_code != 0 and len(lines) == 1 and lines[0].startswith("error: --cfg-scale: this model"), res.output
    assert "no null condition" in lines[0]
    pipe = Pipeline.from_artifacts(demo_export)
    with pytest.raises(InputError, match="cfg_scale: this model .* has no null condition"):
        pipe(num_samples=1, cfg_scale=2.0)
    with pytest.raises(FieldError, match="no null condition") as e:
        parse_fields({"cfg_scale": "2"}, pipe.info, 4)
    assert e.value.field == "cfg_scale"


def test_serve_batches_guided_requests(pipes, art) -> None:
    """serve's fields and batcher: a guided job of 3 samples with a batch of 8 rows runs as 2 + 1 samples (two rows
    each), and gets the library's tokens."""
    pipe = pipes["onnxruntime"]
    req = parse_fields({"class_id": "3", "cfg_scale": "2.5", "cfg_interval": "7", "top_k": "40", "seed": "4",
                        "num_samples": "3"}, pipe.info, 8)
    assert req.params == SamplingParams(1.0, 40, None, 2.5, 7)
    with pytest.raises(FieldError) as e:
        parse_fields({"class_id": "3", "cfg_scale": "nan"}, pipe.info, 8)
    assert e.value.field == "cfg_scale"
    read_condition(None, req, pipe.info)
    runner = BatchRunner(pipe.generator)
    batcher = Batcher(runner, max_batch=4, max_wait_s=0.0)
    done, results = threading.Event(), []
    job = Job(req, on_done=lambda r: (results.append(r), done.set()))
    try:
        batcher.submit(job)
        assert done.wait(120)
    finally:
        batcher.stop()
    assert sorted(job.parts) == [0, 2]  # items of 2 samples: 4 rows
    want = pipe(class_id=3, num_samples=3, params=req.params, seed=4).tokens
    np.testing.assert_array_equal(results[0].tokens, want)


def test_bench_with_guidance(art, tmp_path) -> None:
    from vqdeploy.bench.benchmark import run_bench

    result = run_bench(art, "onnxruntime", None, 2, 1, True, tmp_path / "b" / "bench.json", None, log=lambda m: None,
                       params=SamplingParams(1.0, 100, None, cfg_scale=4.0))
    rows = result["backends"]
    assert result["reference_row"] == "LlamaGen generate() loop, torch-cpu fp32" and result["reference_row"] in rows
    assert "onnxruntime-cpu fp32, sampler graph" in rows and result["sampling"]["cfg_scale"] == 4.0
    assert all(r["tokens_per_s"] > 0 for r in rows.values())


def test_build_trt_for_sm86(art, tmp_path) -> None:
    pytest.importorskip("tensorrt_rtx_bindings")
    import shutil

    from vqdeploy.trt.engines import BuildOptions, build_engines

    copy = shutil.copytree(art, tmp_path / "art")
    data = build_engines(Artifacts.open(copy), BuildOptions(target_cc=("8.6",),
                                                            graphs=["transformer", "guided_sampler"]),
                         echo=lambda m: None)
    engines = data["engines"]
    assert set(engines) == {"transformer", "guided_sampler"}
    logits = engines["guided_sampler"]["profiles"]["default"]["logits"]
    assert logits["min"][0] == 2 and logits["max"][0] == 8  # batch*2 for 1..4 samples
    assert engines["transformer"]["profile_order"] == ["prefill", "step", "window"]
    assert (copy / "engines" / "guided_sampler.engine").stat().st_size > 0


def test_jacobi_decoding_samples_unguided_and_refuses_guidance(art, pipes, tmp_path) -> None:
    """Jacobi decoding runs LlamaGen unguided (greedy: the sequential loop's tokens) and refuses classifier-free
    guidance with one line wherever it is asked for (library, run, bench, serve) instead of sampling unguided."""
    jacobi = Pipeline(pipes["onnxruntime"].backend, read_manifest(art), "host", "jacobi", 8)
    np.testing.assert_array_equal(jacobi(class_id=3, num_samples=2, top_k=1).tokens,
                                  pipes["onnxruntime"](class_id=3, num_samples=2, top_k=1).tokens)
    assert jacobi.generator.jacobi_stats.tokens_per_call > 1
    refusal = r"--decoding jacobi does not support classifier-free guidance \(cfg_scale 2\)"
    with pytest.raises(InputError, match=refusal):
        jacobi(class_id=3, cfg_scale=2.0)
    res = CliRunner().invoke(main, ["run", "--artifacts", str(art), "--class", "3", "--cfg-scale", "2", "--decoding",
                                    "jacobi", "--out", str(tmp_path / "j.png")])
    lines = res.output.strip().splitlines()
    assert res.exit_code != 0 and len(lines) == 1, res.output
    assert lines[0] == ("error: --decoding jacobi does not support classifier-free guidance (--cfg-scale 2): use "
                        "--decoding sequential, or --cfg-scale 1")
    from vqdeploy.bench.benchmark import run_bench

    with pytest.raises(InputError, match=r"does not support classifier-free guidance \(--cfg-scale 4\)"):
        run_bench(art, "onnxruntime", None, 1, 1, False, tmp_path / "bench.json", None, log=lambda m: None,
                  decoding="jacobi", params=SamplingParams(1.0, 100, None, cfg_scale=4.0))
    httpx = pytest.importorskip("httpx")
    from serve_support import running

    from vqdeploy.serve.app import create_app

    with running(create_app(jacobi)) as url:
        r = httpx.post(f"{url}/v1/generate", json={"class_id": 3, "cfg_scale": 2}, timeout=60)
        assert r.status_code == 400 and r.json()["error"]["field"] == "cfg_scale", r.text
        assert "does not support classifier-free guidance" in r.json()["error"]["message"]
        r = httpx.post(f"{url}/v1/generate", json={"class_id": 3, "top_k": 1}, timeout=60)
        assert r.status_code == 200, r.text
