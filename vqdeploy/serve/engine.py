"""One engine call for several requests: their rows share the transformer and decoder batches.

Sample b of a request draws from ``default_rng([seed, b])`` (``uniform_noise``) and the host sampler
works row by row, so a request's rows in a shared batch get exactly the tokens and images that
``vqdeploy run`` gives it alone. Each request's condition is encoded on its own (batch 1, as ``run``
does) and repeated over its rows; rows with different sampling params are drawn per group
(``RowParamsDecoding``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vqdeploy.runtime.generator import RowParamsDecoding, generate
from vqdeploy.runtime.pipeline import Pipeline
from vqdeploy.runtime.sampling import uniform_noise
from vqdeploy.serve.requests import GenerateRequest


class Abandoned(Exception):
    """Every request of a batch went away (disconnected or timed out): the batch stops early."""


@dataclass
class Job:
    """A request in the server: what to sample, and how its results and progress are reported.
    The callbacks are called from the engine thread."""

    request: GenerateRequest
    on_progress: Callable[[int, int], None] = lambda done, total: None
    on_partial: Callable[[int, list[np.ndarray]], None] = lambda rows, images: None
    on_done: Callable[[Any], None] = lambda result: None  # a JobResult or an exception
    cancelled: threading.Event = field(default_factory=threading.Event)
    enqueued: float = field(default_factory=time.perf_counter)
    # filled in by the engine as its items finish
    done_tokens: int = 0
    parts: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


@dataclass
class Item:
    """Rows ``first .. first + count - 1`` of a job (a request larger than a batch spans several items)."""

    job: Job
    first: int
    count: int


@dataclass
class JobResult:
    images: np.ndarray  # (N,C,H,W) in [-1,1]
    tokens: np.ndarray  # (N,h,w)
    timings: dict[str, float]


class Engine:
    """A pipeline's backend driven a batch of items at a time (one thread at a time: the engine thread)."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.backend = pipeline.backend
        self.info = pipeline.info
        self.grid = self.info.first_stage.latent_grid
        self.steps = self.grid[0] * self.grid[1]
        self.max_batch = max(1, min(self.backend.max_batch(g) for g in pipeline._graphs()))

    def run(self, items: list[Item]) -> dict[str, float]:
        """Sample every item's rows in one batch; each finished job gets ``on_done``. Returns timings."""
        t0 = time.perf_counter()
        cond_info = self.pipeline.cond
        prompts, noises, groups = [], [], {}  # groups: params -> row indices
        row = 0
        for it in items:
            req = it.job.request
            cond = cond_info.condition_tokens(self.backend, it.count, req.condition, req.class_id)
            prompts.append(cond.reshape(it.count, -1))
            noises.append(uniform_noise(req.seed, it.count, self.steps, it.first))
            groups.setdefault(req.params, []).extend(range(row, row + it.count))
            row += it.count
        prompt = np.concatenate(prompts)
        noise = np.concatenate(noises, axis=1)
        decoding = RowParamsDecoding(self.backend.transformer(), [(p, np.array(r)) for p, r in groups.items()], noise)
        t_encode = time.perf_counter() - t0
        tick = self._ticker(items, decoding)
        t = time.perf_counter()
        seq = generate(decoding, prompt, self.steps, tick)
        t_sampling = time.perf_counter() - t
        tokens = self.info.to_raster(seq, self.grid)  # undo the permuter, as the pipeline does
        t = time.perf_counter()
        images = self.backend.decode(tokens)
        t_decode = time.perf_counter() - t
        timings = {"cond_encoder": t_encode, "sampling": t_sampling, "decoder": t_decode}
        row = 0
        for it in items:
            job = it.job
            job.parts[it.first] = (images[row : row + it.count], tokens[row : row + it.count])
            row += it.count
            if sum(len(p[1]) for p in job.parts.values()) == job.request.num_samples:
                firsts = sorted(job.parts)
                job.on_done(JobResult(np.concatenate([job.parts[f][0] for f in firsts]),
                                      np.concatenate([job.parts[f][1] for f in firsts]), timings))
        return timings

    def _ticker(self, items: list[Item], decoding: RowParamsDecoding) -> Callable[[int], None]:
        """The per-token callback: progress per job, partial decodes, and an early stop once every
        job of the batch has gone."""
        h, w = self.grid
        drawn = [0]
        raster = self.info.order is None  # partial images only make sense in raster order

        def tick(n: int) -> None:
            drawn[0] += n
            k = drawn[0]
            if all(it.job.cancelled.is_set() for it in items):
                raise Abandoned()
            row = 0
            for it in items:
                job = it.job
                if not job.cancelled.is_set():
                    job.done_tokens += it.count
                    job.on_progress(job.done_tokens, job.request.num_samples * self.steps)
                    every = job.request.partial_every
                    if raster and every and k % w == 0 and (k // w) % every == 0 and k < self.steps:
                        self._partial(job, decoding.tokens()[row : row + it.count], k // w)
                row += it.count

        return tick

    def _partial(self, job: Job, done: np.ndarray, rows: int) -> None:
        """Decode the first ``rows`` token rows (the rest filled with token 0, then greyed out)."""
        h, w = self.grid
        tokens = np.zeros((done.shape[0], h * w), dtype=np.int64)
        tokens[:, : done.shape[1]] = done
        images = self.backend.decode(tokens.reshape(-1, h, w))
        cut = images.shape[2] * rows // h
        images[:, :, cut:] = 0.0
        job.on_partial(rows, list(images))

