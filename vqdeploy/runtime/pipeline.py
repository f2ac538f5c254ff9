"""The sampling pipeline: condition -> tokens -> image, thin over any backend.

cond encoder -> prefill -> one cached step per image token -> decoder, N samples in one batch.
Grids larger than the trained one are sampled with taming's sliding window.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vqdeploy.errors import InputError
from vqdeploy.limits import check_num_samples, check_pixels, check_seed, pixel_budget
from vqdeploy.runtime.backends.base import Backend
from vqdeploy.runtime.conditions import condition_grid
from vqdeploy.runtime.generator import generate, generate_sliding
from vqdeploy.runtime.sampling import SamplingParams, uniform_noise


def check_request(info: dict[str, Any], num_samples: int = 1, size: tuple[int, int] | None = None,
                  max_pixels: int | None = None) -> None:
    """What a sampling request can get wrong without a backend (``run`` checks it before reading
    any input or opening a session)."""
    if info["kind"] != "net2net":
        raise InputError("these artifacts hold a VQGAN only: there is no transformer to sample from")
    check_num_samples(num_samples)
    if size is not None:
        check_size(info, size, max_pixels)


def check_size(info: dict[str, Any], size: tuple[int, int], max_pixels: int | None = None) -> None:
    """--size (H, W) within the pixel budget, in whole latent cells, and whole cond cells where the
    condition is read at that size."""
    check_pixels(size[0], size[1], pixel_budget(info, max_pixels), f"--size {size[1]}x{size[0]}")
    f = int(info["first_stage"]["downsample_factor"])
    cond = info["conditioning"]
    if cond["kind"] == "image" and cond.get("downsample_cond_size", -1) == -1:
        f = math.lcm(f, int(cond["downsample_factor"]))
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

    @property
    def tokens_per_second(self) -> float:
        t = self.timings.get("sampling", 0.0)
        return self.tokens.size / t if t > 0 else float("nan")


class Pipeline:
    def __init__(self, backend: Backend, manifest: dict[str, Any], sampler: str = "host") -> None:
        """``sampler``: "host" (numpy, every backend) or "graph" (the exported sampler graph on the
        backend's device, so a GPU backend never copies logits to the host)."""
        check_request(manifest["model"])
        if sampler not in ("host", "graph"):
            raise InputError(f"--sampler {sampler}: expected host or graph")
        if sampler == "graph" and not hasattr(backend.transformer(), "generate_on_device"):
            raise InputError(f"--sampler graph needs a graph backend (onnxruntime or tensorrt), not {backend.name}")
        self.backend = backend
        self.manifest = manifest
        self.sampler = sampler
        self.info = manifest["model"]
        self.cond = self.info["conditioning"]
        self.first = self.info["first_stage"]

    def _grid(self, cond_grid: np.ndarray, size: tuple[int, int] | None) -> tuple[int, int]:
        """The image latent grid implied by the condition (image-like) or by --size."""
        f = int(self.first["downsample_factor"])
        if cond_grid.ndim == 3 and self.cond["kind"] in ("image", "first_stage", "coord"):
            if self.cond.get("downsample_cond_size", -1) > -1:
                return tuple(self.first["latent_grid"])  # type: ignore[return-value]
            scale = self.cond["resolution"] / self.cond["latent_grid"][0] / f  # cond pixels per image cell
            return round(cond_grid.shape[1] * scale), round(cond_grid.shape[2] * scale)
        if size is None:
            return tuple(self.first["latent_grid"])  # type: ignore[return-value]
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
        check_condition(condition, pixel_budget(self.info, max_pixels))
        params = params or SamplingParams()
        timings: dict[str, float] = {}
        t = time.perf_counter()
        cond = condition_grid(self.backend, self.cond, num_samples, condition, class_id)
        timings["cond_encoder"] = time.perf_counter() - t
        grid = self._grid(cond, size)
        trained = tuple(self.first["latent_grid"])
        sliding = grid != trained
        tick = None
        if progress is not None:
            how = " (sliding window)" if sliding else ""
            tick = progress(grid[0] * grid[1], f"sampling {num_samples} x {grid[0] * grid[1]} tokens{how} with "
                                               f"{self.backend.name} ({self.backend.device})")
        runner = self.backend.transformer()
        t = time.perf_counter()
        if not sliding:
            steps = grid[0] * grid[1]
            noise = uniform_noise(seed, num_samples, steps)
            prompt = cond.reshape(num_samples, -1)
            if self.sampler == "graph":
                seq = runner.generate_on_device(prompt, steps, params, noise, tick)  # type: ignore[attr-defined]
            else:
                seq = generate(runner, prompt, steps, params, noise, tick)
            order = self.info["permuter"]["order"]
            raster = np.empty_like(seq)
            if order is None:
                raster = seq
            else:
                raster[:, order] = seq  # undo the permuter: sequence position k holds raster cell order[k]
            tokens = raster.reshape(num_samples, *grid)
        else:
            if self.info["permuter"]["order"] is not None:
                raise InputError("sliding-window sampling needs a raster-order (Identity permuter) model")
            if self.sampler == "graph":
                raise InputError("sliding-window sampling runs on the host sampler: drop --sampler graph")
            if grid[0] < trained[0] or grid[1] < trained[1]:
                raise InputError(f"the image grid {grid[0]}x{grid[1]} is smaller than the trained {trained[0]}x{trained[1]}")
            noise = uniform_noise(seed, num_samples, grid[0] * grid[1])
            c = cond if cond.ndim == 3 else cond.reshape(num_samples, -1)
            tokens = generate_sliding(runner, c, grid, trained, params, noise, tick)  # type: ignore[arg-type]
        timings["sampling"] = time.perf_counter() - t
        t = time.perf_counter()
        images = self.backend.decode(tokens)
        timings["decoder"] = time.perf_counter() - t
        return Result(images, tokens, timings, sliding)
