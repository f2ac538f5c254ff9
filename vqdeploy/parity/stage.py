"""One stage's verdict: passed or not, what was measured, against which tolerance."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


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


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)
