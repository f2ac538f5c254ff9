"""A generate request from untrusted form or JSON fields: every field checked where it enters, every
error naming its field, nothing written to disk (the condition is decoded from memory)."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vqdeploy.artifacts import ModelInfo
from vqdeploy.conditions import ClassId, ConditionInput, Reading
from vqdeploy.errors import InputError, TooLargeError, UnsupportedInputError
from vqdeploy.images import parse_size, png_bytes, to_uint8
from vqdeploy.limits import (
    MAX_CFG_INTERVAL,
    MAX_CFG_SCALE,
    MAX_SEED,
    MAX_TOP_K,
    check_finite,
    check_int,
    condition_budget,
)
from vqdeploy.runtime.generation import Request, check_size
from vqdeploy.runtime.sampling import DEFAULT_NUM_SAMPLES, DEFAULT_SEED, SamplingParams

FIELDS = ("condition", "seed", "num_samples", "temperature", "top_k", "top_p", "cfg_scale", "cfg_interval", "class_id",
          "size", "partial_every")


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
    size: tuple[int, int] | None = None  # (H, W) pixels: larger than the trained size samples a sliding window
    condition: ConditionInput | None = None  # the kind's value, read by ``read_condition``
    partial_every: int = 0  # stream a partial decode every N token rows (0: none)
    notes: list[str] = field(default_factory=list)

    def sampling(self) -> Request:
        """The request as the generation path takes it (after ``read_condition``)."""
        assert self.condition is not None, "read the condition first"
        return Request(self.condition, self.num_samples, self.params, self.seed, self.size)


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


def parse_fields(fields: dict[str, Any], info: ModelInfo, max_samples: int,
                 max_pixels: int | None = None) -> GenerateRequest:
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
    cfg_scale, cfg_interval = defaults.cfg_scale, defaults.cfg_interval
    if not _absent(fields.get("cfg_scale")):
        cfg_scale = _float(fields["cfg_scale"], "cfg_scale", low=1.0, high=MAX_CFG_SCALE)
    if not _absent(fields.get("cfg_interval")):
        cfg_interval = _int(fields["cfg_interval"], "cfg_interval", -1, MAX_CFG_INTERVAL)
    try:
        req.params = SamplingParams(temperature, top_k, top_p, cfg_scale, cfg_interval)
    except InputError as e:
        raise FieldError("temperature", str(e)) from None  # the one rule between fields: a tiny temperature
    cond, _ = info.sampling()
    try:
        cond.check_guidance(req.params.guided, "cfg_scale")
    except InputError as e:
        raise FieldError("cfg_scale", str(e)) from None
    if not _absent(fields.get("partial_every")):
        req.partial_every = _int(fields["partial_every"], "partial_every", 0, 1 << 16)
    if not _absent(fields.get("size")):
        try:
            req.size = parse_size(str(fields["size"]), "size")
            check_size(info, req.size, max_pixels)  # type: ignore[arg-type]
        except InputError as e:
            raise FieldError("size", str(e).replace("--size", "size"), 413 if isinstance(e, TooLargeError) else 400) \
                from None
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


def read_condition(data: bytes | None, req: GenerateRequest, info: ModelInfo, max_pixels: int | None = None) -> None:
    """The request's condition from the uploaded bytes (or the class id, or nothing), read by its kind exactly as
    ``vqdeploy run`` reads a file (resized to the size sampled, the same notes), into ``req``. An input over a
    size limit answers 413, one of a mode or type the model does not take 415, anything else wrong 400."""
    cond, _ = info.sampling()
    raw: Any = data or None
    if req.class_id is not None:
        if raw is not None:
            raise FieldError("condition", "this model is class-conditional: it takes class_id, not a condition upload")
        raw = ClassId(req.class_id)
    try:
        req.condition = cond.read(raw, Reading(req.size, condition_budget(info, max_pixels), req.notes.append, "http"))
    except TooLargeError as e:
        raise FieldError("condition", str(e), 413) from None
    except UnsupportedInputError as e:
        raise FieldError("condition", str(e), 415) from None
    except InputError as e:
        raise FieldError("condition", str(e)) from None


def encode_pngs(images: np.ndarray) -> list[str]:
    """(N,C,H,W) in [-1,1] -> base64 PNG strings."""
    return [base64.b64encode(png_bytes(a)).decode("ascii") for a in to_uint8(images)]
