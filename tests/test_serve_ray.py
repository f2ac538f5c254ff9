"""The serve application on Ray Serve, locally with 2 replicas (slow: Ray starts a small local cluster)."""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray.serve")
httpx = pytest.importorskip("httpx")

from serve_support import SKETCHES, sketch_bytes  # noqa: E402

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_url(demo_export: Path):
    import ray
    from ray import serve

    from vqdeploy.serve.ray_app import deployment

    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(deployment(str(demo_export), backend="onnxruntime", num_replicas=2, num_cpus=0.5),
                  name="vqdeploy", route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def test_two_replicas_answer_with_the_same_images_as_one_server(ray_url, demo_export):
    from serve_support import decode_png

    from vqdeploy.images import load_condition, to_uint8
    from vqdeploy.runtime.pipeline import Pipeline

    assert httpx.get(f"{ray_url}/healthz", timeout=30).json()["status"] == "ok"
    model = httpx.get(f"{ray_url}/v1/model", timeout=30).json()
    assert model["model"]["conditioning"]["kind"] == "image"

    def one(seed: int) -> httpx.Response:
        return httpx.post(f"{ray_url}/v1/generate", data={"seed": str(seed), "num_samples": "2"},
                          files={"condition": ("s.png", sketch_bytes(seed % len(SKETCHES)), "image/png")}, timeout=120)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, range(24)))
    assert [a.status_code for a in answers] == [200] * 24, [a.text[:200] for a in answers if a.status_code != 200]
    pids = {a.headers["x-vqdeploy-pid"] for a in answers}
    assert len(pids) == 2, f"expected both replicas to answer, got {pids}"
    reference = Pipeline.from_artifacts(demo_export, "onnxruntime")
    for seed in (0, 5):
        alone = reference(load_condition(SKETCHES[seed % len(SKETCHES)], reference.cond.preprocessing, (64, 64)),
                          num_samples=2, seed=seed)
        body = answers[seed].json()
        assert np.array_equal(np.array(body["tokens"]), alone.tokens)
        assert np.array_equal(np.stack([decode_png(b) for b in body["images"]]), to_uint8(alone.images))
    bad = httpx.post(f"{ray_url}/v1/generate", data={"seed": "-3"}, timeout=60)
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "seed"


def test_builder_refuses_unknown_arguments():
    from vqdeploy.serve.ray_app import build

    with pytest.raises(ValueError, match="replicas"):
        build({"artifacts": "a", "replicas": "2"})
