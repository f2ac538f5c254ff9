"""tools/divergence_check.py: the tool that placed the first GPU run's odd image on a CDF boundary (and led to the
TF32 fix). Its margin arithmetic against the sampler's own draw, and a sampled run of two backends with logits."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from vqdeploy.runtime.sampling import SamplingParams, next_tokens

ROOT = Path(__file__).resolve().parents[1]


def _tool():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("divergence_check", ROOT / "tools" / "divergence_check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_margin_is_the_distance_to_the_nearest_cdf_step() -> None:
    tool = _tool()
    params = SamplingParams(top_k=3)
    logits = np.log(np.array([0.1, 0.4, 0.3, 0.2]))  # top-3 keeps 0.4, 0.3, 0.2 -> renormalised 4/9, 3/9, 2/9
    for u, want_margin in [(0.44, 4 / 9 - 0.44), (0.5, 0.5 - 4 / 9), (0.9, 1.0 - 0.9)]:
        token, margin, kept = tool.boundary_margin(logits, u, params)
        assert token == int(next_tokens(logits[None], np.array([u]), params)[0])  # the sampler's own draw
        assert margin == pytest.approx(want_margin, abs=1e-12)
        assert kept == {1, 2, 3}
    # a uniform a hair below a step draws the token before it, and the margin says how near the flip was
    token, margin, _ = tool.boundary_margin(logits, 4 / 9 - 1e-7, params)
    assert (token, margin) == (1, pytest.approx(1e-7, rel=1e-3))


def test_two_cpu_backends_sample_the_same_tokens(demo_export: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """ONNX Runtime and PyTorch on the CPU, 2 samples of the demo with top-k 100: the same tokens, and logits within
    the fp32 parity bound all the way (measured 1.5e-5; the bound is 1e-4 x max |logit|, about 1.3e-3 here)."""
    out = tmp_path / "div.json"
    monkeypatch.setattr(sys, "argv", ["divergence_check", "--artifacts", str(demo_export), "--a", "onnxruntime:cpu",
                                      "--b", "torch:cpu", "--num-samples", "2", "--json", str(out), "--condition",
                                      str(ROOT / "models/demo/sketches/07_house-square-circle_horizon.png")])
    assert _tool().main() == 0
    found = json.loads(out.read_text())
    assert [s["identical"] for s in found["samples"]] == [True, True]
    assert found["steps_before_any_divergence"] == found["steps"] == 64
    assert 0 < found["max_abs_logit_diff_before_divergence"] < 1e-4
