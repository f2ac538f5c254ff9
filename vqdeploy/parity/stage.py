"""One stage's verdict: passed or not, what was measured, against which tolerance."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass
class StageReport:
    stage: str
    passed: bool
    metrics: dict[str, Any] = field(default_factory=dict)
    tolerance: str = ""

    def line(self) -> str:
        vals = ", ".join(f"{k}={_fmt(v)}" for k, v in self.metrics.items())
        return f"{'ok  ' if self.passed else 'FAIL'} {self.stage:<26} {vals}  [{self.tolerance}]"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def greedy_divergence(ref: np.ndarray, tokens: np.ndarray) -> tuple[dict[str, Any], float | None]:
    """Greedy tokens (B, steps) against the reference logits (B, steps, V): the metrics, and the smallest top-2 gap
    of the reference at the first step where they differ (None: identical), which the caller bounds."""
    same = ref.argmax(-1) == tokens
    if same.all():
        return {"identical": True}, None
    first_k = int(np.argmax(~same.all(axis=0)))
    top2 = -np.sort(-ref[:, first_k], axis=-1)[:, :2]
    gap = float((top2[:, 0] - top2[:, 1]).min())
    return {"identical": False, "first_divergence": first_k, "top2_gap_at_divergence": gap}, gap


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)
