"""Tensor names, dtypes and symbolic shapes shared by the export, the manifest and the runtimes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vqdeploy.errors import InputError


@dataclass(frozen=True)
class Dim:
    """A dynamic dimension; spatial ones count latent cells and ``scale`` pixels per cell."""

    min: int
    opt: int
    max: int
    scale: int = 1


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int | str, ...]  # a str names a dim; "name*k" scales it; outputs may use "a+b"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TensorSpec:
        return cls(str(d["name"]), str(d["dtype"]), tuple(d["shape"]))

    def concrete(self, dims: Mapping[str, int]) -> tuple[int, ...]:
        return tuple(d if isinstance(d, int) else eval_dim(d, dims) for d in self.shape)


def eval_dim(expr: str, dims: Mapping[str, int]) -> int:
    if "+" in expr:
        return sum(eval_dim(e, dims) for e in expr.split("+"))
    if "*" in expr:
        name, k = expr.split("*")
        return dims[name] * int(k)
    return dims[expr]


def bind_dims(specs: Sequence[TensorSpec], shapes: Sequence[Sequence[int]], graph: str) -> dict[str, int]:
    """Solve the symbolic dims from actual input shapes; a mismatch is the caller's input error."""
    dims: dict[str, int] = {}
    for spec, shape in zip(specs, shapes):
        if len(shape) != len(spec.shape):
            raise InputError(f"{graph}: input '{spec.name}' must have {len(spec.shape)} dims, got shape {tuple(shape)}")
        for want, got in zip(spec.shape, shape):
            if isinstance(want, int):
                if want != got:
                    raise InputError(f"{graph}: input '{spec.name}' has shape {tuple(shape)}, expected {spec.shape}")
                continue
            name, _, k = want.partition("*")
            scale = int(k) if k else 1
            if got % scale:
                raise InputError(f"{graph}: input '{spec.name}' size {got} is not a multiple of {scale}")
            value = got // scale
            if dims.setdefault(name, value) != value:
                raise InputError(f"{graph}: inconsistent '{name}' across inputs")
    return dims
