"""Continuous batching (issue 24, item 3): samples join the running batch at step boundaries, at their own
positions, and get exactly the tokens and images `vqdeploy run` gives them alone; requests that cannot run as
rows wait for the running rows, then run as a batch of their own. The scheduler is driven directly (no HTTP), so
that a request joins at a known step; tests/test_serve.py covers the HTTP side with both kinds of batching."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from serve_support import SKETCHES

from vqdeploy.conditions.base import ImageInput
from vqdeploy.images import load_condition
from vqdeploy.runtime.pipeline import Pipeline
from vqdeploy.runtime.sampling import SamplingParams
from vqdeploy.serve.continuous import ContinuousBatcher
from vqdeploy.serve.requests import GenerateRequest
from vqdeploy.serve.runner import BatchRunner, Job


@pytest.fixture(scope="module")
def pipeline(demo_export: Path) -> Pipeline:
    return Pipeline.from_artifacts(demo_export, "onnxruntime")


class Watched:
    """A job whose result and partial decodes are recorded; ``then`` runs once, on the batch thread, when the job
    has drawn ``at`` tokens (all samples together): a request submitted there joins at the next step boundary."""

    def __init__(self, request: GenerateRequest, at: int = 0, then: Callable[[], None] | None = None) -> None:
        self.done = threading.Event()
        self.result: Any = None
        self.partials: list[int] = []

        def progress(done: int, total: int) -> None:
            nonlocal then
            if done >= at and then is not None:
                then, call = None, then
                call()

        def finish(result: Any) -> None:
            self.result = result
            self.done.set()

        self.job = Job(request, progress, lambda rows, images: self.partials.append(rows), finish)

    def wait(self) -> Any:
        assert self.done.wait(300), "the request did not finish"
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


def sketch(pipeline: Pipeline, i: int, size: int = 64) -> ImageInput:
    return ImageInput(load_condition(SKETCHES[i], pipeline.cond.preprocessing, (size, size)))


def alone(pipeline: Pipeline, request: GenerateRequest) -> Any:
    assert isinstance(request.condition, ImageInput)
    return pipeline(request.condition.array, num_samples=request.num_samples, params=request.params, seed=request.seed,
                    size=request.size)


def test_a_request_that_joins_mid_batch_gets_the_image_it_gets_alone(pipeline: Pipeline) -> None:
    """A starts (2 samples, partial decodes every 2 token rows); B joins after A has drawn 20 tokens per sample,
    C after B has drawn 10, so the three run at different positions in one batch; A leaves first, and C keeps
    running with B. Each gets the tokens and images of its run alone, and each ran in steps shared with others."""
    batcher = ContinuousBatcher(BatchRunner(pipeline.generator), max_batch=8)
    c = Watched(GenerateRequest(seed=11, num_samples=3, condition=sketch(pipeline, 2),
                                params=SamplingParams(top_p=0.9)))
    b = Watched(GenerateRequest(seed=7, num_samples=1, condition=sketch(pipeline, 1),
                                params=SamplingParams(temperature=0.7, top_k=20)), at=10,
                then=lambda: batcher.submit(c.job))
    a = Watched(GenerateRequest(seed=3, num_samples=2, condition=sketch(pipeline, 0), partial_every=2), at=40,
                then=lambda: batcher.submit(b.job))
    try:
        batcher.submit(a.job)
        results = [w.wait() for w in (a, b, c)]
    finally:
        batcher.stop()
    for w, got in zip((a, b, c), results):
        ref = alone(pipeline, w.job.request)
        assert np.array_equal(got.tokens, ref.tokens)
        assert np.array_equal(np.clip(got.images, -1, 1), np.clip(ref.images, -1, 1))
    # rows running once each joined: B joined A's two, C joined A's and B's
    assert (a.job.batches, b.job.batches, c.job.batches) == ([2], [3], [6])
    h = pipeline.info.first_stage.latent_grid[0]
    assert a.partials == list(range(2, h, 2))  # A's samples joined together: its partials, every 2 token rows


def test_requests_that_cannot_be_rows_run_after_the_running_ones(pipeline: Pipeline) -> None:
    """A larger size (a sliding window) cannot share the running batch: it waits for A's rows to finish and runs
    as a request-level batch; D, queued behind it, then runs as rows again. All three match their runs alone."""
    batcher = ContinuousBatcher(BatchRunner(pipeline.generator), max_batch=4)
    big = Watched(GenerateRequest(seed=2, num_samples=1, condition=sketch(pipeline, 3, 96)))
    d = Watched(GenerateRequest(seed=4, num_samples=2, condition=sketch(pipeline, 5)))
    a = Watched(GenerateRequest(seed=1, num_samples=1, condition=sketch(pipeline, 4)), at=5,
                then=lambda: (batcher.submit(big.job), batcher.submit(d.job)))
    try:
        batcher.submit(a.job)
        results = [w.wait() for w in (a, big, d)]
    finally:
        batcher.stop()
    for w, got in zip((a, big, d), results):
        ref = alone(pipeline, w.job.request)
        assert np.array_equal(got.tokens, ref.tokens)
        assert np.array_equal(np.clip(got.images, -1, 1), np.clip(ref.images, -1, 1))
    assert a.job.batches == [1] and big.job.batches == [1] and d.job.batches == [2]  # nobody overlapped the window


def test_a_cancelled_request_leaves_the_batch_and_the_others_go_on(pipeline: Pipeline) -> None:
    batcher = ContinuousBatcher(BatchRunner(pipeline.generator), max_batch=4)
    b = Watched(GenerateRequest(seed=6, num_samples=1, condition=sketch(pipeline, 1)))
    a = Watched(GenerateRequest(seed=5, num_samples=2, condition=sketch(pipeline, 0)), at=10,
                then=lambda: a.job.cancelled.set())  # the client goes away after 5 tokens per sample
    try:
        batcher.submit(a.job)
        batcher.submit(b.job)
        got = b.wait()
        assert a.done.wait(60) and type(a.result).__name__ == "Abandoned"
    finally:
        batcher.stop()
    assert batcher.running_rows() == 0
    assert np.array_equal(got.tokens, alone(pipeline, b.job.request).tokens)


def test_over_http_concurrent_requests_get_the_images_they_get_alone(pipeline: Pipeline, demo_export: Path) -> None:
    """A server with continuous batching: requests sent at once, with different settings, each get the
    tokens and images of the pipeline alone."""
    httpx = pytest.importorskip("httpx")
    from concurrent.futures import ThreadPoolExecutor

    from serve_support import decode_png, running, sketch_bytes

    from vqdeploy.images import to_uint8
    from vqdeploy.serve.app import ServeConfig, create_app

    requests = [(0, {"seed": "3", "num_samples": "2"}), (1, {"seed": "5", "temperature": "0.7", "top_k": "9"}),
                (2, {"seed": "8", "num_samples": "3", "top_p": "0.9"})]
    app = create_app(Pipeline.from_artifacts(demo_export, "onnxruntime"),
                     ServeConfig(max_batch=8, batching="continuous"))
    with running(app) as url, ThreadPoolExecutor(len(requests)) as pool:
        answers = list(pool.map(lambda r: httpx.post(f"{url}/v1/generate", timeout=120, data=r[1], files={
            "condition": ("s.png", sketch_bytes(r[0]), "image/png")}), requests))
        assert httpx.get(f"{url}/v1/model").json()["limits"]["max_batch"] == 8
    for (i, fields), answer in zip(requests, answers):
        assert answer.status_code == 200, answer.text
        body = answer.json()
        params = SamplingParams(float(fields.get("temperature", 1.0)), int(fields.get("top_k", 100)),
                                float(fields["top_p"]) if "top_p" in fields else None)
        ref = pipeline(sketch(pipeline, i).array, num_samples=int(fields.get("num_samples", 1)), params=params,
                       seed=int(fields["seed"]))
        assert np.array_equal(np.array(body["tokens"]), ref.tokens)
        assert np.array_equal(np.stack([decode_png(b) for b in body["images"]]), to_uint8(ref.images))
