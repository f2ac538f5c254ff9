"""The sampling pipeline: condition -> tokens -> image, thin over any backend.

cond encoder -> prefill -> one cached step per image token -> decoder, N samples in one batch.
Grids larger than the trained one are sampled with taming's sliding window.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vqdeploy.errors import InputError
from vqdeploy.limits import check_num_samples, check_pixels, check_seed, pixel_budget
from vqdeploy.runtime.backends.base import Backend
from vqdeploy.runtime.generator import check_sampler, generate, generate_sliding, start_decoding
from vqdeploy.runtime.images import to_uint8
from vqdeploy.runtime.sampling import SamplingParams, uniform_noise
from vqdeploy.typed_manifest import Manifest, ModelInfo


def check_request(info: ModelInfo, num_samples: int = 1, size: tuple[int, int] | None = None,
                  max_pixels: int | None = None) -> None:
    """What a sampling request can get wrong without a backend (``run`` checks it before reading
    any input or opening a session)."""
    info.sampling()
    check_num_samples(num_samples)
    if size is not None:
        check_size(info, size, max_pixels)


def check_size(info: ModelInfo, size: tuple[int, int], max_pixels: int | None = None) -> None:
    """--size (H, W) within the pixel budget, in whole latent cells, and whole cond cells where the
    condition is read at that size."""
    check_pixels(size[0], size[1], pixel_budget(info, max_pixels), f"--size {size[1]}x{size[0]}")
    cond, _ = info.sampling()
    first = info.first_stage
    cond.check_size(size, first)
    res = first.resolution
    if size[0] < res or size[1] < res:
        raise InputError(f"--size {size[1]}x{size[0]} is smaller than the trained {res}x{res}: the transformer "
                         "samples the trained grid or larger (sliding window)")
    f = math.lcm(first.downsample_factor, cond.size_multiple())
    if size[0] % f or size[1] % f:
        raise InputError(f"--size {size[1]}x{size[0]}: width and height must be multiples of {f} pixels")


def check_condition(condition: np.ndarray | None, budget: int) -> None:
    """A condition handed to the library: finite values, spatial size within the pixel budget."""
    if condition is None:
        return
    if not isinstance(condition, np.ndarray):
        raise InputError(f"the condition must be a numpy array, got {type(condition).__name__}")
    if condition.dtype.kind == "f" and not np.isfinite(condition).all():
        raise InputError("the condition holds NaN or infinite values")
    if condition.ndim >= 2:
        check_pixels(condition.shape[-2], condition.shape[-1], budget, "the condition")


@dataclass
class Result:
    images: np.ndarray  # (N,C,H,W) fp32 in [-1,1]
    tokens: np.ndarray  # (N,h,w) raster-order token ids
    timings: dict[str, float] = field(default_factory=dict)
    sliding_window: bool = False

    def to_pil(self) -> list[Any]:
        """The images as PIL images (RGB or L)."""
        from PIL import Image

        return [Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in to_uint8(self.images)]

    @property
    def tokens_per_second(self) -> float:
        t = self.timings.get("sampling", 0.0)
        return self.tokens.size / t if t > 0 else float("nan")


class Pipeline:
    def __init__(self, backend: Backend, manifest: Manifest, sampler: str = "host") -> None:
        """``sampler``: "host" (numpy, every backend) or "graph" (the exported sampler graph on the
        backend's device, so a GPU backend never copies logits to the host)."""
        self.cond, _ = manifest.model.sampling()
        check_sampler(backend, sampler)
        self.backend = backend
        self.manifest = manifest
        self.sampler = sampler
        self.info = manifest.model
        self.first = self.info.first_stage

    def _grid(self, cond_grid: np.ndarray, size: tuple[int, int] | None) -> tuple[int, int]:
        """The image latent grid implied by the condition (spatial kinds) or by --size."""
        implied = self.cond.image_grid(cond_grid, self.first)
        if implied is not None:
            return implied
        if size is None:
            return self.first.latent_grid
        f = self.first.downsample_factor
        return size[0] // f, size[1] // f  # checked by check_request

    def __call__(
        self,
        condition: np.ndarray | None = None,
        *,
        num_samples: int = 1,
        params: SamplingParams | None = None,
        seed: int = 0,
        class_id: int | None = None,
        size: tuple[int, int] | None = None,
        progress: Callable[[int, str], Callable[[int], None]] | None = None,
        max_pixels: int | None = None,
    ) -> Result:
        """``progress(total, description)`` is called once the token count is known and returns a
        per-token callback. ``max_pixels`` raises the image budget (default: 16x the trained area)."""
        check_request(self.info, num_samples, size, max_pixels)
        check_seed(seed)
        condition = self._condition(condition, size, max_pixels)
        check_condition(condition, pixel_budget(self.info, max_pixels))
        params = params or SamplingParams()
        limit = max(1, min(self.backend.max_batch(g) for g in self._graphs()))
        starts = range(0, num_samples, limit)
        ticks: list[Callable[[int], None] | None] = []

        def announce(tokens: int, sliding: bool) -> Callable[[int], None] | None:
            """The first chunk announces the whole request; later chunks reuse its callback."""
            if not ticks:
                how = " (sliding window)" if sliding else ""
                chunks = f" in {len(starts)} batches of up to {limit}" if len(starts) > 1 else ""
                ticks.append(None if progress is None else progress(
                    tokens * len(starts), f"sampling {num_samples} x {tokens} tokens{how}{chunks} with "
                                          f"{self.backend.name} ({self.backend.device})"))
            return ticks[0]

        parts = [self._batch(condition, min(limit, num_samples - s), s, params, seed, class_id, size, announce)
                 for s in starts]
        if len(parts) == 1:
            return parts[0]
        timings = {k: sum(p.timings[k] for p in parts) for k in parts[0].timings}
        return Result(np.concatenate([p.images for p in parts]), np.concatenate([p.tokens for p in parts]), timings,
                      parts[0].sliding_window)

    @classmethod
    def from_artifacts(cls, artifacts: str | Path, backend: str = "auto", device: str | None = None,
                       sampler: str = "host", cuda_graphs: bool = False) -> Pipeline:
        """The pipeline of an artifacts directory on a backend (``auto``: TensorRT where engines and a GPU
        are there, else ONNX Runtime); ``cuda_graphs`` replays each captured token step (GPU only)."""
        from vqdeploy.export.manifest import read_manifest
        from vqdeploy.runtime.backends.select import open_backend

        manifest = read_manifest(artifacts)
        return cls(open_backend(backend, Path(artifacts), manifest, device, cuda_graphs=cuda_graphs), manifest, sampler)

    def _condition(self, x: Any, size: tuple[int, int] | None, max_pixels: int | None) -> np.ndarray | None:
        """What the library caller passed (a path, an image, a scene, an array ...) as the condition's
        kind preprocesses it, at ``size`` or the trained size."""
        return self.cond.as_condition(x, size, pixel_budget(self.info, max_pixels))

    def _graphs(self) -> list[str]:
        """The graphs a request runs (their batch limits bound a chunk)."""
        used = ["transformer", "decoder", *self.cond.graphs]
        return [g for g in used if g in self.manifest.graphs]

    def _batch(self, condition: np.ndarray | None, num_samples: int, first: int, params: SamplingParams, seed: int,
               class_id: int | None, size: tuple[int, int] | None,
               announce: Callable[[int, bool], Callable[[int], None] | None]) -> Result:
        """Samples ``first .. first + num_samples - 1`` of a request: sample b always draws from
        ``default_rng([seed, b])``, so chunking does not change the images."""
        timings: dict[str, float] = {}
        t = time.perf_counter()
        cond = self.cond.condition_tokens(self.backend, num_samples, condition, class_id)
        timings["cond_encoder"] = time.perf_counter() - t
        grid = self._grid(cond, size)
        trained = self.first.latent_grid
        sliding = grid != trained
        tick = announce(grid[0] * grid[1], sliding)
        steps = grid[0] * grid[1]
        noise = uniform_noise(seed, num_samples, steps, first)
        t = time.perf_counter()
        decoding = start_decoding(self.backend, self.sampler, params, noise)
        if not sliding:
            tokens = self.info.to_raster(generate(decoding, cond.reshape(num_samples, -1), steps, tick), grid)
        else:
            if self.info.order is not None:
                raise InputError("sliding-window sampling needs a raster-order (Identity permuter) model")
            if grid[0] < trained[0] or grid[1] < trained[1]:
                raise InputError(f"the image grid {grid[0]}x{grid[1]} is smaller than the trained {trained[0]}x{trained[1]}")
            c = cond if cond.ndim == 3 else cond.reshape(num_samples, -1)
            tokens = generate_sliding(decoding, c, grid, trained, tick)
        timings["sampling"] = time.perf_counter() - t
        t = time.perf_counter()
        images = self.backend.decode(tokens)
        timings["decoder"] = time.perf_counter() - t
        return Result(images, tokens, timings, sliding)
