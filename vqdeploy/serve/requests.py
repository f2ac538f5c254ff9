"""A generate request from untrusted form or JSON fields: every field checked where it enters, every
error naming its field, nothing written to disk (the condition is decoded from memory)."""

from __future__ import annotations

import base64
import binascii
import io
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vqdeploy.conditions.image import ImageCondition
from vqdeploy.errors import InputError
from vqdeploy.limits import MAX_SEED, MAX_TOP_K, check_finite, check_int, pixel_budget
from vqdeploy.runtime.sampling import DEFAULT_NUM_SAMPLES, DEFAULT_SEED, SamplingParams
from vqdeploy.typed_manifest import ModelInfo

FIELDS = ("condition", "seed", "num_samples", "temperature", "top_k", "top_p", "class_id", "partial_every")
# PIL modes a condition upload may have (others, e.g. CMYK or YCbCr, are refused rather than guessed at)
IMAGE_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "I", "I;16", "F")


class FieldError(InputError):
    """A bad request field: answered as a 4xx JSON error that names ``field``."""

    def __init__(self, field: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.field = field
        self.status = status


@dataclass
class GenerateRequest:
    seed: int = DEFAULT_SEED
    num_samples: int = DEFAULT_NUM_SAMPLES
    params: SamplingParams = field(default_factory=SamplingParams)
    class_id: int | None = None
    condition: np.ndarray | None = None  # preprocessed, as the pipeline takes it
    partial_every: int = 0  # stream a partial decode every N token rows (0: none)
    notes: list[str] = field(default_factory=list)


def _int(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise FieldError(name, f"{name} must be an integer, got {value!r}") from None
    try:
        return check_int(value, name, low, high)
    except InputError as e:
        raise FieldError(name, str(e)) from None


def _float(value: Any, name: str, **bounds: Any) -> float:
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise FieldError(name, f"{name} must be a number, got {value!r}") from None
    try:
        return check_finite(value, name, **bounds)
    except InputError as e:
        raise FieldError(name, str(e)) from None


def _absent(value: Any) -> bool:
    """An empty form field or a JSON null means "the default" (HTML forms send empty inputs)."""
    return value is None or (isinstance(value, str) and value.strip() == "")


def parse_fields(fields: dict[str, Any], info: ModelInfo, max_samples: int) -> GenerateRequest:
    """Sampling fields -> a request (the condition is read separately by ``read_condition``)."""
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise FieldError(unknown[0], f"unknown field {unknown[0]!r}; expected some of {', '.join(FIELDS)}")
    req = GenerateRequest()
    if not _absent(fields.get("seed")):
        req.seed = _int(fields["seed"], "seed", 0, MAX_SEED - 1)
    if not _absent(fields.get("num_samples")):
        req.num_samples = _int(fields["num_samples"], "num_samples", 1, max_samples)
    defaults = SamplingParams()
    temperature = defaults.temperature
    top_k, top_p = defaults.top_k, defaults.top_p
    if not _absent(fields.get("temperature")):
        temperature = _float(fields["temperature"], "temperature", low=0.0)
    if not _absent(fields.get("top_k")):
        top_k = _int(fields["top_k"], "top_k", 1, MAX_TOP_K)
    if not _absent(fields.get("top_p")):
        top_p = _float(fields["top_p"], "top_p", low=0.0, high=1.0, low_open=True)
    req.params = SamplingParams(temperature, top_k, top_p)
    if not _absent(fields.get("partial_every")):
        req.partial_every = _int(fields["partial_every"], "partial_every", 0, 1 << 16)
    cond, _ = info.sampling()
    n = cond.classes
    if not _absent(fields.get("class_id")):
        if n is None:
            raise FieldError("class_id", f"class_id is for class-conditional models; this model's conditioning is "
                                         f"{cond.kind}")
        req.class_id = _int(fields["class_id"], "class_id", 0, n - 1)
    elif n is not None:
        raise FieldError("class_id", f"this model is class-conditional: pass class_id (0..{n - 1})")
    return req


def condition_bytes(value: Any) -> bytes:
    """A JSON request's condition: a base64 string (optionally a ``data:image/png;base64,`` URL)."""
    if not isinstance(value, str):
        raise FieldError("condition", "condition must be a base64-encoded image string in a JSON request")
    if value.startswith("data:"):
        value = value.partition(",")[2]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise FieldError("condition", "condition is not valid base64") from None


def read_condition(data: bytes | None, info: ModelInfo, max_pixels: int | None = None) -> tuple[Any, list[str]]:
    """The preprocessed condition of an upload (resized to the trained size, as ``vqdeploy run`` does)
    and the notes ``run`` would print about it. The pixel budget is checked on the image header."""
    from vqdeploy.runtime.images import decode_image, prepare_condition

    cond, _ = info.sampling()
    notes: list[str] = []
    if not isinstance(cond, ImageCondition):  # an image upload is decoded below, any other by its kind
        try:
            if data:
                return cond.from_upload(data, notes.append), notes
            return cond.read_input(None, None, pixel_budget(info, max_pixels)), notes  # its default, or what to send
        except InputError as e:
            raise FieldError("condition", str(e)) from None
    if not data:
        raise FieldError("condition", f"this model is conditioned on an image: send the file part 'condition' "
                                      f"({cond.preprocessing['input']})")
    budget = pixel_budget(info, max_pixels)
    try:
        img = decode_image(io.BytesIO(data), "condition", budget)
    except InputError as e:
        oversized = ("budget" in str(e) and "pixels" in str(e)) or "too large" in str(e) or "bomb" in str(e)
        status = 413 if oversized else 400
        raise FieldError("condition", str(e), status) from None
    if img.mode not in IMAGE_MODES:
        raise FieldError("condition", f"condition: image mode {img.mode} is not accepted; send one of "
                                      f"{', '.join(IMAGE_MODES)} (e.g. a greyscale, RGB or palette PNG)", 415)
    res = cond.resolution
    try:
        arr = prepare_condition(img, cond.preprocessing, (res, res), "condition", notes.append)
    except InputError as e:
        raise FieldError("condition", str(e)) from None
    return arr, notes


def encode_pngs(images: np.ndarray) -> list[str]:
    """(N,C,H,W) in [-1,1] -> base64 PNG strings."""
    from vqdeploy.runtime.images import png_bytes, to_uint8

    return [base64.b64encode(png_bytes(a)).decode("ascii") for a in to_uint8(images)]


def json_number(value: float) -> float | None:
    """Metrics and timings in JSON: NaN has no JSON spelling."""
    return value if math.isfinite(value) else None
