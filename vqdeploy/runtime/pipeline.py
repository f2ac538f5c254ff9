"""The library's entry point: ``vqdeploy.Pipeline``, condition -> images on one backend.

Thin over ``generation.Generator`` (the one path ``run``, ``serve``, ``bench`` and ``parity`` share): it
reads what the caller passes into the condition's typed value, splits a request into batches of the
backend's limit and puts the parts back together.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image as PILImage

from vqdeploy.artifacts import Artifacts, Manifest, open_artifacts
from vqdeploy.conditions import ClassId, ConditionInput, Reading
from vqdeploy.errors import InputError
from vqdeploy.images import parse_size, to_uint8
from vqdeploy.limits import check_num_samples, condition_budget, pixel_budget
from vqdeploy.runtime.backends.base import Backend
from vqdeploy.runtime.backends.registry import OpenOptions, open_backend
from vqdeploy.runtime.generation import Generator, Request, Rows
from vqdeploy.runtime.jacobi import DEFAULT_WINDOW
from vqdeploy.runtime.sampling import SamplingParams

Progress = Callable[[int, str], Callable[[int], None]]  # (total tokens, description) -> per-token callback
# what ``Pipeline.__call__`` takes as the condition: an image file path, its bytes, a PIL image, a (H,W[,C]) uint8
# image or label array (or a preprocessed (1,C,H,W) float array), a class id, a scene mapping or nothing
ConditionLike = Union[str, os.PathLike, bytes, PILImage.Image, np.ndarray, int, Mapping[str, Any], ConditionInput, None]
Size = Union[int, str, tuple[int, int], None]  # S (a square), "WxH" (as --size) or (H, W) pixels
Params = Union[SamplingParams, Mapping[str, Any], None]  # SamplingParams, or a mapping of its fields


@dataclass
class Result:
    """What a call returns: ``images`` (N,C,H,W) float32 in [-1,1], ``tokens`` (N,h,w) raster-order ids,
    ``timings`` in seconds per stage."""

    images: np.ndarray
    tokens: np.ndarray
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


PARAM_FIELDS = ("temperature", "top_k", "top_p", "cfg_scale", "cfg_interval")


def as_params(params: Params, **overrides: Any) -> SamplingParams:
    """``params`` as ``SamplingParams``: one, a mapping of its fields ({"temperature": 0.5}), or None (the
    defaults); ``overrides`` (temperature=, top_k=, top_p=, cfg_scale=, cfg_interval=) replace fields."""
    if params is None:
        fields: dict[str, Any] = {}
    elif isinstance(params, SamplingParams):
        fields = {k: getattr(params, k) for k in PARAM_FIELDS}
    elif isinstance(params, Mapping):
        unknown = sorted(set(params) - set(PARAM_FIELDS))
        if unknown:
            raise InputError(f"params: unknown field {unknown[0]!r} ({', '.join(PARAM_FIELDS)})")
        fields = dict(params)
    else:
        raise InputError(f"params must be a SamplingParams or a mapping, not {type(params).__name__}")
    fields.update({k: v for k, v in overrides.items() if v is not None})
    return SamplingParams(**fields)


def as_size(size: Size) -> tuple[int, int] | None:
    """``size`` as (H, W): S (a square), "WxH" (as ``--size``), or an (H, W) pair."""
    if size is None:
        return None
    if isinstance(size, bool):
        raise InputError(f"size must be S, 'WxH' or (H, W), not {size!r}")
    if isinstance(size, int):
        return parse_size(str(size), "size")
    if isinstance(size, str):
        return parse_size(size, "size")
    if isinstance(size, (tuple, list)) and len(size) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size):
        return int(size[0]), int(size[1])
    raise InputError(f"size must be S, 'WxH' or (H, W) with positive integers, not {size!r}")


class Pipeline:
    """Sample images from exported artifacts (``vqdeploy export``'s directory)::

        pipe = vqdeploy.Pipeline.from_artifacts("artifacts/demo")          # ONNX Runtime, or TensorRT with a GPU
        result = pipe("sketch.png", num_samples=4, seed=0, temperature=0.8)
        result.images      # (4, C, H, W) float32 in [-1, 1]
        result.tokens      # (4, h, w) token ids; result.timings: seconds per stage
        result.to_pil()    # PIL images

    The condition is whatever the model is conditioned on: an image (a path, a PIL image, a uint8 or label
    array; resized to the trained size, or to ``size``), a class id (``pipe(class_id=3)`` or ``pipe(3)``), a
    scene (a path or a mapping) for object-layout models, or nothing. Sampling: ``params=SamplingParams(...)``,
    ``params={"temperature": 0.5}`` or ``temperature=``/``top_k=``/``top_p=`` directly; ``seed``: sample ``i``
    of a seed is the same on every backend and at every batch size; ``num_samples`` beyond ``max_batch`` runs
    in batches. ``size=128``, ``"256x128"`` (W x H) or ``(128, 256)`` (H, W) samples a larger image (sliding
    window). Bad input raises ``vqdeploy.errors.InputError`` with a message naming the argument.

    ``sampler``: "host" (numpy, any backend) or "graph" (the exported sampler graph on the backend's device);
    ``decoding``: "sequential" or "jacobi" (speculative Jacobi decoding: the same distribution, fewer calls).
    """

    def __init__(self, backend: Backend, manifest: Manifest | None = None, sampler: str = "host",
                 decoding: str = "sequential", jacobi_window: int = DEFAULT_WINDOW) -> None:
        """A pipeline over an opened backend (``from_artifacts`` opens one for you)."""
        self.generator = Generator(backend, manifest, sampler, decoding, jacobi_window)
        self.backend = backend
        self.manifest = self.generator.manifest
        self.info = self.manifest.model
        self.cond = self.generator.cond
        self.sampler = sampler

    @classmethod
    def from_artifacts(cls, artifacts: str | Path | Artifacts, backend: str = "auto", device: str | None = None,
                       sampler: str = "host", cuda_graphs: bool = False, ckpt: str | None = None,
                       log: Callable[[str], None] | None = None, decoding: str = "sequential",
                       jacobi_window: int = DEFAULT_WINDOW) -> Pipeline:
        """The pipeline of an artifacts directory on a backend (``auto``: TensorRT where engines and a GPU
        are there, else ONNX Runtime; ``torch`` runs the exported checkpoint, or ``ckpt``); ``cuda_graphs``
        replays each captured token step (GPU only); ``decoding="jacobi"``: speculative Jacobi decoding (more
        than one token per transformer call, the same distribution; ``runtime/jacobi.py``)."""
        opened = open_artifacts(artifacts)
        be = open_backend(backend, opened, device, OpenOptions(cuda_graphs=cuda_graphs, ckpt=ckpt), log=log)
        return cls(be, opened.manifest, sampler, decoding, jacobi_window)

    @property
    def max_batch(self) -> int:
        """Samples per backend batch; larger requests run in batches (same images)."""
        return self.generator.max_batch

    def read(self, condition: ConditionLike = None, *, class_id: int | None = None, size: Size = None,
             max_pixels: int | None = None, log: Callable[[str], None] | None = None,
             via: str = "library") -> ConditionInput:
        """The condition's typed value (what ``__call__`` samples from) for what the caller passes."""
        if class_id is not None:
            if condition is not None:
                raise InputError("pass the condition or class_id, not both")
            condition = ClassId(class_id)
        reading = Reading(as_size(size), condition_budget(self.info, max_pixels), log, via,
                          pixel_budget(self.info, max_pixels))
        return self.cond.read(condition, reading)

    def __call__(
        self,
        condition: ConditionLike = None,
        *,
        num_samples: int = 1,
        params: Params = None,
        seed: int = 0,
        class_id: int | None = None,
        size: Size = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        cfg_scale: float | None = None,
        cfg_interval: int | None = None,
        progress: Progress | None = None,
        max_pixels: int | None = None,
        log: Callable[[str], None] | None = None,
    ) -> Result:
        """Sample ``num_samples`` images for ``condition`` (a path, bytes, a PIL image or a numpy array for image
        conditions; an int or ``class_id`` for class-conditional models; a path or mapping for scenes; None for
        unconditional models). ``params`` (or ``temperature``/``top_k``/``top_p``)
        choose how tokens are drawn (default: temperature 1, top-k 100); ``cfg_scale`` > 1 (and ``cfg_interval``)
        guide a model that has a null condition (LlamaGen: classifier-free guidance); ``size`` S, "WxH" or (H, W) pixels
        samples a larger image with the sliding window; ``max_pixels`` raises the image budget (default: 16x
        the trained area). ``progress(total, description)`` is called once the token count is known and
        returns a per-token callback; ``log`` hears notes about the input (resizing ...)."""
        check_num_samples(num_samples, "num_samples")
        hw = as_size(size)
        if hw is not None:
            self.generator.check_size(hw, max_pixels)
        sampling = as_params(params, temperature=temperature, top_k=top_k, top_p=top_p, cfg_scale=cfg_scale,
                             cfg_interval=cfg_interval)
        self.generator.check_params(sampling)
        value = self.read(condition, class_id=class_id, size=hw, max_pixels=max_pixels, log=log)
        request = Request(value, num_samples, sampling, seed, hw)
        return self.sample(request, progress)

    def sample(self, request: Request, progress: Progress | None = None) -> Result:
        """Sample a ``Request`` (its condition already read), in batches of ``max_batch`` (of half as many samples
        with classifier-free guidance: two transformer rows each)."""
        limit = self.generator.batch_limit(request.params)
        starts = range(0, request.num_samples, limit)
        ticks: list[Callable[[int], None]] = []

        def on_start(tokens: int, sliding: bool, starts_in_batch: list[int]) -> None:
            """The first batch announces the whole request; later batches reuse its callback."""
            if not ticks and progress is not None:
                how = " (sliding window)" if sliding else ""
                chunks = f" in {len(starts)} batches of up to {limit}" if len(starts) > 1 else ""
                ticks.append(progress(tokens * len(starts), f"sampling {request.num_samples} x {tokens} tokens{how}"
                                                            f"{chunks} with {self.backend.name} ({self.backend.device})"))

        last = [0]

        def on_token(drawn: int, decoding: Any) -> None:
            if drawn < last[0]:  # a new batch
                last[0] = 0
            if ticks:
                ticks[0](drawn - last[0])
            last[0] = drawn

        outputs = [self.generator.run([Rows(request, s, min(limit, request.num_samples - s))], on_start, on_token)
                   for s in starts]
        timings = {k: sum(o.timings[k] for o in outputs) for k in outputs[0].timings}
        images = np.clip(np.concatenate([o.images for o in outputs]), -1.0, 1.0)  # decoders overshoot by ~1e-3
        return Result(images, np.concatenate([o.tokens for o in outputs]), timings, outputs[0].sliding_window)
