"""Request-level dynamic batching: one engine thread, a bounded queue, a bounded wait.

The batch thread takes the oldest waiting job, waits at most ``max_wait_s`` (from that job's arrival)
for more rows, then runs up to ``max_batch`` rows of the waiting jobs that may share its batch (the same
image size) as one batch; jobs that arrive meanwhile form the next batch. ``serve --batching request``; the
default, continuous batching at step granularity, is ``serve/continuous.py``.

Sync and thread-based, so the Starlette app and the Ray Serve replicas share it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from vqdeploy.serve.runner import Abandoned, BatchRunner, Item, Job


class QueueFull(Exception):
    """More jobs are waiting than the queue holds: the caller answers 429 with ``retry_after`` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the server is busy: {retry_after}s")
        self.retry_after = retry_after


class EngineThread:
    """The one engine thread of a batcher: started on first use, stopped (woken and joined) at shutdown; a
    subclass runs its scheduling in ``_loop``, waiting on ``_cv`` until ``_stop``."""

    thread_name = "vqdeploy-engine"

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None

    def _loop(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name=self.thread_name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None


class Batcher(EngineThread):
    thread_name = "vqdeploy-batches"

    def __init__(self, runner: BatchRunner, max_batch: int | None = None, max_wait_s: float = 0.02, max_queue: int = 32,
                 on_batch: Callable[[list[Item], dict[str, float]], None] | None = None) -> None:
        self.runner = runner
        self.max_batch = min(max_batch or runner.max_batch, runner.max_batch)
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.on_batch = on_batch
        super().__init__()
        self._pending: deque[Item] = deque()
        self._batch_s = 0.0  # the last batch's duration (Retry-After estimate)

    # -- the caller's side (any thread) --------------------------------------------------------------
    def submit(self, job: Job) -> None:
        """Queue a job (its rows split into items of at most ``max_batch``); ``QueueFull`` when full."""
        self.start()  # where no ASGI lifespan ran (a mounted app, e.g. on Ray Serve)
        with self._cv:
            if self.waiting_jobs() >= self.max_queue:
                batches = 1 + sum(it.count for it in self._pending) // self.max_batch
                raise QueueFull(max(1, round(batches * max(self._batch_s, 0.1) + 0.5)))
            n = job.request.num_samples
            per_item = max(1, self.max_batch // job.rows_per_sample)  # a guided sample takes two rows
            for first in range(0, n, per_item):
                self._pending.append(Item(job, first, min(per_item, n - first)))
            self._cv.notify_all()

    def waiting_jobs(self) -> int:
        return len({id(it.job) for it in self._pending})

    def waiting_rows(self) -> int:
        return sum(it.count for it in self._pending)

    # -- the batch thread ----------------------------------------------------------------------------
    def _take(self) -> list[Item] | None:
        """The next batch: wait for a job, then for company (bounded), dropping cancelled jobs."""
        with self._cv:
            while True:
                while self._pending and self._pending[0].job.cancelled.is_set():
                    self._pending.popleft()  # a client that went away frees its place before it runs
                if self._stop:
                    return None
                if not self._pending:
                    self._cv.wait()
                    continue
                deadline = self._pending[0].job.enqueued + self.max_wait_s
                now = time.perf_counter()
                if self.waiting_rows() < self.max_batch and now < deadline:
                    self._cv.wait(deadline - now)
                    continue
                batch, rows, keep = [], 0, deque()
                key = self.runner.key(self._pending[0].job)
                while self._pending:
                    it = self._pending.popleft()
                    if it.job.cancelled.is_set():
                        continue
                    cost = it.count * it.job.rows_per_sample
                    # the first item always runs (a guided sample with a batch limit of 1 then fails with its reason)
                    if (rows + cost <= self.max_batch or not batch) and self.runner.key(it.job) == key:
                        batch.append(it)
                        rows += cost
                    else:
                        keep.append(it)
                self._pending.extendleft(reversed(keep))
                if batch:
                    return batch

    def _loop(self) -> None:
        while (batch := self._take()) is not None:
            t = time.perf_counter()
            try:
                timings = self.runner.run(batch)
            except Abandoned:
                timings = {}
                for it in batch:
                    it.job.on_done(Abandoned())
            except Exception as e:  # noqa: BLE001 (answered as an error to each request; the thread keeps going)
                timings = {}
                for it in batch:
                    it.job.cancelled.set()  # its other items, if any, are not run
                    it.job.on_done(e)
            self._batch_s = time.perf_counter() - t
            if self.on_batch is not None:
                self.on_batch(batch, {**timings, "batch": self._batch_s})
