"""Loading paths of ``vqdeploy.load_model``: Lightning run layout, run directory, explicit config,
plain state_dict, safetensors; training-only keys; remap tables; private copies of the weights; inert pickles."""

from __future__ import annotations

import os
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file
from taming_runs import FAKE_LOSS_KEYS, NET2NET, VQ, lightning_checkpoint, save_run, write_config

import vqdeploy
from vqdeploy.errors import CheckpointError, ConfigError
from vqdeploy.loading.checkpoint import read_state_dict
from vqdeploy.loading.config import read_config


def assert_same_weights(ours: torch.nn.Module, ref: torch.nn.Module) -> None:
    ours_sd, ref_sd = ours.state_dict(), ref.state_dict()
    assert set(ours_sd) == set(ref_sd)
    for k, v in ref_sd.items():
        assert ours_sd[k].dtype == v.dtype, k
        assert torch.equal(ours_sd[k], v), k


def project_yaml(run_dir: Path) -> Path:
    (path,) = (run_dir / "configs").glob("*-project.yaml")
    return path


def test_lightning_checkpoint_in_run_layout(runs):
    run = runs("vq_attn")
    raw = torch.load(run.ckpt, weights_only=False)  # the fixture really is a Lightning 1.x checkpoint
    assert {"epoch", "global_step", "pytorch-lightning_version", "callbacks", "optimizer_states",
            "lr_schedulers", "state_dict"} <= set(raw)
    assert [c.__module__ + "." + c.__qualname__ for c in raw["callbacks"]] == [
        "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"]
    assert "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint" in \
        torch.serialization.get_unsafe_globals_in_checkpoint(str(run.ckpt))

    model = vqdeploy.load_model(run.ckpt)
    assert model.source.checkpoint == str(run.ckpt.resolve())
    # the *-lightning.yaml beside it is not a model config and is ignored
    assert model.source.config == [str(project_yaml(run.run_dir))]
    assert model.source.target == VQ
    assert model.source.config_data["params"]["n_embed"] == 32
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())
    assert_same_weights(model, run.model)


def test_run_directory(runs):
    run = runs("sos_zcurve")
    model = vqdeploy.load_model(run.run_dir)
    assert model.source.checkpoint == str(run.ckpt.resolve())
    assert model.source.target == NET2NET
    assert_same_weights(model, run.model)


def test_explicit_config_for_checkpoint_outside_a_run(runs, tmp_path):
    run = runs("vq_noattn")
    ckpt = tmp_path / "weights.ckpt"
    shutil.copy(run.ckpt, ckpt)
    with pytest.raises(ConfigError, match="no config for"):
        vqdeploy.load_model(ckpt)
    config = tmp_path / "model.yaml"
    shutil.copy(project_yaml(run.run_dir), config)
    model = vqdeploy.load_model(ckpt, config=config)
    assert model.source.config == [str(config.resolve())]
    assert_same_weights(model, run.model)
    # a mapping works too (the ``model`` node or the whole document)
    assert_same_weights(vqdeploy.load_model(ckpt, config=run.cfg), run.model)
    assert_same_weights(vqdeploy.load_model(ckpt, config={"model": run.cfg}), run.model)


def test_explicit_config_overrides_the_run_config(runs, tmp_path):
    run = runs("vq_noattn")
    wrong = {**run.cfg, "params": {**run.cfg["params"], "n_embed": 64}}
    ckpt = save_run(tmp_path / "run", wrong, run.model.state_dict())
    with pytest.raises(CheckpointError, match=r"quantize\.embedding\.weight' has shape \(32, 8\)"):
        vqdeploy.load_model(ckpt)
    assert_same_weights(vqdeploy.load_model(ckpt, config=project_yaml(run.run_dir)), run.model)


def test_resumed_run_merges_configs_in_timestamp_order(runs, tmp_path):
    run = runs("vq_noattn")
    wrong = {**run.cfg, "params": {**run.cfg["params"], "n_embed": 64}}
    ckpt = save_run(tmp_path / "run", wrong, run.model.state_dict())  # 2021-01-01T00-00-00
    write_config(tmp_path / "run", run.cfg, stamp="2021-02-01T00-00-00")  # the resumed run's, later
    model = vqdeploy.load_model(ckpt)
    assert [Path(p).name for p in model.source.config] == [
        "2021-01-01T00-00-00-project.yaml", "2021-02-01T00-00-00-project.yaml"]
    assert model.quantize.n_e == 32
    assert_same_weights(model, run.model)


@pytest.mark.parametrize("name", ["seg", "vq_remap"])
@torch.no_grad()
def test_plain_state_dict_file(runs, tmp_path, name):
    run = runs(name)
    path = tmp_path / "model.pt"
    torch.save(run.model.state_dict(), path)
    with pytest.raises(ConfigError, match="no config for"):
        vqdeploy.load_model(path)
    model = vqdeploy.load_model(path, config=project_yaml(run.run_dir))
    assert_same_weights(model, run.model)
    if name == "seg":
        assert torch.equal(model.encode_to_c(run.c)[1], run.model.encode_to_c(run.c)[1])


@pytest.mark.parametrize("name", ["vq_attn", "class_subsample"])
@torch.no_grad()
def test_safetensors_with_explicit_config(runs, tmp_path, name):
    run = runs(name)
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in run.model.state_dict().items()}, str(path))
    model = vqdeploy.load_model(path, config=project_yaml(run.run_dir))
    assert model.source.checkpoint == str(path.resolve())
    assert_same_weights(model, run.model)
    if name == "class_subsample":
        assert torch.equal(model.encode_to_z(run.x)[1], run.model.encode_to_z(run.x)[1])
    else:
        b = run.x.shape[0]
        assert torch.equal(model.encode_indices(run.x).view(b, -1), run.model.encode(run.x)[2][2].view(b, -1))


def test_loss_keys_are_ignored_but_other_extra_keys_are_not(runs, tmp_path):
    run = runs("seg")
    sd = read_state_dict(run.ckpt)
    for prefix in ("first_stage_model.", "cond_stage_model."):
        assert all(prefix + k in sd for k in FAKE_LOSS_KEYS)
    assert_same_weights(vqdeploy.load_model(run.ckpt), run.model)

    vq = runs("vq_noattn")
    sd = dict(vq.model.state_dict())
    sd["loss.discriminator.main.2.weight"] = torch.randn(4, 4)
    sd["lossy.weight"] = torch.randn(2)  # only a ``loss.`` path segment is training-only
    ckpt = save_run(tmp_path / "run", vq.cfg, sd)
    with pytest.raises(CheckpointError, match="unexpected weight 'lossy.weight'"):
        vqdeploy.load_model(ckpt)


def test_remap_table_comes_from_the_checkpoint(runs, tmp_path):
    run = runs("vq_remap")
    cfg = {**run.cfg, "params": {**run.cfg["params"], "remap": str(tmp_path / "nowhere" / "used.npy")}}
    ckpt = save_run(tmp_path / "run", cfg, run.model.state_dict())
    model = vqdeploy.load_model(ckpt)
    assert torch.equal(model.quantize.used, torch.from_numpy(run.extra["used"]))
    assert model.vocab_size == 10


def test_remap_table_from_used_npy_when_the_checkpoint_predates_it(runs, tmp_path):
    """Post-hoc remapping: the config names used.npy, the checkpoint has no ``quantize.used`` (upstream
    loads it with strict=False and keeps the table read from the file)."""
    run = runs("vq_remap")
    used = np.array([1, 4, 9, 16, 25], dtype=np.int64)
    np.save(tmp_path / "used.npy", used)
    cfg = {**run.cfg, "params": {**run.cfg["params"], "remap": str(tmp_path / "used.npy")}}
    sd = {k: v for k, v in run.model.state_dict().items() if k != "quantize.used"}
    ckpt = save_run(tmp_path / "run", cfg, sd)
    model = vqdeploy.load_model(ckpt)
    assert torch.equal(model.quantize.used, torch.from_numpy(used))
    assert model.vocab_size == 5
    assert int(model.encode_indices(run.x).max()) < 5
    # without the file there is no table at all: a clear error
    cfg["params"]["remap"] = str(tmp_path / "missing.npy")
    ckpt = save_run(tmp_path / "run2", cfg, sd)
    with pytest.raises(ConfigError, match="missing.npy not found"):
        vqdeploy.load_model(ckpt)


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc/self/maps (Linux)")
def test_weights_are_read_into_private_memory_not_mapped(runs):
    """load_model copies the model's weights out of the checkpoint with positioned reads (a memory map
    of a file that a training job truncates is a SIGBUS): no mapping of last.ckpt remains, and every
    tensor owns ordinary memory (the peak-RSS measurement is in vqdeploy/loading/checkpoint.py)."""
    run = runs("seg")
    model = vqdeploy.load_model(run.ckpt)
    target = os.path.realpath(run.ckpt)
    mapped = [line for line in Path("/proc/self/maps").read_text().splitlines() if line.endswith(" " + target)]
    assert mapped == [], "the checkpoint is memory-mapped"
    tensors = model.state_dict()
    assert len(tensors) > 100
    assert all(t.device.type == "cpu" and t.untyped_storage().nbytes() > 0 for t in tensors.values())


def test_framework_globals_are_inert_placeholders(runs, tmp_path, monkeypatch):
    """A global inside an allowed framework namespace is never imported or called."""
    marker = tmp_path / "pwned"
    mod = types.ModuleType("pytorch_lightning.utilities.evil")

    def run_payload(path):  # what a malicious 'framework' function would do
        Path(path).write_text("pwned")
        return {}

    run_payload.__module__ = mod.__name__
    run_payload.__qualname__ = "run_payload"
    mod.run_payload = run_payload
    monkeypatch.setitem(sys.modules, mod.__name__, mod)

    class Payload:
        def __reduce__(self):
            return (run_payload, (str(marker),))

    run = runs("vq_noattn")
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    save_run(tmp_path / "run", run.cfg, run.model.state_dict())
    torch.save(lightning_checkpoint(dict(run.model.state_dict()), hyper_parameters=Payload()), ckpt)
    assert "pytorch_lightning.utilities.evil.run_payload" in \
        torch.serialization.get_unsafe_globals_in_checkpoint(str(ckpt))

    model = vqdeploy.load_model(ckpt)
    assert_same_weights(model, run.model)
    assert not marker.exists()
    # the payload is real: an unrestricted torch.load runs it
    torch.load(ckpt, weights_only=False)
    assert marker.read_text() == "pwned"


def test_config_document_shapes(runs, tmp_path):
    """A *-project.yaml as taming writes it (model + data + base_learning_rate) reads back the model node."""
    run = runs("vq_noattn")
    doc = yaml.safe_load(project_yaml(run.run_dir).read_text())
    assert set(doc) == {"model", "data"}
    assert doc["model"]["base_learning_rate"] == 4.5e-6
    node = read_config(project_yaml(run.run_dir))
    assert node["target"] == VQ and node["params"]["ddconfig"]["ch"] == 32
