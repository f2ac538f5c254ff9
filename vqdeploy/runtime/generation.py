"""The one path from a condition to images: condition tokens -> token loop -> raster order -> decoder.

``Generator.run`` samples a batch of ``Rows`` (rows ``first .. first + count - 1`` of a ``Request``; rows of
several requests may share a batch): the library ``Pipeline``, ``run``, ``serve``, ``bench`` and ``parity``
all sample through it, and ``Generator.max_batch`` is the one batch limit. Sample b of a request draws its
uniforms from ``default_rng([seed, b])`` and the host sampler works row by row, so a request's rows give the
same tokens whatever batch they run in, on any backend.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

import numpy as np

from vqdeploy.artifacts import Manifest, ModelInfo
from vqdeploy.conditions import ConditionInput
from vqdeploy.errors import InputError
from vqdeploy.limits import check_num_samples, check_pixels, check_seed, pixel_budget
from vqdeploy.runtime.backends.base import Backend, Decoding
from vqdeploy.runtime.decoding import check_sampler, generate, generate_sliding, start_decoding
from vqdeploy.runtime.guidance import GUIDED_SAMPLER
from vqdeploy.runtime.jacobi import DEFAULT_WINDOW, JacobiStats, check_window, generate_jacobi, row_generator
from vqdeploy.runtime.sampling import SamplingParams, uniform_noise

DECODINGS = ("sequential", "jacobi")  # one token per transformer call, or speculative Jacobi decoding
OnStart = Callable[[int, bool, list[int]], None]  # (tokens per sample, sliding window, each Rows' first batch row)
OnToken = Callable[[int, Decoding], None]  # (tokens drawn per row so far, the decoding)


@dataclass(frozen=True, eq=False)
class Request:
    """What to sample: one condition (its kind's value), N samples, how."""

    condition: ConditionInput
    num_samples: int = 1
    params: SamplingParams = field(default_factory=SamplingParams)
    seed: int = 0
    size: tuple[int, int] | None = None  # (H, W) pixels; None: what the condition implies, else the trained size

    def __post_init__(self) -> None:
        check_num_samples(self.num_samples, "num_samples")
        check_seed(self.seed, "seed")


@dataclass(frozen=True, eq=False)
class Rows:
    """Samples ``first .. first + count - 1`` of ``request`` (a request larger than a batch spans several)."""

    request: Request
    first: int = 0
    count: int = 1


@dataclass
class Output:
    """A batch's results, rows in the order of ``Generator.run``'s ``rows``."""

    images: np.ndarray  # (B,C,H,W) fp32, about [-1,1]
    tokens: np.ndarray  # (B,h,w) raster-order token ids
    timings: dict[str, float]
    sliding_window: bool
    starts: list[int]  # the batch row of each ``Rows``

    def part(self, i: int, rows: Rows) -> tuple[np.ndarray, np.ndarray]:
        """(images, tokens) of the ``i``-th ``Rows``."""
        s = self.starts[i]
        return self.images[s : s + rows.count], self.tokens[s : s + rows.count]


def check_decoding(decoding: str, params: SamplingParams, option: str = "cfg_scale") -> None:
    """Jacobi decoding verifies one row's drafts against that row's logits; classifier-free guidance mixes two
    rows' logits per token, which it does not do: refused rather than sampled unguided."""
    if decoding == "jacobi" and params.guided:
        raise InputError(f"--decoding jacobi does not support classifier-free guidance ({option} "
                         f"{params.cfg_scale:g}): use --decoding sequential, or {option} 1")


def check_size(info: ModelInfo, size: tuple[int, int], max_pixels: int | None = None) -> None:
    """--size (H, W) within the pixel budget, in whole latent cells, and whole cond cells where the
    condition is read at that size (checked before any input is read or backend opened)."""
    check_pixels(size[0], size[1], pixel_budget(info, max_pixels), f"--size {size[1]}x{size[0]}")
    cond, _ = info.sampling()
    first = info.first_stage
    cond.check_size(size, first)
    res = first.resolution
    if size[0] < res or size[1] < res:
        sides = [f"{side} {n}" for side, n in (("width", size[1]), ("height", size[0])) if n < res]
        small = " and ".join(sides) + (" are" if len(sides) > 1 else " is")
        raise InputError(f"--size {size[1]}x{size[0]}: the {small} below the trained {res} pixels; each side must "
                         f"be at least {res} (the transformer samples the trained {res}x{res} grid, or a larger one "
                         "with a sliding window)")
    f = math.lcm(first.downsample_factor, cond.size_multiple())
    if size[0] % f or size[1] % f:
        raise InputError(f"--size {size[1]}x{size[0]}: width and height must be multiples of {f} pixels")


class Generator:
    """A backend and its manifest, sampling batches of rows; ``sampler``: "host" (numpy, every backend) or
    "graph" (the exported sampler graph on the backend's device)."""

    def __init__(self, backend: Backend, manifest: Manifest | None = None, sampler: str = "host",
                 decoding: str = "sequential", jacobi_window: int = DEFAULT_WINDOW) -> None:
        self.backend = backend
        self.manifest = manifest if manifest is not None else backend.manifest
        self.info = self.manifest.model
        self.cond, _ = self.info.sampling()
        check_sampler(backend, sampler)
        if decoding not in DECODINGS:
            raise InputError(f"--decoding {decoding}: expected one of {', '.join(DECODINGS)}")
        if decoding == "jacobi" and sampler != "host":
            raise InputError("--decoding jacobi draws on the host: it takes --sampler host")
        self.sampler = sampler
        self.decoding = decoding
        self.jacobi_window = check_window(jacobi_window)
        self.jacobi_stats = JacobiStats()  # what Jacobi verification did, over this generator's batches
        self.first_stage = self.info.first_stage

    @property
    def max_batch(self) -> int:
        """Rows per batch: the smallest batch limit of the graphs a batch runs (a guided sample takes two
        transformer rows: ``batch_limit``)."""
        used = ["transformer", "decoder", *self.cond.graphs, *(["sampler"] if self.sampler == "graph" else [])]
        return max(1, min(self.backend.max_batch(g) for g in used if g in self.manifest.graphs))

    @staticmethod
    def rows_per_sample(params: SamplingParams) -> int:
        """Transformer rows a sample runs: two with classifier-free guidance (its null-condition row)."""
        return 2 if params.guided else 1

    def batch_limit(self, params: SamplingParams) -> int:
        """Samples of ``params`` per batch: ``max_batch`` rows, two per guided sample (and no more than the guided
        sampler graph takes with ``--sampler graph``); InputError where guidance cannot run at all."""
        self.check_params(params)
        if not params.guided:
            return self.max_batch
        limit = self.max_batch // 2
        if self.sampler == "graph":
            limit = min(limit, self.backend.max_batch(GUIDED_SAMPLER))
        if limit < 1:
            raise InputError(f"cfg_scale: a guided sample runs two transformer rows, and this backend's batch limit is "
                             f"{self.max_batch} (re-export with --max-batch 2 or more)")
        return limit

    def check_params(self, params: SamplingParams, option: str = "cfg_scale") -> None:
        """Guided params need a model with a null condition (and, with the graph sampler, the guided sampler
        graph); checked before any work."""
        if params.guided:
            self.cond.check_guidance(True, option)
            check_decoding(self.decoding, params, option)
            check_sampler(self.backend, self.sampler, guided=True)

    def check_size(self, size: tuple[int, int], max_pixels: int | None = None) -> None:
        check_size(self.info, size, max_pixels)

    def batch_key(self, request: Request) -> Hashable:
        """Requests with equal keys may share a batch (the same image grid)."""
        return request.size

    # --- the path --------------------------------------------------------------------------------------
    def image_grid(self, cond_tokens: np.ndarray, size: tuple[int, int] | None) -> tuple[int, int]:
        """The image latent grid implied by the condition (spatial kinds) or by ``size``."""
        implied = self.cond.image_grid(cond_tokens, self.first_stage)
        if implied is not None:
            return implied
        if size is None:
            return self.first_stage.latent_grid
        f = self.first_stage.downsample_factor
        return size[0] // f, size[1] // f

    def run(self, rows: list[Rows], on_start: OnStart | None = None, on_token: OnToken | None = None,
            wrap: Callable[[Decoding], Decoding] | None = None, synchronize: bool = False) -> Output:
        """Sample every row of ``rows`` in one batch. ``on_start`` hears the token count once it is known,
        ``on_token`` every draw; ``wrap`` wraps the decoding (timing); ``synchronize`` waits for the device at
        each stage boundary (timings)."""
        if not rows:
            raise ValueError("no rows to sample")
        timings: dict[str, float] = {}
        t = time.perf_counter()
        # the graph sampler takes one setting per call: rows of one setting together
        settings = list(dict.fromkeys(r.request.params for r in rows))
        order = sorted(range(len(rows)), key=lambda i: settings.index(rows[i].request.params)) \
            if self.sampler == "graph" else list(range(len(rows)))
        for p in settings:
            self.check_params(p)
        conds, in_batch, starts, groups = [], [], [0] * len(rows), {}
        batch = transformer_rows = 0
        for i in order:
            r = rows[i]
            conds.append(self.cond.condition_tokens(self.backend, r.request.condition, r.count))
            in_batch.append(r)
            starts[i] = batch
            groups.setdefault(r.request.params, []).extend(range(batch, batch + r.count))
            batch += r.count
            transformer_rows += r.count * self.rows_per_sample(r.request.params)
        grids = {self.image_grid(c, rows[i].request.size) for c, i in zip(conds, order)}
        if len(grids) != 1:
            raise InputError("the requests of one batch imply different image sizes")
        grid = grids.pop()
        if self.max_batch < transformer_rows:
            guided = " (a guided sample runs two rows)" if transformer_rows > batch else ""
            raise InputError(f"batch {transformer_rows}{guided} exceeds this backend's maximum {self.max_batch}")
        guided_groups = [len(g) for p, g in groups.items() if p.guided]
        if self.sampler == "graph" and guided_groups and max(guided_groups) > self.backend.max_batch(GUIDED_SAMPLER):
            raise InputError(f"{max(guided_groups)} guided samples exceed the guided sampler graph's maximum "
                             f"{self.backend.max_batch(GUIDED_SAMPLER)}")
        if synchronize:
            self.backend.synchronize()
        timings["cond_encoder"] = time.perf_counter() - t

        steps = grid[0] * grid[1]
        trained = self.first_stage.latent_grid
        sliding = grid != trained
        noise = np.concatenate([uniform_noise(r.request.seed, r.count, steps, r.first) for r in in_batch], axis=1)
        if on_start is not None:
            on_start(steps, sliding, starts)
        t = time.perf_counter()
        decoding = start_decoding(self.backend, self.sampler, [(p, np.array(g)) for p, g in groups.items()], noise,
                                  null_tokens=self.cond.null_tokens() if guided_groups else None)
        if wrap is not None:
            decoding = wrap(decoding)
        drawn = [0]

        def tick(n: int) -> None:
            drawn[0] += n
            if on_token is not None:
                on_token(drawn[0], decoding)

        if self.decoding == "jacobi":
            if sliding:
                raise InputError("--decoding jacobi samples the trained size (no sliding window)")
            prompt = np.concatenate([c.reshape(c.shape[0], -1) for c in conds])
            rngs = [row_generator(r.request.seed, r.first + i) for r in in_batch for i in range(r.count)]
            params = [r.request.params for r in in_batch for _ in range(r.count)]
            counted = [0, 0]  # tokens of every row, whole steps reported

            def row_tokens(n: int) -> None:  # rows run one after another: report steps of the whole batch
                counted[0] += n
                if counted[0] // batch > counted[1]:
                    tick(counted[0] // batch - counted[1])
                    counted[1] = counted[0] // batch

            seq = generate_jacobi(self.backend.transformer(), prompt, steps, params, rngs, self.jacobi_window,
                                  row_tokens, self.jacobi_stats)
            tokens = self.info.to_raster(seq, grid)
        elif not sliding:
            prompt = np.concatenate([c.reshape(c.shape[0], -1) for c in conds])
            tokens = self.info.to_raster(generate(decoding, prompt, steps, tick), grid)
        else:
            if self.info.order is not None:
                raise InputError("sliding-window sampling needs a raster-order (Identity permuter) model")
            if grid[0] < trained[0] or grid[1] < trained[1]:
                raise InputError(f"the image grid {grid[0]}x{grid[1]} is smaller than the trained "
                                 f"{trained[0]}x{trained[1]}")
            spatial = all(c.ndim == 3 for c in conds)
            cond = np.concatenate(conds if spatial else [c.reshape(c.shape[0], -1) for c in conds])
            tokens = generate_sliding(decoding, cond, grid, trained, tick)
        if synchronize:
            self.backend.synchronize()
        timings["sampling"] = time.perf_counter() - t
        t = time.perf_counter()
        images = self.backend.decode(tokens)
        if synchronize:
            self.backend.synchronize()
        timings["decoder"] = time.perf_counter() - t
        return Output(images, tokens, timings, sliding, starts)
