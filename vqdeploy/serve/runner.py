"""One batch of rows from several requests, sampled on the one generation path (``runtime.generation``).

Sample b of a request draws from ``default_rng([seed, b])`` and the sampler works row by row, so a
request's rows in a shared batch get exactly the tokens and images that ``vqdeploy run`` gives it alone.
This module adds what a server needs around a batch: per-job progress, partial decodes, an early stop
once every job of the batch has gone, and the hand-back of each job's rows.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vqdeploy.runtime.backends.base import Decoding
from vqdeploy.runtime.generation import Generator, Rows
from vqdeploy.serve.requests import GenerateRequest


class Abandoned(Exception):
    """Every request of a batch went away (disconnected or timed out): the batch stops early."""


@dataclass
class Job:
    """A request in the server: what to sample, and how its results and progress are reported.
    The callbacks are called from the batch runner's thread."""

    request: GenerateRequest
    on_progress: Callable[[int, int], None] = lambda done, total: None
    on_partial: Callable[[int, list[np.ndarray]], None] = lambda rows, images: None
    on_done: Callable[[Any], None] = lambda result: None  # a JobResult or an exception
    cancelled: threading.Event = field(default_factory=threading.Event)
    enqueued: float = field(default_factory=time.perf_counter)
    # filled in by the runner as its items finish
    done_tokens: int = 0
    parts: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    batches: list[int] = field(default_factory=list)  # rows of each batch its rows ran in (the access log)
    _sampling: Any = None

    @property
    def rows_per_sample(self) -> int:
        """Transformer rows one sample takes: two with classifier-free guidance (the batcher counts rows)."""
        return Generator.rows_per_sample(self.request.params)

    @property
    def sampling(self) -> Any:
        """The generation request (built once: rows of one job in several batches share it)."""
        if self._sampling is None:
            self._sampling = self.request.sampling()
        return self._sampling


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


class BatchRunner:
    """A ``Generator`` driven a batch of items at a time (one thread at a time: the batcher's)."""

    def __init__(self, generator: Generator) -> None:
        self.generator = generator
        self.backend = generator.backend
        self.info = generator.info
        self.max_batch = generator.max_batch

    @property
    def steps(self) -> int:
        """Tokens per sample at the trained size (a larger ``size`` samples more)."""
        h, w = self.info.first_stage.latent_grid
        return h * w

    def key(self, job: Job) -> Hashable:
        """Jobs with equal keys may share a batch."""
        return self.generator.batch_key(job.sampling)

    def run(self, items: list[Item]) -> dict[str, float]:
        """Sample every item's rows in one batch; each finished job gets ``on_done``. Returns timings."""
        rows = [Rows(it.job.sampling, it.first, it.count) for it in items]
        for it in items:
            it.job.batches.append(sum(i.count for i in items))
        starts: list[int] = []
        out = self.generator.run(rows, on_start=lambda steps, sliding, at: starts.extend(at),
                                 on_token=self._ticker(items, starts))
        for i, (it, r) in enumerate(zip(items, rows)):
            job = it.job
            job.parts[it.first] = out.part(i, r)
            if sum(len(p[1]) for p in job.parts.values()) == job.request.num_samples:
                firsts = sorted(job.parts)
                job.on_done(JobResult(np.clip(np.concatenate([job.parts[f][0] for f in firsts]), -1.0, 1.0),
                                      np.concatenate([job.parts[f][1] for f in firsts]), out.timings))
        return out.timings

    def _ticker(self, items: list[Item], starts: list[int]) -> Callable[[int, Decoding], None]:
        """The per-token callback: progress per job, partial decodes (raster order, the trained grid), and an
        early stop once every job of the batch has gone. ``starts``: each item's first row in the batch."""
        def tick(k: int, decoding: Decoding) -> None:
            if all(it.job.cancelled.is_set() for it in items):
                raise Abandoned()
            for it, row in zip(items, starts):
                job = it.job
                total = job.request.num_samples * self.steps_of(job.request)
                if not job.cancelled.is_set():
                    job.done_tokens += it.count
                    job.on_progress(job.done_tokens, total)
                    rows = self.partial_rows(job, k)
                    if rows is not None:
                        self.partial(job, decoding.tokens()[row : row + it.count], rows)

        return tick

    def steps_of(self, request: GenerateRequest) -> int:
        """Tokens per sample of ``request`` (its size, or the trained one)."""
        size = request.size
        if size is None:
            return self.steps
        f = self.info.first_stage.downsample_factor
        return (size[0] // f) * (size[1] // f)

    def partial_rows(self, job: Job, k: int) -> int | None:
        """The token rows to decode partially once ``k`` tokens per sample are drawn (``partial_every``), or None:
        only in raster order, from the sequential loop, at the trained grid, every N whole rows but the last."""
        every = job.request.partial_every
        if not every:
            return None
        h, w = self.info.first_stage.latent_grid
        raster = self.info.order is None and self.generator.decoding == "sequential"
        if raster and job.request.size is None and k % w == 0 and (k // w) % every == 0 and k < h * w:
            return k // w
        return None

    def partial(self, job: Job, done: np.ndarray, rows: int) -> None:
        """Decode the first ``rows`` token rows (the rest filled with token 0, then greyed out)."""
        h, w = self.info.first_stage.latent_grid
        tokens = np.zeros((done.shape[0], h * w), dtype=np.int64)
        tokens[:, : done.shape[1]] = done
        images = self.backend.decode(tokens.reshape(-1, h, w))
        cut = images.shape[2] * rows // h
        images[:, :, cut:] = 0.0
        job.on_partial(rows, list(images))
