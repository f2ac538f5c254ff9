"""`vqdeploy serve` (issue 14): the endpoints on a real server on a free loopback port. Concurrent requests
share batches and still get exactly the images `vqdeploy run` gives each of them alone."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from serve_support import SKETCHES, decode_png, running, sketch_bytes  # noqa: E402

from vqdeploy.images import load_condition, to_uint8  # noqa: E402
from vqdeploy.runtime.pipeline import Pipeline  # noqa: E402
from vqdeploy.runtime.sampling import SamplingParams  # noqa: E402
from vqdeploy.serve.app import ServeConfig, create_app  # noqa: E402


@pytest.fixture(scope="module")
def url(demo_export: Path):
    # request-level batching with a long bounded wait, so that requests sent together surely share batches
    # (continuous batching: tests/test_serve_continuous.py)
    app = create_app(Pipeline.from_artifacts(demo_export, "onnxruntime"),
                     ServeConfig(max_wait_s=0.3, max_batch=8, batching="request"))
    with running(app) as base:
        yield base


@pytest.fixture(scope="module")
def reference(demo_export: Path) -> Pipeline:
    return Pipeline.from_artifacts(demo_export, "onnxruntime")


def post(base: str, files: dict | None = None, data: dict | None = None, **kw) -> httpx.Response:
    return httpx.post(f"{base}/v1/generate", files=files, data=data, timeout=120, **kw)


def metric(base: str, name: str) -> float:
    text = httpx.get(f"{base}/metrics").text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")
               or line.startswith(name + "{"))


REQUESTS = [  # (sketch, fields): different seeds, sample counts and sampling params, sent at once
    (0, {"seed": "3", "num_samples": "2"}),
    (1, {"seed": "3", "num_samples": "1", "temperature": "0.7"}),
    (2, {"seed": "11", "num_samples": "3", "top_k": "5", "top_p": "0.9"}),
    (3, {"seed": "0", "num_samples": "1", "temperature": "0"}),
    (4, {"num_samples": "4"}),  # defaults: seed 0, temperature 1, top-k 100
]


def test_concurrent_requests_share_batches_and_match_the_pipeline(url, reference):
    before_batches = metric(url, "vqdeploy_batch_requests_count")
    before_requests = metric(url, "vqdeploy_batch_requests_sum")
    with ThreadPoolExecutor(len(REQUESTS)) as pool:
        answers = list(pool.map(lambda r: post(url, {"condition": ("s.png", sketch_bytes(r[0]), "image/png")}, r[1]),
                                REQUESTS))
    for (i, fields), answer in zip(REQUESTS, answers):
        assert answer.status_code == 200, answer.text
        body = answer.json()
        n = int(fields.get("num_samples", 1))
        seed = int(fields.get("seed", 0))
        params = SamplingParams(float(fields.get("temperature", 1.0)), int(fields.get("top_k", 100)),
                                float(fields["top_p"]) if "top_p" in fields else None)
        alone = reference(load_condition(SKETCHES[i], reference.cond.preprocessing, (64, 64)), num_samples=n,
                          params=params, seed=seed)
        assert body["seed"] == seed and len(body["images"]) == n
        assert np.array_equal(np.array(body["tokens"]), alone.tokens)
        got = np.stack([decode_png(b) for b in body["images"]])
        assert np.array_equal(got, to_uint8(alone.images))
    batches = metric(url, "vqdeploy_batch_requests_count") - before_batches
    shared = metric(url, "vqdeploy_batch_requests_sum") - before_requests
    assert shared == len(REQUESTS) and batches < len(REQUESTS), "no two requests shared a batch"


def test_same_seed_same_images_as_vqdeploy_run(url, demo_export, tmp_path):
    out = tmp_path / "s.png"
    proc = subprocess.run([sys.executable, "-m", "vqdeploy", "run", str(SKETCHES[5]), "--artifacts", str(demo_export),
                           "--backend", "onnxruntime", "--num-samples", "2", "--seed", "42", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    from PIL import Image

    body = post(url, {"condition": ("s.png", sketch_bytes(5), "image/png")}, {"seed": "42", "num_samples": "2"}).json()
    for k in range(2):
        assert np.array_equal(decode_png(body["images"][k]), np.asarray(Image.open(tmp_path / f"s-{k}.png")))


def test_json_body_same_as_multipart(url):
    import base64

    multipart = post(url, {"condition": ("s.png", sketch_bytes(0), "image/png")}, {"seed": "9"}).json()
    data = {"seed": 9, "condition": "data:image/png;base64," + base64.b64encode(sketch_bytes(0)).decode()}
    as_json = httpx.post(f"{url}/v1/generate", json=data, timeout=120).json()
    assert as_json["tokens"] == multipart["tokens"] and as_json["images"] == multipart["images"]


def test_model_health_and_metrics(url, demo_export):
    model = httpx.get(f"{url}/v1/model").json()
    manifest = json.loads((demo_export / "manifest.json").read_text())
    assert model["model"]["conditioning"]["kind"] == manifest["model"]["conditioning"]["kind"] == "image"
    assert model["model"]["conditioning"]["resolution"] == manifest["model"]["conditioning"]["resolution"]
    assert model["model"]["transformer"]["vocab_size"] == manifest["model"]["transformer"]["vocab_size"]
    assert model["defaults"] == {"seed": 0, "num_samples": 1, "temperature": 1.0, "top_k": 100, "top_p": None}
    assert model["limits"]["max_batch"] == 8
    health = httpx.get(f"{url}/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    post(url, {"condition": ("s.png", sketch_bytes(0), "image/png")})
    text = httpx.get(f"{url}/metrics").text
    for name in ("vqdeploy_requests_total", "vqdeploy_queue_depth", "vqdeploy_batch_samples_bucket",
                 "vqdeploy_tokens_total", "vqdeploy_tokens_per_second", "vqdeploy_request_latency_seconds_bucket",
                 "vqdeploy_queue_wait_seconds_bucket"):
        assert name in text, name
    assert metric(url, "vqdeploy_tokens_total") >= 64
    assert 'vqdeploy_requests_total{code="200",endpoint="/v1/generate"}' in text


def events(text: str) -> list[tuple[str, dict]]:
    out = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":"))
        if lines:
            out.append((lines["event"], json.loads(lines["data"])))
    return out


def test_stream_reports_progress_partials_and_the_same_result(url):
    files = {"condition": ("s.png", sketch_bytes(2), "image/png")}
    fields = {"seed": "5", "num_samples": "2", "partial_every": "2"}
    with httpx.stream("POST", f"{url}/v1/generate/stream", files=files, data=fields, timeout=120) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        got = events(r.read().decode())
    kinds = [k for k, _ in got]
    assert kinds[0] == "queued" and kinds[-1] == "result" and "progress" in kinds
    done = [d["done"] for k, d in got if k == "progress"]
    assert done == sorted(done) and done[-1] == 2 * 64
    partial = [d for k, d in got if k == "partial"]
    assert [p["rows"] for p in partial] == [2, 4, 6] and len(partial[0]["images"]) == 2
    plain = post(url, files, {"seed": "5", "num_samples": "2"}).json()
    assert got[-1][1]["tokens"] == plain["tokens"] and got[-1][1]["images"] == plain["images"]


def test_stream_errors_before_streaming_are_json(url):
    r = httpx.post(f"{url}/v1/generate/stream", data={"seed": "x"}, files={"condition": ("s.png", sketch_bytes(0))})
    assert r.status_code == 400 and r.json()["error"]["field"] == "seed"


def test_page_is_served(url):
    r = httpx.get(f"{url}/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "/v1/generate/stream" in r.text and "/v1/model" in r.text


def test_cli_serve_starts_on_a_free_port(demo_export):
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "vqdeploy", "serve", "--artifacts", str(demo_export), "--backend",
                             "onnxruntime", "--port", str(port)], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stderr.read()
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.2)
        assert r.json()["backend"] == "onnxruntime"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_cli_serve_refuses_bad_options_in_one_line(demo_export):
    proc = subprocess.run([sys.executable, "-m", "vqdeploy", "serve", "--artifacts", str(demo_export),
                           "--max-queue", "0"], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode != 0 and proc.stderr.strip().startswith("error: --max-queue")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_a_request_larger_than_a_batch_spans_batches_with_the_same_images(url, reference):
    body = post(url, {"condition": ("s.png", sketch_bytes(6), "image/png")}, {"seed": "8", "num_samples": "11"}).json()
    alone = reference(load_condition(SKETCHES[6], reference.cond.preprocessing, (64, 64)), num_samples=11, seed=8)
    assert np.array_equal(np.array(body["tokens"]), alone.tokens)


def test_vqdeploy_imports_and_runs_without_the_serve_extra():
    code = ("import sys, vqdeploy.cli; "
            "assert not any(m in sys.modules for m in ('starlette', 'uvicorn', 'prometheus_client', 'ray')); "
            "sys.modules['uvicorn'] = None; sys.argv = ['vqdeploy', 'serve', '--artifacts', 'nowhere']; "
            "vqdeploy.cli.main()")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1 and proc.stderr.strip() == (
        "error: serve needs its extra: pip install 'vqdeploy[serve]' (uvicorn is missing)"), proc.stderr


def test_serve_samples_with_the_graph_sampler_and_a_larger_size_like_the_pipeline(demo_export):
    """`serve` is on the one generation path: --sampler graph (per-request settings drawn on the sampler graph,
    rows of one setting together) and a `size` field (sliding window) give what the pipeline gives."""
    pipe = Pipeline.from_artifacts(demo_export, "onnxruntime", sampler="graph")
    app = create_app(Pipeline.from_artifacts(demo_export, "onnxruntime", sampler="graph"),
                     ServeConfig(max_wait_s=0.3, max_batch=8))
    requests = [(0, {"seed": "3", "num_samples": "2"}), (1, {"seed": "4", "num_samples": "1", "temperature": "0.7"}),
                (2, {"seed": "5", "num_samples": "2"})]
    with running(app) as base:
        assert httpx.get(f"{base}/v1/model").json()["backend"]["sampler"] == "graph"
        with ThreadPoolExecutor(len(requests)) as pool:
            answers = list(pool.map(lambda r: post(base, {"condition": ("s.png", sketch_bytes(r[0]), "image/png")}, r[1]),
                                    requests))
        wide = post(base, {"condition": ("s.png", sketch_bytes(0), "image/png")}, {"seed": "6", "size": "96x64"})
    for (i, fields), answer in zip(requests, answers):
        assert answer.status_code == 200, answer.text
        alone = pipe(SKETCHES[i], num_samples=int(fields["num_samples"]), seed=int(fields["seed"]),
                     temperature=float(fields.get("temperature", 1.0)))
        assert np.array_equal(np.array(answer.json()["tokens"]), alone.tokens)
    assert wide.status_code == 200, wide.text
    alone = pipe(SKETCHES[0], seed=6, size="96x64")
    assert alone.sliding_window and np.array(wide.json()["tokens"]).shape == (1, 8, 12)
    assert np.array_equal(np.array(wide.json()["tokens"]), alone.tokens)
