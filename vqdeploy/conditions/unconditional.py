"""Unconditional models: taming's ``SOSProvider``, one start-of-sequence token per sample."""

from __future__ import annotations

from typing import Any

import numpy as np

from vqdeploy.bounds import MAX_VOCAB
from vqdeploy.conditions.base import Condition, ConditionInput, NoInput
from vqdeploy.conditions.registry import register
from vqdeploy.schema import integer, obj, one_of


@register
class Unconditional(Condition):
    kind = "sos"
    schema = obj({"sos_token": integer(0, MAX_VOCAB - 1), "tokens": one_of(1)})
    what = "nothing"
    value_type = NoInput

    def __init__(self, entry: Any) -> None:
        super().__init__(entry)
        self.sos_token = int(entry["sos_token"])

    @property
    def summary(self) -> str:
        return "unconditional"

    def check_model(self, vocab_size: int, where: str) -> None:
        if self.sos_token >= vocab_size:
            self.fail(f"{where}.sos_token", f"not below the vocabulary {vocab_size}")

    def condition_tokens(self, backend: Any, value: ConditionInput, batch: int) -> np.ndarray:
        return np.full((batch, 1), self.sos_token, dtype=np.int64)

    def text(self) -> str:
        return "none (unconditional)"
