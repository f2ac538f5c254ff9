"""Class-conditional models: taming's ``Labelator`` and LlamaGen's class embedding; the class id is the single condition
token. ``null_class`` (optional): the id of the null class a model was trained with (label dropout), which
classifier-free guidance conditions each sample's second row on (LlamaGen: ``num_classes``, the class table's last
row); a model without one cannot be guided."""

from __future__ import annotations

from typing import Any

import numpy as np

from vqdeploy.bounds import MAX_VOCAB
from vqdeploy.conditions.base import ClassId, Condition, ConditionInput, Reading
from vqdeploy.conditions.registry import register
from vqdeploy.errors import InputError
from vqdeploy.schema import integer, obj, one_of


@register
class ClassLabel(Condition):
    kind = "class"
    schema = obj({"n_classes": integer(1, MAX_VOCAB), "tokens": one_of(1)}, {"null_class": integer(1, MAX_VOCAB)})
    what = "a class label"
    value_type = ClassId

    def __init__(self, entry: Any) -> None:
        super().__init__(entry)
        self.n_classes = int(entry["n_classes"])
        null = entry.get("null_class")
        self.null_class = None if null is None else int(null)

    @property
    def summary(self) -> str:
        return "class-conditional"

    @property
    def classes(self) -> int | None:
        return self.n_classes

    def check_model(self, vocab_size: int, where: str) -> None:
        if self.n_classes > vocab_size:
            self.fail(f"{where}.n_classes", f"over the vocabulary {vocab_size}")
        if self.null_class is not None and self.null_class < self.n_classes:
            self.fail(f"{where}.null_class", f"{self.null_class} is one of the {self.n_classes} classes")

    def null_tokens(self) -> np.ndarray | None:
        return None if self.null_class is None else np.array([[self.null_class]], dtype=np.int64)

    # --- input -------------------------------------------------------------------------------------
    def read_class(self, class_id: int, reading: Reading) -> ConditionInput:
        n = self.n_classes
        if not isinstance(class_id, (int, np.integer)) or isinstance(class_id, bool):
            raise InputError(f"{reading.option('class')} must be an integer class id (0..{n - 1})")
        if not 0 <= class_id < n:
            raise InputError(f"{reading.option('class')} {class_id} is out of range (0..{n - 1})")
        return ClassId(int(class_id))

    def read_value(self, value: Any, reading: Reading) -> ConditionInput:
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):  # the library: pipe(281)
            return self.read_class(int(value), reading)
        return super().read_value(value, reading)

    def read_nothing(self, reading: Reading) -> ConditionInput:
        option = reading.option("class") + (" ID" if reading.via == "cli" else "")
        raise InputError(f"this model is class-conditional: pass {option} (0..{self.n_classes - 1})")

    def read_file(self, path: Any, reading: Reading) -> ConditionInput:
        raise InputError(f"this model is class-conditional: it takes no {reading.option('input')}; pass "
                         f"{reading.option('class')} (0..{self.n_classes - 1})")

    # --- tokens and reports -------------------------------------------------------------------------
    def condition_tokens(self, backend: Any, value: ConditionInput, batch: int) -> np.ndarray:
        assert isinstance(value, ClassId)
        return np.full((batch, 1), value.value, dtype=np.int64)

    def as_value(self, batch_input: np.ndarray | None) -> ConditionInput:
        return ClassId(0)

    def text(self) -> str:
        return "class 0"
