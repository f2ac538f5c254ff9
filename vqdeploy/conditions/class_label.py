"""Class-conditional models: taming's ``Labelator``, the class id is the single condition token."""

from __future__ import annotations

from typing import Any

import numpy as np

from vqdeploy.conditions.base import Condition
from vqdeploy.conditions.registry import register
from vqdeploy.errors import InputError
from vqdeploy.export.manifest_schema import MAX_VOCAB
from vqdeploy.schema import integer, obj, one_of


@register
class ClassLabel(Condition):
    kind = "class"
    schema = obj({"n_classes": integer(1, MAX_VOCAB), "tokens": one_of(1)})
    what = "a class label"

    def __init__(self, entry: Any) -> None:
        super().__init__(entry)
        self.n_classes = int(entry["n_classes"])

    @property
    def summary(self) -> str:
        return "class-conditional"

    @property
    def classes(self) -> int | None:
        return self.n_classes

    def check_model(self, vocab_size: int, where: str) -> None:
        if self.n_classes > vocab_size:
            self.fail(f"{where}.n_classes", f"over the vocabulary {vocab_size}")

    @classmethod
    def from_model(cls, model: Any) -> dict[str, Any] | None:
        from vqdeploy.models.conditioning import Labelator

        cond = model.cond_stage_model
        return {"kind": cls.kind, "n_classes": cond.n_classes, "tokens": 1} if isinstance(cond, Labelator) else None

    def check_class(self, class_id: int | None, option: str = "--class") -> None:
        n = self.n_classes
        if class_id is None:
            raise InputError(f"this model is class-conditional: pass {option} ID (0..{n - 1})")
        if not 0 <= class_id < n:
            raise InputError(f"{option} {class_id} is out of range (0..{n - 1})")

    def condition_tokens(self, backend: Any, batch: int, condition: np.ndarray | None,
                         class_id: int | None) -> np.ndarray:
        self.check_class(class_id)
        return np.full((batch, 1), class_id, dtype=np.int64)

    def text(self) -> str:
        return "class 0"
