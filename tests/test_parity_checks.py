"""The parity checks can fail: corrupted backends are caught stage by stage, and an export whose
graphs do not match is not installed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import reuse_graphs

from vqdeploy.artifacts import Artifacts
from vqdeploy.errors import ParityError
from vqdeploy.export import exporter
from vqdeploy.families import load_reference
from vqdeploy.parity.checks import StageReport, check_backend
from vqdeploy.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
from vqdeploy.runtime.backends.torch_backend import TorchBackend


class Corrupt:
    """Wraps a backend and damages one stage."""

    def __init__(self, inner, stage: str) -> None:
        self.inner, self.stage = inner, stage
        self.name, self.device = "corrupt", "cpu"

    def encode(self, image):
        z = self.inner.encode(image)
        if self.stage == "encoder":
            z = z.copy()
            z.flat[::3] = (z.flat[::3] + 1) % 32  # a third of the tokens moved to another code
        return z

    def encode_cond(self, c):
        return self.inner.encode_cond(c)

    manifest = property(lambda s: s.inner.manifest)
    emulation = None

    def has_graph(self, name):
        return self.inner.has_graph(name)

    def synchronize(self):
        self.inner.synchronize()

    def device_decoding(self, params, noise):
        return None

    def max_batch(self, graph):
        return self.inner.max_batch(graph)

    def run_graph(self, name, arrays):
        out = self.inner.run_graph(name, arrays)
        if self.stage == "sampler" and name == "sampler":
            out["tokens"][::2] = (out["tokens"][::2] + 1) % arrays["logits"].shape[-1]  # every other sample
        return out

    def decode(self, idx):
        x = self.inner.decode(idx)
        return x + 0.05 if self.stage == "decoder" else x

    def transformer(self):
        runner = self.inner.transformer()
        if self.stage != "transformer":
            return runner

        class Noisy:
            length = property(lambda s: runner.length)

            def reset(s, b):
                runner.reset(b)

            def forward(s, tokens):
                out = runner.forward(tokens)
                return out + np.random.default_rng(tokens.size).normal(0, 0.5, out.shape).astype(np.float32)

        return Noisy()


@pytest.mark.parametrize("stage,failing", [
    ("encoder", {"encoder"}),
    ("decoder", {"decoder"}),
    ("transformer", {"transformer_teacher_forced", "transformer_kv_steps"}),
    ("sampler", {"sampler_graph"}),
])
def test_corrupted_stage_fails_its_check(exported, stage: str, failing: set[str]) -> None:
    _, out, manifest = exported("first_stage")
    reference = TorchBackend(load_reference(manifest), manifest)
    reports = check_backend(reference, Corrupt(OnnxRuntimeBackend(Artifacts(out, manifest)), stage), manifest.model, "fp32")
    assert {r.stage for r in reports if not r.passed} >= failing
    assert "sampler_graph" in {r.stage for r in reports}
    good = check_backend(reference, OnnxRuntimeBackend(Artifacts(out, manifest)), manifest.model, "fp32")
    assert all(r.passed for r in good)


def test_export_beyond_tolerance_fails_and_installs_nothing(exported, tmp_path: Path, monkeypatch) -> None:
    run, graphs, _ = exported("class_subsample")
    reuse_graphs(monkeypatch, graphs)
    monkeypatch.setattr(exporter, "check_backend",
                        lambda *a, **k: [StageReport("decoder", False, {"psnr_db": 12.0}, "PSNR >= 60 dB")])
    with pytest.raises(ParityError, match="do not match"):
        exporter.export(run.ckpt, tmp_path / "art", log=lambda m: None)
    assert not (tmp_path / "art").exists()
    report = json.loads((tmp_path / "art.parity-failed.json").read_text())
    assert report["passed"] is False and report["stages"][0]["stage"] == "decoder"
    assert [p.name for p in tmp_path.iterdir()] == ["art.parity-failed.json"]
