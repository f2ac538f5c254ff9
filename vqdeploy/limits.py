"""Budgets on what untrusted input can make vqdeploy allocate, and checks on numbers where they enter.

A 62 KB PNG can declare 8000x8000 pixels, and the encoder's activations for an image grow with its
area (the demo's encoder asked for 8 GB for one 7992x7992 input): the work a request causes
is bounded by the model's trained size, not by what a file or an option claims. The defaults are in
the README's Safety section, with the option that raises each.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from vqdeploy.errors import InputError, TooLargeError

if TYPE_CHECKING:
    from vqdeploy.artifacts.manifest import ModelInfo

DECODE_PIXELS = 64_000_000  # any image file: beyond this it is a decompression bomb, whatever the model
AREA_FACTOR = 16  # default image budget: 16x the trained area (4x each side; sliding window beyond 1x)
MAX_SEED = 2**63  # seeds are 0 <= seed < 2^63 (numpy's SeedSequence takes non-negative integers)
MAX_SAMPLES = 4096  # per call; a backend's batch limit applies on top
MAX_TOP_K = 2**31 - 1
MAX_CFG_SCALE = 1000.0  # classifier-free guidance scale (LlamaGen samples with 1.5-4)
MAX_CFG_INTERVAL = 1 << 16  # guided steps (beyond the sequence: every token)
CONDITION_PIXELS = 1 << 22  # a condition image is decoded up to 4 MP (2048x2048) or the model's budget if larger
MAX_UPLOAD_BYTES = 4 * 2**20  # `serve`: a whole request body (condition image included), read into memory only
MAX_INFLIGHT_UPLOAD_BYTES = 64 * 2**20  # `serve`: all bodies being received at once (16 of the largest)
READ_TIMEOUT_S = 30.0  # `serve`: a request's headers, and then its body, must arrive within it


def pixel_budget(info: ModelInfo, max_pixels: int | None = None) -> int:
    """The largest condition or output image (in pixels) a request may ask for."""
    return int(max_pixels) if max_pixels is not None else AREA_FACTOR * info.first_stage.trained_pixels


def condition_budget(info: ModelInfo, max_pixels: int | None = None) -> int:
    """The largest condition image (in pixels) decoded for a request (it is then resized to the size sampled):
    the same for ``run``, the library and ``serve``."""
    return max(pixel_budget(info, max_pixels), CONDITION_PIXELS if max_pixels is None else 0)


def check_pixels(height: int, width: int, budget: int, what: str, remedy: str | None = None) -> None:
    """``what`` (e.g. "--size 4096x4096", "input.png") must fit ``budget`` pixels; ``remedy``: what the one who
    sent it can do, in their terms (default: the CLI's --max-pixels)."""
    if height * width > budget:
        raise TooLargeError(f"{what}: {width}x{height} is {height * width} pixels, over this model's budget of {budget}"
                            + (f"; {remedy}" if remedy else
                               f" (default: {AREA_FACTOR}x its trained size); pass --max-pixels N to raise it"))


def check_finite(value: float, name: str, low: float | None = None, high: float | None = None,
                 low_open: bool = False) -> float:
    """A float option: finite and in range (NaN compares false everywhere, so it is tested first)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise InputError(f"{name} must be a finite number, got {value!r}")
    if low is not None and (value <= low if low_open else value < low):
        raise InputError(f"{name} must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and value > high:
        raise InputError(f"{name} must be <= {high}, got {value}")
    return float(value)


def check_int(value: int, name: str, low: int, high: int) -> int:
    """An integer option in [low, high] (``high`` inclusive)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise InputError(f"{name} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise InputError(f"{name} must be in {low}..{high}, got {value}")
    return value


def check_seed(seed: int, name: str = "--seed") -> int:
    return check_int(seed, name, 0, MAX_SEED - 1)


def check_num_samples(n: int, name: str = "--num-samples") -> int:
    return check_int(n, name, 1, MAX_SAMPLES)
