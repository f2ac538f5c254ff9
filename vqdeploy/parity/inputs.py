"""Seeded inputs for parity checks and benchmarks: image-like fields for the first stage (``conditions.synthetic``)
and each kind's condition (its ``parity_input``)."""

from __future__ import annotations

import numpy as np

from vqdeploy.artifacts import ModelInfo
from vqdeploy.conditions import ConditionInput
from vqdeploy.conditions.synthetic import smooth_field


def parity_inputs(model_info: ModelInfo, seed: int = 0, batch: int = 2) -> dict[str, np.ndarray]:
    """Images for the first stage and the preprocessed condition (its kind's ``parity_input``)."""
    rng = np.random.default_rng(seed)
    first = model_info.first_stage
    out = {"image": smooth_field(rng, batch, first.in_channels, first.resolution)}
    if model_info.condition is not None:
        cond = model_info.condition.parity_input(rng, batch, first, out["image"])
        if cond is not None:
            out["cond"] = cond
    return out


def sample_condition(info: ModelInfo, seed: int = 0) -> ConditionInput:
    """One condition (the kind's value) for ``parity``/``bench`` pipelines."""
    cond, _ = info.sampling()
    x = parity_inputs(info, seed).get("cond")
    return cond.as_value(None if x is None else x[:1])
