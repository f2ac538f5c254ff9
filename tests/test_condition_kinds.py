"""Conditioning kinds are classes found by name: a kind registered here, in the test, is read from a
manifest, validated and sampled with by the unchanged pipeline (what "adding a kind is one class and
one registration" means), and what the registry refuses."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vqdeploy.artifacts import MANIFEST, Artifacts, read_manifest
from vqdeploy.conditions import CONDITIONS, Condition
from vqdeploy.conditions.registry import register
from vqdeploy.errors import ArtifactError, InputError
from vqdeploy.export.manifest import write_manifest
from vqdeploy.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
from vqdeploy.runtime.pipeline import Pipeline
from vqdeploy.runtime.sampling import SamplingParams
from vqdeploy.schema import integer, list_of, obj


class FixedPrompt(Condition):
    """A made-up kind: the manifest states the condition tokens themselves."""

    kind = "test_fixed_prompt"
    schema = obj({"tokens": integer(1, 16), "prompt": list_of(integer(0, 1 << 20), 1, 16)})
    what = "nothing (a fixed prompt)"

    def __init__(self, entry: Any) -> None:
        super().__init__(entry)
        self.prompt = np.array(entry["prompt"], dtype=np.int64)

    @classmethod
    def from_manifest(cls, entry: Any, where: str) -> Condition:
        if len(entry["prompt"]) != entry["tokens"]:
            cls.fail(f"{where}.prompt", f"{len(entry['prompt'])} tokens, not {entry['tokens']}")
        return cls(entry)

    def check_model(self, vocab_size: int, where: str) -> None:
        if self.prompt.max() >= vocab_size:
            self.fail(f"{where}.prompt", f"not below the vocabulary {vocab_size}")

    def condition_tokens(self, backend: Any, value: Any, batch: int) -> np.ndarray:
        return np.repeat(self.prompt[None], batch, axis=0)


@pytest.fixture
def fixed_prompt_kind():
    register(FixedPrompt)
    try:
        yield FixedPrompt
    finally:
        del CONDITIONS[FixedPrompt.kind]


def _rewrite(src: Path, dst: Path, conditioning: dict[str, Any]) -> Path:
    shutil.copytree(src, dst)
    data = json.loads((dst / MANIFEST).read_text())
    data["model"]["conditioning"] = conditioning
    write_manifest(dst, data)
    return dst


def test_a_kind_registered_here_runs_through_the_unchanged_pipeline(exported, fixed_prompt_kind, tmp_path: Path) -> None:
    _, out, manifest = exported("sos_zcurve")
    sos = manifest.model.condition.sos_token  # the unconditional model's prompt, stated the new way
    art = _rewrite(out, tmp_path / "fixed", {"kind": FixedPrompt.kind, "tokens": 1, "prompt": [sos]})
    typed = read_manifest(art)
    assert isinstance(typed.model.condition, FixedPrompt)
    params = SamplingParams(temperature=1.0, top_k=8)
    new = Pipeline(OnnxRuntimeBackend(Artifacts(art, typed)), typed)(None, num_samples=2, params=params, seed=5)
    old = Pipeline(OnnxRuntimeBackend(Artifacts(out, manifest)), manifest)(None, num_samples=2, params=params, seed=5)
    assert np.array_equal(new.tokens, old.tokens) and np.array_equal(new.images, old.images)
    with pytest.raises(InputError, match=r"this model is conditioned on nothing \(a fixed prompt\): it takes no INPUT"):
        typed.model.condition.read(tmp_path / "x.png")
    # the kind's own checks run when the manifest is read
    bad = _rewrite(out, tmp_path / "bad", {"kind": FixedPrompt.kind, "tokens": 1, "prompt": [1 << 20]})
    with pytest.raises(ArtifactError, match=r"model.conditioning.prompt: not below the vocabulary .* \(re-export\)"):
        read_manifest(bad)


def test_unknown_kinds_and_double_registration_are_refused(exported, tmp_path: Path) -> None:
    _, out, _ = exported("sos_zcurve")
    art = _rewrite(out, tmp_path / "unknown", {"kind": "test_fixed_prompt", "tokens": 1, "prompt": [0]})
    with pytest.raises(ArtifactError, match=r"model.conditioning.kind: expected one of .*\"sos\""):
        read_manifest(art)  # not registered in this test
    with pytest.raises(ValueError, match="registered twice"):
        register(CONDITIONS["sos"])


@pytest.mark.parametrize("name", ["seg", "first_stage", "sos_zcurve", "class_subsample", "coord_identity"])
def test_each_exported_kind_reads_back_as_its_class(exported, name: str) -> None:
    _, out, manifest = exported(name)
    cond = read_manifest(out).model.condition
    assert type(cond) is CONDITIONS[manifest.raw["model"]["conditioning"]["kind"]]
    assert cond.tokens == manifest.raw["model"]["tokens"]["cond"]
    assert set(cond.graphs) <= set(manifest.raw["graphs"])
