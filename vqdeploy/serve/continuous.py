"""Continuous batching: samples join and leave the running batch at step boundaries.

The transformer takes one position per row, so each row of the running batch is one sample at its own position.
At every step boundary the batch thread frees the rows of finished and cancelled samples, prefills waiting samples
into free rows (on their own cache rows, ``TransformerRunner.forward(first=row)``: consecutive rows in one call),
then runs one step of the leading rows that are in use. A request that arrives while others run waits for one step, not for a
whole batch (256+ steps). Rows are taken lowest first, and a row freed below others in use gets the highest of them
(its cache is moved: ``TransformerRunner.move``), so a step runs exactly the rows in use.

Each sample draws with its own request's settings from ``uniform_noise(seed, 1, steps, first=b)`` (sample b of
its request) with the host sampler, row by row: the tokens of ``vqdeploy run`` with that seed; the images are
decoded per request in chunks of the batch limit, as ``run`` decodes them.

What it runs this way: sequential decoding with the host sampler at the trained grid, unguided. Anything else
(classifier-free guidance: two rows per sample; Jacobi decoding; a sliding window; ``--sampler graph``) waits
until the running rows drain and runs as a request-level batch (``BatchRunner``), in arrival order.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from vqdeploy.runtime.generation import Request
from vqdeploy.runtime.sampling import SamplingParams, next_tokens, uniform_noise
from vqdeploy.serve.batcher import EngineThread, QueueFull
from vqdeploy.serve.runner import Abandoned, BatchRunner, Item, Job, JobResult


@dataclass
class Admission:
    """A job being sampled: its condition tokens, which sample is admitted next, and its finished samples."""

    job: Job
    prompt: np.ndarray  # (Tc,) condition tokens, the same for every sample
    steps: int
    admitted: int = 0
    tokens: dict[int, np.ndarray] = field(default_factory=dict)  # sample -> (steps,) tokens, once finished
    started: float = field(default_factory=time.perf_counter)
    row_steps: int = 0  # the rows in use, summed over its samples' steps
    steps_run: int = 0  # its samples' steps


@dataclass
class Slot:
    """One row of the running batch: sample ``sample`` of a job."""

    admission: Admission
    sample: int
    row: int
    noise: np.ndarray  # (steps,) its uniforms
    tokens: np.ndarray  # (steps,) drawn so far
    drawn: int = 0

    @property
    def job(self) -> Job:
        return self.admission.job


class ContinuousBatcher(EngineThread):
    """``Batcher``'s interface (submit, start, stop, the queue gauges) over step-level scheduling."""

    thread_name = "vqdeploy-continuous"

    def __init__(self, runner: BatchRunner, max_batch: int | None = None, max_queue: int = 32,
                 on_batch: Callable[[list[Item], dict[str, float]], None] | None = None) -> None:
        super().__init__()
        self.runner = runner
        self.generator = runner.generator
        self.max_batch = min(max_batch or runner.max_batch, runner.max_batch)
        self.max_queue = max_queue
        self.on_batch = on_batch
        self._pending: deque[Job] = deque()
        self._admissions: dict[int, Admission] = {}  # id(job) -> its admission, for a job partly admitted
        self._slots: list[Slot | None] = [None] * self.max_batch
        self._step_s = 0.0  # the last step's duration (Retry-After estimate)
        self._fresh = True  # the transformer must be reset to ``max_batch`` rows before the next admission

    # -- the caller's side (any thread) --------------------------------------------------------------
    def submit(self, job: Job) -> None:
        """Queue a job; ``QueueFull`` when ``max_queue`` jobs already wait."""
        self.start()
        with self._cv:
            if self.waiting_jobs() >= self.max_queue:
                steps = self.runner.steps * (1 + self.waiting_rows() // self.max_batch)
                raise QueueFull(max(1, round(steps * max(self._step_s, 0.005) + 0.5)))
            self._pending.append(job)
            self._cv.notify_all()

    def waiting_jobs(self) -> int:
        return len(self._pending)

    def waiting_rows(self) -> int:
        return sum(j.request.num_samples - (self._admissions[id(j)].admitted if id(j) in self._admissions else 0)
                   for j in self._pending)

    def running_rows(self) -> int:
        return sum(s is not None for s in self._slots)

    # -- the batch thread ----------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._stop and not self._pending and not self.running_rows():
                    self._cv.wait()
                if self._stop:
                    return
            self._drop_cancelled()
            self._pack()  # the free rows are then the top ones: the samples that join now prefill in one call
            self._admit()
            if self.running_rows():
                try:
                    self._step()
                except Exception as e:  # noqa: BLE001 (answered as an error to each running request)
                    self._fail_running(e)

    def _continuous(self, request: Request, prompt: np.ndarray) -> bool:
        """Whether a request's samples can be rows of the running batch."""
        g = self.generator
        if g.sampler != "host" or g.decoding != "sequential" or request.params.guided:
            return False
        return tuple(g.image_grid(prompt, request.size)) == tuple(g.first_stage.latent_grid)

    def _admit(self) -> None:
        """Fill free rows from the head of the queue (in order), then prefill the samples that joined; a request
        that cannot run as rows waits for the running ones to finish, then runs as a batch of its own."""
        joining: list[Slot] = []
        jobs: list[Job] = []
        self._take(joining, jobs)
        if not joining:
            return
        try:
            self._prefill(joining)
        except Exception as e:  # noqa: BLE001
            self._fail_running(e)
            return
        for job in jobs:
            job.batches.append(self.running_rows())  # rows running once it joined (the access log)

    def _take(self, joining: list[Slot], jobs: list[Job]) -> None:
        """Slots for waiting samples in the free rows, lowest first (their prefill follows)."""
        while True:
            with self._cv:
                if not self._pending:
                    return
                job = self._pending[0]
            if job.cancelled.is_set():
                self._pop(job)
                continue
            adm = self._admissions.get(id(job))
            if adm is None:
                try:
                    adm = self._prepare(job)
                except Exception as e:  # noqa: BLE001 (this request's error; the others go on)
                    self._pop(job)
                    job.on_done(e)
                    continue
                if adm is None:  # not as rows: after the running rows, alone
                    if self.running_rows() or joining:
                        return
                    self._pop(job)
                    self._run_whole(job)
                    continue
                self._admissions[id(job)] = adm
            free = [i for i, s in enumerate(self._slots) if s is None]
            if not free:
                return
            if self._fresh:
                self.generator.backend.transformer().reset(self.max_batch)
                self._fresh = False
            if len(free) >= job.request.num_samples - adm.admitted:
                self._pop(job)  # all its samples run from here: no longer waiting
            request = job.sampling
            while free and adm.admitted < job.request.num_samples:
                b, row = adm.admitted, free.pop(0)
                slot = Slot(adm, b, row, uniform_noise(request.seed, 1, adm.steps, b)[:, 0],
                            np.zeros(adm.steps, dtype=np.int64))
                self._slots[row] = slot
                joining.append(slot)
                adm.admitted = b + 1
            jobs.append(job)

    def _pop(self, job: Job) -> None:
        with self._cv:
            if self._pending and self._pending[0] is job:
                self._pending.popleft()

    def _prepare(self, job: Job) -> Admission | None:
        """The job's condition tokens, or None where it does not run as rows."""
        request = job.sampling
        g = self.generator
        g.check_params(request.params)
        prompt = g.cond.condition_tokens(g.backend, request.condition, 1)
        if not self._continuous(request, prompt):
            return None
        return Admission(job, prompt.reshape(-1), self.runner.steps_of(job.request))

    def _prefill(self, joining: list[Slot]) -> None:
        """The joining samples' condition tokens, each run of consecutive rows in one call (rows from position 0:
        a batch the valid-length graph takes); their first tokens drawn."""
        runner = self.generator.backend.transformer()
        joining = sorted(joining, key=lambda s: s.row)
        runs: list[list[Slot]] = []
        for slot in joining:
            last = runs[-1][-1] if runs else None
            if last is not None and slot.row == last.row + 1 and len(slot.admission.prompt) == len(last.admission.prompt):
                runs[-1].append(slot)
            else:
                runs.append([slot])
        for run in runs:
            for slot in run:
                runner.rewind(0, slot.row)
            logits = runner.forward(np.stack([s.admission.prompt for s in run]), first=run[0].row)[:, -1]
            self._draw(run, logits)

    def _draw(self, slots: list[Slot], logits: np.ndarray) -> None:
        """The next token of each slot from its (V,) row of ``logits``: the slots of one sampling setting in one
        call (the host sampler works row by row, so a row draws what it draws alone)."""
        groups: dict[SamplingParams, list[int]] = {}
        for i, slot in enumerate(slots):
            groups.setdefault(slot.job.sampling.params, []).append(i)
        for params, idx in groups.items():
            uniforms = np.array([slots[i].noise[slots[i].drawn] for i in idx])
            drawn = next_tokens(logits[idx], uniforms, params)
            for i, token in zip(idx, drawn):
                slot = slots[i]
                slot.tokens[slot.drawn] = token
                slot.drawn += 1
        for slot in slots:
            job = slot.job
            job.done_tokens += 1
            job.on_progress(job.done_tokens, job.request.num_samples * slot.admission.steps)

    def _pack(self) -> None:
        """Move the highest rows in use into the free rows below them, so that the rows in use are the leading
        ones and a step computes no free row. A row's whole cache is copied once, at the boundary where a row
        below it was freed: 0.8 MB on the demo, 17 MB on the medium model (fp32)."""
        while True:
            used = [i for i, s in enumerate(self._slots) if s is not None]
            free = [i for i, s in enumerate(self._slots) if s is None]
            if not used or not free or free[0] > used[-1]:
                return
            src, dst = used[-1], free[0]
            self.generator.backend.transformer().move(src, dst)
            slot = self._slots[src]
            assert slot is not None
            slot.row = dst
            self._slots[dst], self._slots[src] = slot, None

    def _step(self) -> None:
        """One token for every row in use; rows that finish leave the batch. The rows in use are the leading ones:
        ``_loop`` packed them before the samples that joined took the free rows above."""
        t = time.perf_counter()
        runner = self.generator.backend.transformer()
        running = [s for s in self._slots if s is not None]
        assert running[-1].row == len(running) - 1, "the rows in use are not packed"
        feed = np.array([[s.tokens[s.drawn - 1]] for s in running], dtype=np.int64)
        logits = runner.forward(feed)[:, -1]
        self._draw(running, logits)
        for each in running:
            each.admission.row_steps += len(running)
            each.admission.steps_run += 1
        self._step_s = time.perf_counter() - t
        self._partials()
        for i, slot in enumerate(self._slots):
            if slot is not None and slot.drawn == slot.admission.steps:
                self._slots[i] = None
                self._finish(slot)

    def _partials(self) -> None:
        """Partial decodes (``partial_every``, ``BatchRunner.partial_rows``) of the jobs whose samples all run, at
        the same token: those admitted at one boundary (a job whose samples joined at different steps gets none)."""
        jobs: dict[int, list[Slot]] = {}
        for slot in self._slots:
            if slot is not None and slot.job.request.partial_every:
                jobs.setdefault(id(slot.job), []).append(slot)
        for slots in jobs.values():
            job, k = slots[0].job, slots[0].drawn
            if len(slots) < job.request.num_samples or any(s.drawn != k for s in slots) or job.cancelled.is_set():
                continue
            rows = self.runner.partial_rows(job, k)
            if rows is not None:
                self.runner.partial(job, np.stack([s.tokens[:k] for s in sorted(slots, key=lambda s: s.sample)]), rows)

    def _finish(self, slot: Slot) -> None:
        adm = slot.admission
        adm.tokens[slot.sample] = slot.tokens
        job = adm.job
        if len(adm.tokens) < job.request.num_samples:
            return
        self._admissions.pop(id(job), None)
        try:
            if job.cancelled.is_set():
                raise Abandoned()
            result = self._decode(adm)
        except Exception as e:  # noqa: BLE001
            job.on_done(e)
            return
        job.on_done(result)
        if self.on_batch is not None:
            rows = adm.row_steps / adm.steps_run if adm.steps_run else 1.0
            self.on_batch([Item(job, 0, job.request.num_samples)],
                          {**result.timings, "batch": result.timings["total"], "rows": rows})

    def _decode(self, adm: Admission) -> JobResult:
        """The job's images, decoded in chunks of the batch limit (as ``run`` does)."""
        g = self.generator
        t = time.perf_counter()
        n = adm.job.request.num_samples
        seq = np.stack([adm.tokens[b] for b in range(n)])
        tokens = g.info.to_raster(seq, g.first_stage.latent_grid)
        images = np.concatenate([g.backend.decode(tokens[i : i + g.max_batch]) for i in range(0, n, g.max_batch)])
        now = time.perf_counter()
        timings = {"sampling": t - adm.started, "decoder": now - t, "total": now - adm.started}
        return JobResult(np.clip(images, -1.0, 1.0), tokens, timings)

    def _drop_cancelled(self) -> None:
        """Rows of requests that went away leave the batch."""
        for i, slot in enumerate(self._slots):
            if slot is not None and slot.job.cancelled.is_set():
                self._slots[i] = None
                if self._admissions.pop(id(slot.job), None) is not None:
                    slot.job.on_done(Abandoned())

    def _fail_running(self, error: Exception) -> None:
        """A step failed: every running request gets the error; the cache is reset before the next admission."""
        jobs = {id(s.job): s.job for s in self._slots if s is not None}
        self._slots = [None] * self.max_batch
        self._fresh = True
        for key, job in jobs.items():
            self._admissions.pop(key, None)
            job.cancelled.set()
            job.on_done(error)
            self._pop(job)

    def _run_whole(self, job: Job) -> None:
        """A request that does not run as rows: request-level batches of its own (``BatchRunner``)."""
        self._fresh = True
        n = job.request.num_samples
        per_item = max(1, self.max_batch // job.rows_per_sample)
        for first in range(0, n, per_item):
            if job.cancelled.is_set():
                job.on_done(Abandoned())
                return
            item = Item(job, first, min(per_item, n - first))
            t = time.perf_counter()
            try:
                timings = self.runner.run([item])
            except Exception as e:  # noqa: BLE001
                job.on_done(e)
                return
            if self.on_batch is not None:
                self.on_batch([item], {**timings, "batch": time.perf_counter() - t})
