"""Configs and checkpoints are untrusted input (issue 11): no side channel in config resolution, a
budget on every size a config controls (checked before building), every malformed checkpoint is a
``CheckpointError``, the legacy format is named, a symlinked ``last.ckpt`` keeps its own run's
config, and a checkpoint that changes while it is read is reported (never a SIGBUS).

Most cases use the bundled demo run, copied to tmp; the CLI contract is one ``error:`` line on
stderr, a non-zero exit and no traceback.
"""

from __future__ import annotations

import copy
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from fuzzing import examples
from taming_runs import save_run

import vqdeploy
from vqdeploy.errors import CheckpointError, ConfigError, VQDeployError
from vqdeploy.families.taming.describe import describe
from vqdeploy.loading.checkpoint import read_state_dict
from vqdeploy.loading.config import read_config
from vqdeploy.loading.config_tree import MAX_CONFIG_BYTES

DEMO = Path(__file__).resolve().parent.parent / "models" / "demo"
(DEMO_YAML,) = (DEMO / "configs").glob("*-project.yaml")
SECRET_ENV = "VQDEPLOY_TEST_SECRET"
SECRET = "hunter2-s3cr3t-7f1e"
PERMUTER = "taming.modules.transformer.permuter."


def demo_doc() -> dict[str, Any]:
    return yaml.safe_load(DEMO_YAML.read_text())


@pytest.fixture(scope="module")
def demo_ckpt(tmp_path_factory) -> Path:
    """A private copy of the demo checkpoint (runs below link to it)."""
    path = tmp_path_factory.mktemp("demo_ckpt") / "last.ckpt"
    shutil.copy(DEMO / "checkpoints" / "last.ckpt", path)
    return path


def make_run(root: Path, doc: dict[str, Any] | str, ckpt: Path, name: str = "run") -> Path:
    """``root/name`` with ``doc`` as its project.yaml and ``checkpoints/last.ckpt`` a symlink to ``ckpt``."""
    run = root / name
    (run / "configs").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    text = doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False)
    (run / "configs" / "2025-01-01T00-00-00-project.yaml").write_text(text)
    (run / "checkpoints" / "last.ckpt").symlink_to(ckpt)
    return run


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k != "VQDEPLOY_DEBUG"}
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "vqdeploy", *args], capture_output=True, text=True, check=False,
                          timeout=timeout, env=full)


def assert_one_error_line(proc: subprocess.CompletedProcess, pattern: str) -> str:
    assert proc.returncode not in (0, 2), proc.stderr  # 2: internal error
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "internal error" not in lines[0]
    assert re.search(pattern, lines[0]), lines[0]
    return lines[0]


# ------------------------------------------------------------------------------------------------
# config resolution: plain interpolation only
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value, resolver", [
    ("${oc.env:" + SECRET_ENV + "}", "oc.env"),
    ("${oc.env:" + SECRET_ENV + ",fallback}", "oc.env"),
    ("prefix_${oc.env:" + SECRET_ENV + "}_suffix", "oc.env"),
    ("${oc.decode:'${oc.env:" + SECRET_ENV + "}'}", "oc.decode"),
    ("${oc.create:{a: 1}}", "oc.create"),
    ("${oc.select:model.target}", "oc.select"),
    ("${my_resolver:1,2}", "my_resolver"),
])
def test_resolvers_are_refused_naming_the_key(tmp_path, monkeypatch, value, resolver):
    monkeypatch.setenv(SECRET_ENV, SECRET)
    doc = demo_doc()
    doc["model"]["params"]["cond_stage_key"] = value
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError) as info:
        read_config(path)
    msg = str(info.value)
    assert "'model.params.cond_stage_key'" in msg and f"resolver '{resolver}'" in msg
    assert "resolve the YAML first" in msg and "\n" not in msg and SECRET not in msg


@pytest.mark.parametrize("value", ["${a.${b}}", "${ foo bar }", "${}", "${a", "${model.params[x]}", "${...x}"])
def test_other_non_plain_interpolations_are_refused(tmp_path, value):
    doc = demo_doc()
    doc["model"]["params"]["cond_stage_key"] = value
    with pytest.raises(ConfigError, match=r"model\.params\.cond_stage_key"):
        read_config(doc)


def test_env_secret_never_reaches_the_manifest_or_the_cli(tmp_path, demo_ckpt):
    doc = demo_doc()
    doc["model"]["params"]["cond_stage_key"] = "${oc.env:" + SECRET_ENV + "}"
    run = make_run(tmp_path, doc, demo_ckpt)
    proc = run_cli("inspect", str(run), env={SECRET_ENV: SECRET})
    line = assert_one_error_line(proc, r"model\.params\.cond_stage_key.*oc\.env.*resolve the YAML first")
    assert SECRET not in proc.stdout + proc.stderr and SECRET not in line


def test_plain_interpolations_resolve_as_omegaconf_does(tmp_path, demo_ckpt):
    doc = demo_doc()
    p = doc["model"]["params"]
    p["shared"] = {"n_embed": 256, "ddconfig": p["first_stage_config"]["params"]["ddconfig"]}
    p["first_stage_config"]["params"]["n_embed"] = "${model.params.shared.n_embed}"  # absolute
    p["first_stage_config"]["params"]["ddconfig"] = "${model.params.shared.ddconfig}"  # a whole mapping
    p["cond_stage_config"]["params"]["n_embed"] = "${..embed_size}"  # relative
    p["cond_stage_config"]["embed_size"] = 256
    p["transformer_config"]["params"]["block_size"] = "${model.params.sizes[1]}"  # list index
    p["sizes"] = [64, 128]
    p["cond_stage_key"] = "${.first_stage_key}_${model.params.sizes.0}"  # string interpolation
    p["escaped"] = "\\${not.an.interpolation}"
    run = make_run(tmp_path, doc, demo_ckpt)
    model = vqdeploy.load_model(run)
    node = model.source.config_data["params"]
    assert node["first_stage_config"]["params"]["n_embed"] == 256
    assert node["first_stage_config"]["params"]["ddconfig"]["ch_mult"] == [1, 2, 2, 2]
    assert node["cond_stage_config"]["params"]["n_embed"] == 256
    assert node["transformer_config"]["params"]["block_size"] == 128
    assert node["cond_stage_key"] == "image_64" and node["escaped"] == "${not.an.interpolation}"
    # the same as OmegaConf's own resolution of that document
    from omegaconf import OmegaConf

    ref = OmegaConf.to_container(OmegaConf.create(doc), resolve=True)["model"]
    assert model.source.config_data == ref


def test_resumed_run_merges_with_interpolations_across_files(tmp_path, demo_ckpt):
    doc = demo_doc()
    doc["model"]["params"]["transformer_config"]["params"]["n_layer"] = 99  # wrong, replaced below
    doc["model"]["params"]["first_stage_config"]["params"]["ddconfig"]["ch_mult"] = [1, 2, 2, 2, 2, 2]
    run = make_run(tmp_path, doc, demo_ckpt)
    later = {"model": {"params": {"layers": 4, "transformer_config": {"params": {"n_layer": "${model.params.layers}"}},
                                  "first_stage_config": {"params": {"ddconfig": {"ch_mult": [1, 2, 2, 2]}}}}}}
    (run / "configs" / "2025-02-01T00-00-00-project.yaml").write_text(yaml.safe_dump(later))
    model = vqdeploy.load_model(run)  # dicts merged recursively, later wins, lists replaced
    assert model.transformer.n_layer == 4 and len(model.first_stage_model.ddconfig["ch_mult"]) == 4
    assert len(model.source.config) == 2


def test_interpolation_cycle_is_one_clear_line(tmp_path):
    doc = demo_doc()
    doc["model"]["params"]["a"] = "${model.params.b}"
    doc["model"]["params"]["b"] = "${model.params.a}"
    with pytest.raises(ConfigError, match=r"interpolation cycle: model\.params\.a -> model\.params\.b -> "
                                          r"model\.params\.a"):
        read_config(doc)
    doc["model"]["params"] = {"x": "${model.params}"}  # a node that contains itself
    with pytest.raises(ConfigError, match="interpolation cycle"):
        read_config(doc)


def _doubling(kind: str, levels: int = 40) -> str:
    lines = ["model:", "  target: taming.models.vqgan.VQModel", "  params:"]
    if kind == "string":
        lines.append("    a0: xxxxxxxxxxxxxxxx")
        lines += [f"    a{i}: ${{model.params.a{i - 1}}}${{model.params.a{i - 1}}}" for i in range(1, levels)]
    elif kind == "list":
        lines.append("    a0: [1, 2]")
        lines += [f"    a{i}: ['${{model.params.a{i - 1}}}', '${{model.params.a{i - 1}}}']" for i in range(1, levels)]
    else:  # YAML aliases (billion laughs)
        lines.append("    a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]")
        lines += [f"    a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("kind", ["string", "list", "alias"])
def test_expansion_bombs_fail_fast_in_bounded_memory(tmp_path, kind):
    """A ~2 KB config that expands to 2^40 values or characters: refused at the budget, quickly, in a
    child process whose peak RSS stays far below what the expansion needs."""
    path = tmp_path / "bomb.yaml"
    path.write_text(_doubling(kind))
    assert path.stat().st_size < 3000
    code = textwrap.dedent(f"""
        import resource, sys, time
        from vqdeploy.errors import ConfigError
        from vqdeploy.loading.config import read_config
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t = time.time()
        try:
            read_config({str(path)!r})
        except ConfigError as e:
            print(str(e))
        grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024
        print(f"{{time.time() - t:.2f}} {{grown}}")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    message, numbers = proc.stdout.strip().splitlines()
    seconds, grown_mb = numbers.split()
    assert re.search(r"more than \d+ (values|characters of text)", message), message
    assert float(seconds) < 20 and int(grown_mb) < 1024, numbers


def test_config_file_size_is_capped(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("model:\n  target: x\n  params:\n    pad: '" + "x" * MAX_CONFIG_BYTES + "'\n")
    with pytest.raises(ConfigError, match=rf"larger than {MAX_CONFIG_BYTES} bytes"):
        read_config(path)


@pytest.mark.parametrize("text, pattern", [
    ("model: &m\n  target: x\n  params: {self: *m}\n", "nested deeper than"),  # a recursive alias
    ("model:\n  target: x\n  params: {n: " + "[" * 5000 + "]" * 5000 + "}\n", "nest|YAML|recursion"),
    ("model:\n  target: x\n  params: {n: 1" + "0" * 5000 + "}\n", "digits"),
    ("model:\n  target: x\n  params: {b: !!binary aGVsbG8=}\n", "holds a bytes"),
    ("model:\n  target: x\n  params: {p: !!python/object/apply:os.system [touch /tmp/pwned]}\n", "not valid YAML"),
    ("model:\n  target: x\n  target: y\n", "duplicate key"),
])
def test_hostile_yaml_is_one_config_error(tmp_path, text, pattern):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=pattern) as info:
        read_config(path)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------------
# size budgets, checked before building
# ------------------------------------------------------------------------------------------------
PERMUTERS = ["ZCurve", "Subsample", "SpiralOut", "SpiralIn", "Random", "AlternateParsing"]


@pytest.mark.parametrize("name", PERMUTERS)
def test_huge_permuter_grid_is_refused_before_building(tmp_path, demo_ckpt, name):
    doc = demo_doc()
    doc["model"]["params"]["permuter_config"] = {"target": PERMUTER + name, "params": {"H": 30000, "W": 30000}}
    run = make_run(tmp_path, doc, demo_ckpt)
    t = time.time()
    with pytest.raises(ConfigError) as info:
        vqdeploy.load_model(run)
    assert time.time() - t < 10
    assert str(info.value) == (f"invalid config: permuter {name}: H*W = 30000x30000 = 900000000 tokens does not fit "
                               "the transformer's block_size 128")
    # on its own (no transformer to compare with) the hard cap applies
    with pytest.raises(ConfigError, match=rf"permuter {name}: H\*W = 30000x30000 = 900000000 tokens, over the limit"):
        vqdeploy.load_model(demo_ckpt, config={"target": PERMUTER + name, "params": {"H": 30000, "W": 30000}})


@pytest.mark.parametrize("name, hw, pattern", [
    ("SpiralOut", (4, 8), "needs a square grid"), ("SpiralIn", (3, 3), "needs an even side"),
    ("Subsample", (6, 6), "power of two"), ("ZCurve", (0, 8), "H must be a positive integer"),
    ("Random", ("8", 8), "H must be a positive integer"),
])
def test_permuter_grid_shape_errors_are_config_errors(tmp_path, demo_ckpt, name, hw, pattern):
    cfg = {"target": PERMUTER + name, "params": {"H": hw[0], "W": hw[1]}}
    with pytest.raises(ConfigError, match=rf"permuter {name}: .*{pattern}"):
        vqdeploy.load_model(demo_ckpt, config=cfg)


FS = ("first_stage_config", "params")
DD = (*FS, "ddconfig")
GPT_P = ("transformer_config", "params")


@pytest.mark.parametrize("where, value, pattern", [
    ((*GPT_P, "n_layer"), 10**9, r"n_layer = 1000000000, expected an integer in 1\.\.1024"),
    ((*GPT_P, "block_size"), 10**9, r"block_size = 1000000000"),
    ((*GPT_P, "n_head"), 7, r"n_embd = 192 is not a multiple of n_head = 7"),
    ((*GPT_P, "n_embd"), -1, r"n_embd = -1"),
    ((*GPT_P, "vocab_size"), 2**40, r"vocab_size"),
    ((*DD, "num_res_blocks"), 10**6, r"num_res_blocks = 1000000"),
    ((*DD, "ch_mult"), [1] * 1000, r"ch_mult = .*expected a list of 1 to 16"),
    ((*DD, "ch_mult"), [1, 2, 10**9], r"ch_mult entry 1000000000"),
    ((*DD, "resolution"), 10**9, r"resolution = 1000000000"),
    ((*DD, "resolution"), 4, r"resolution 4 is smaller than the downsampling factor 8"),
    ((*DD, "ch"), 33, r"ch = 33 must be a multiple of 32"),
    ((*DD, "attn_resolutions"), list(range(1000)), r"attn_resolutions = .*at most 64"),
    ((*DD, "z_channels"), 0, r"z_channels = 0"),
    ((*FS, "n_embed"), 10**12, r"n_embed = 1000000000000"),
    ((*FS, "embed_dim"), True, r"embed_dim = True"),
    (("downsample_cond_size",), 10**9, r"downsample_cond_size"),
])
def test_config_numbers_are_checked_before_building(tmp_path, demo_ckpt, where, value, pattern):
    doc = demo_doc()
    node = doc["model"]["params"]
    for k in where[:-1]:
        node = node[k]
    node[where[-1]] = value
    t = time.time()
    with pytest.raises(ConfigError, match=pattern) as info:
        vqdeploy.load_model(make_run(tmp_path, doc, demo_ckpt))
    assert time.time() - t < 10 and "\n" not in str(info.value)


def test_latent_grid_must_fit_the_block_size(tmp_path, demo_ckpt):
    doc = demo_doc()
    doc["model"]["params"]["first_stage_config"]["params"]["ddconfig"]["resolution"] = 2048
    with pytest.raises(ConfigError, match=r"latent grid 256x256 = 65536 tokens does not fit .* block_size 128"):
        vqdeploy.load_model(make_run(tmp_path, doc, demo_ckpt))


def test_cli_refuses_a_huge_permuter_in_one_line_quickly(tmp_path, demo_ckpt):
    doc = demo_doc()
    doc["model"]["params"]["permuter_config"] = {"target": PERMUTER + "ZCurve", "params": {"H": 30000, "W": 30000}}
    t = time.time()
    proc = run_cli("inspect", str(make_run(tmp_path, doc, demo_ckpt)))
    assert time.time() - t < 60
    assert_one_error_line(proc, r"permuter ZCurve: H\*W = 30000x30000 .* block_size 128")


# ------------------------------------------------------------------------------------------------
# checkpoints: mutations, legacy format, symlinks, changes while reading
# ------------------------------------------------------------------------------------------------
class Reduce:
    """An object that pickles as ``fn(*args)``: a call torch's weights-only unpickler allows, with bad args."""

    def __init__(self, fn, args) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


BAD_OBJECTS = {
    "rebuild_missing_args": Reduce(torch._utils._rebuild_tensor_v2, ("bad",)),  # TypeError inside torch
    "rebuild_int_storage": Reduce(torch._utils._rebuild_tensor_v2, (1, 0, (2,), (1,), False, {})),  # AttributeError
    "size_of_str": Reduce(torch.Size, ("x",)),
    "ordereddict_of_int": Reduce(__import__("collections").OrderedDict, (1,)),
    "parameter_of_none": Reduce(torch._utils._rebuild_parameter, (None, None, None)),
    "view_past_storage": Reduce(torch._utils._rebuild_tensor_v2,
                                (torch.zeros(2).untyped_storage(), 0, (10**12,), (1,), False, {})),
}


def _mutations(good: bytes, seed: int = 0) -> dict[str, bytes]:
    """Truncations, byte flips everywhere (header, pickle, data, central directory), zero runs."""
    rng = random.Random(seed)
    out = {f"truncate_{n}": good[:n] for n in (1, 4, 30, 100, 1000, len(good) // 3, len(good) // 2, len(good) - 22,
                                               len(good) - 1)}
    with zipfile.ZipFile(__import__("io").BytesIO(good)) as z:
        pkl = next(i for i in z.infolist() if i.filename.endswith("data.pkl"))
    pkl_start = pkl.header_offset + 30 + len(pkl.filename)
    spots = {"pickle": (pkl_start, pkl_start + pkl.file_size), "head": (0, 64), "tail": (len(good) - 600, len(good)),
             "anywhere": (0, len(good))}
    for name, (lo, hi) in spots.items():
        for i in range(12):
            b = bytearray(good)
            for _ in range(1 + i % 4):
                b[rng.randrange(lo, hi)] ^= 1 << rng.randrange(8)
            out[f"flip_{name}_{i}"] = bytes(b)
    b = bytearray(good)
    b[pkl_start: pkl_start + 64] = bytes(64)
    out["zeroed_pickle_start"] = bytes(b)
    return out


def _replace_pickle(good: bytes, pickle_bytes: bytes) -> bytes:
    """The same zip with another data.pkl (members stored, as torch writes them)."""
    src = zipfile.ZipFile(__import__("io").BytesIO(good))
    buf = __import__("io").BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, pickle_bytes if info.filename.endswith("data.pkl") else src.read(info))
    return buf.getvalue()


def test_every_malformed_checkpoint_is_a_checkpoint_error(tmp_path, runs):
    """Mutations of a real Lightning checkpoint: truncated, bytes flipped, the pickle replaced by one
    that makes torch's loader raise TypeError/AttributeError/...: CheckpointError every time (or, for a
    flip that happens to leave the file valid, the weights), never another exception."""
    vq = runs("vq_noattn")
    good = vq.ckpt.read_bytes()
    cases = _mutations(good)
    import pickle

    for name, obj in BAD_OBJECTS.items():
        src = tmp_path / f"{name}.ckpt"
        torch.save({"state_dict": {"w": torch.zeros(2), "x": obj}}, src)
        cases[f"bad_object_{name}"] = src.read_bytes()
    cases["pickle_not_a_dict"] = _replace_pickle(good, pickle.dumps([1, 2, 3], protocol=2))
    cases["pickle_garbage"] = _replace_pickle(good, b"\x80\x02garbage")
    cases["pickle_persistent_id_not_a_tuple"] = _replace_pickle(good, b"\x80\x02X\x03\x00\x00\x00abcQ.")
    cases["pickle_persistent_id_short"] = _replace_pickle(good, pickle.dumps(("storage", 1), protocol=2)[:-1] + b"Q.")
    outcomes: dict[str, str] = {}
    for name, payload in cases.items():
        path = tmp_path / f"m_{name}.ckpt"
        path.write_bytes(payload)
        try:
            sd = read_state_dict(path)
        except CheckpointError as e:
            msg = str(e)
            assert "\n" not in msg and msg.startswith(str(path)), msg
            outcomes[name] = "error"
            continue
        except Exception as e:  # noqa: BLE001 - the point of the test
            pytest.fail(f"{name}: {type(e).__name__}: {e}")
        assert all(isinstance(v, torch.Tensor) for v in sd.values())
        outcomes[name] = "loaded"
    assert sum(v == "error" for v in outcomes.values()) > len(cases) * 0.4, outcomes
    assert all(outcomes[f"bad_object_{n}"] == "error" for n in BAD_OBJECTS)
    assert all(outcomes[n] == "error" for n in outcomes if n.startswith(("truncate_", "pickle_")))


def test_malformed_pickle_through_the_cli_is_not_an_internal_error(tmp_path, demo_ckpt):
    obj = BAD_OBJECTS["rebuild_int_storage"]
    run = make_run(tmp_path, demo_doc(), demo_ckpt)
    ckpt = run / "checkpoints" / "last.ckpt"
    ckpt.unlink()
    torch.save({"state_dict": {"w": torch.zeros(2), "x": obj}}, ckpt)
    assert_one_error_line(run_cli("inspect", str(run)), r"corrupt or truncated checkpoint \(AttributeError")


def test_legacy_format_is_named_with_how_to_resave(tmp_path, runs):
    vq = runs("vq_noattn")
    run = tmp_path / "legacy"
    ckpt = save_run(run, vq.cfg, dict(vq.model.state_dict()))
    torch.save({"state_dict": dict(vq.model.state_dict())}, ckpt, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError) as info:
        vqdeploy.load_model(ckpt)
    msg = str(info.value)
    assert "legacy (pre-1.6) torch format" in msg and "torch >= 1.6" in msg
    assert "torch.save(torch.load('old.ckpt', weights_only=False), 'new.ckpt')" in msg and "trust" in msg
    assert_one_error_line(run_cli("inspect", str(ckpt)), r"legacy \(pre-1\.6\) torch format")
    # the advice works (in this trusted test), and the re-saved file loads
    resaved = run / "checkpoints" / "new.ckpt"
    torch.save(torch.load(ckpt, weights_only=False), resaved)
    assert set(vqdeploy.load_model(resaved).state_dict()) == set(vq.model.state_dict())


def test_symlinked_last_ckpt_keeps_its_own_runs_config(tmp_path, runs):
    """``runA/checkpoints/last.ckpt -> runB/checkpoints/last.ckpt``: runA's configs/ are used (the run
    the user named), and the source records both the named path and the link's target."""
    vq = runs("vq_noattn")
    sd = dict(vq.model.state_dict())
    wrong = copy.deepcopy(vq.cfg)
    wrong["params"]["n_embed"] = 64  # runB's own config does not fit these weights
    ckpt_b = save_run(tmp_path / "runB", wrong, sd)
    run_a = tmp_path / "runA"
    save_run(run_a, vq.cfg, sd)
    (run_a / "checkpoints" / "last.ckpt").unlink()
    (run_a / "checkpoints" / "last.ckpt").symlink_to(ckpt_b)
    model = vqdeploy.load_model(run_a / "checkpoints" / "last.ckpt")
    assert model.source.config == [str(next((run_a / "configs").glob("*-project.yaml")))]
    assert model.source.checkpoint == str(run_a / "checkpoints" / "last.ckpt")
    assert model.source.checkpoint_target == str(ckpt_b.resolve())
    assert vqdeploy.load_model(run_a).source.config == model.source.config  # the run directory too
    with pytest.raises(CheckpointError, match=r"\(32, 8\), config expects \(64, 8\)"):
        vqdeploy.load_model(ckpt_b)


def test_fallback_through_a_memory_map_reads_the_same_weights(runs, monkeypatch):
    """On a torch without meta-device storage offsets the weights come through torch's memory map."""
    from vqdeploy.loading import checkpoint

    run = runs("seg")
    fast = read_state_dict(run.ckpt)
    monkeypatch.setattr(checkpoint, "_meta_offsets", lambda: False)
    slow = read_state_dict(run.ckpt)
    assert set(fast) == set(slow) and all(torch.equal(fast[k], slow[k]) for k in fast)


def test_training_only_weights_are_never_read(runs):
    run = runs("seg")
    sd = read_state_dict(run.ckpt, skip=lambda k: ".loss." in f".{k}")
    assert sd and not any("loss." in k for k in sd)


def _child(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, check=False)


CHANGE_DURING_READ = """
    import os, sys, time
    from pathlib import Path
    import vqdeploy
    from vqdeploy.errors import CheckpointError
    from vqdeploy.loading import stable_read
    ckpt, how = Path(sys.argv[1]), sys.argv[2]
    original = stable_read.read_exact
    calls = []
    def hooked(f, offset, out, path):  # the training job writes between our first stat and the copy
        if not calls:
            if how == "truncate":  # the first tensor's read comes up short
                os.truncate(ckpt, offset + 4)
            elif how == "rewrite":  # same size, new bytes (and mtime, a tick later)
                time.sleep(0.05)
                with open(ckpt, "r+b") as w:
                    w.seek(offset); w.write(b"\\0" * 8)
            else:
                os.replace(sys.argv[3], ckpt)
        calls.append(offset)
        return original(f, offset, out, path)
    stable_read.read_exact = hooked
    try:
        vqdeploy.load_model(ckpt.parent.parent)
    except CheckpointError as e:
        print("CheckpointError:", e)
        sys.exit(1)
    print("loaded")
"""


@pytest.mark.parametrize("how", ["truncate", "rewrite", "replace"])
def test_checkpoint_changed_while_reading_is_reported_not_a_sigbus(tmp_path, how):
    """A checkpoint truncated, rewritten in place or replaced between the first stat and the copy of the
    weights: one CheckpointError, in a child process (so that a SIGBUS would fail the test, not kill pytest)."""
    run = tmp_path / "run"
    shutil.copytree(DEMO / "configs", run / "configs")
    (run / "checkpoints").mkdir()
    ckpt = run / "checkpoints" / "last.ckpt"
    shutil.copy(DEMO / "checkpoints" / "last.ckpt", ckpt)
    other = tmp_path / "other.ckpt"
    shutil.copy(ckpt, other)
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(CHANGE_DURING_READ))
    proc = subprocess.run([sys.executable, str(script), str(ckpt), how, str(other)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)  # not -SIGBUS
    assert re.search(r"^CheckpointError: .*last\.ckpt: the checkpoint changed while it was being read \(.*\); "
                     r"is a training job writing it\?", proc.stdout), proc.stdout


@pytest.mark.skipif(not hasattr(signal, "SIGBUS"), reason="POSIX only")
def test_the_sigbus_is_real_through_a_memory_map(tmp_path):
    """What the test above guards against: torch's memory-mapped load of a file truncated before the
    weights are touched dies of SIGBUS."""
    ckpt = tmp_path / "last.ckpt"
    shutil.copy(DEMO / "checkpoints" / "last.ckpt", ckpt)
    proc = _child(f"""
        import os, torch
        sd = torch.load({str(ckpt)!r}, weights_only=False, mmap=True)["state_dict"]
        os.truncate({str(ckpt)!r}, 4096)
        print(sum(float(v.float().sum()) for v in sd.values()))
    """)
    assert proc.returncode == -signal.SIGBUS, (proc.returncode, proc.stderr[-500:])


def test_truncated_and_corrupt_safetensors_are_checkpoint_errors(tmp_path, runs):
    from safetensors.torch import save_file

    run = runs("vq_noattn")
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in run.model.state_dict().items()}, str(path))
    good = path.read_bytes()
    sd = read_state_dict(path)
    assert all(torch.equal(sd[k], v) for k, v in run.model.state_dict().items())
    n = int.from_bytes(good[:8], "little")
    header = json.loads(good[8 : 8 + n])
    key = next(k for k in header if k != "__metadata__")
    variants = {"truncated": good[: len(good) // 2], "short": good[:5], "huge_header": (2**62).to_bytes(8, "little"),
                "not_json": good[:8] + b"{" * n + good[8 + n :]}
    for name, change in [("offsets_past_end", [0, 10**9]), ("offsets_wrong_size", [0, 3])]:
        h = copy.deepcopy(header)
        h[key]["data_offsets"] = change
        raw = json.dumps(h).encode().ljust(n)[:n] if len(json.dumps(h)) <= n else None
        if raw is not None:
            variants[name] = good[:8] + raw + good[8 + n :]
    for name, payload in variants.items():
        bad = tmp_path / f"{name}.safetensors"
        bad.write_bytes(payload)
        with pytest.raises(CheckpointError, match="corrupt safetensors file|changed while"):
            read_state_dict(bad)


# ------------------------------------------------------------------------------------------------
# fuzz: mutations of the demo run's config
# ------------------------------------------------------------------------------------------------
def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


DEMO_PATHS = [p for p in _paths(demo_doc()) if p]


def _deep(n: int) -> Any:
    node: Any = 1
    for _ in range(n):
        node = {"x": node}
    return node


FUZZ_VALUES = [
    None, True, False, 0, -1, 1, 3, 7, 33, 2**31, 2**63, 10**30, -(10**9), 0.5, 1e300, float("nan"), float("inf"),
    "", "x", "image", "???", [], {}, [1] * 50, [0], [-1, 2], {"target": "x"}, _deep(80), _deep(10),
    "${oc.env:" + SECRET_ENV + "}", "pre_${oc.env:" + SECRET_ENV + "}", "${oc.decode:'${oc.env:" + SECRET_ENV + "}'}",
    "${model}", "${model.params}", "${.}", "${..}", "${model.params.transformer_config.params.block_size}",
    "${model.params.first_stage_config}", "${model.params.nope}", "\\${oc.env:" + SECRET_ENV + "}", "${a", "${}",
    {"target": PERMUTER + "ZCurve", "params": {"H": 30000, "W": 30000}},
    {"target": PERMUTER + "SpiralIn", "params": {"H": 8, "W": 8}},
    {"target": "taming.modules.transformer.mingpt.GPT", "params": {"vocab_size": 10, "block_size": 10**9}},
]


def _mutate(doc: dict[str, Any], path: tuple, op: str, value: Any) -> None:
    parent: Any = doc
    for k in path[:-1]:
        parent = parent[k]
    last = path[-1]
    if op == "delete":
        del parent[last]
    elif op == "nest":
        parent[last] = {"params": parent[last], "target": parent[last]}
    else:
        parent[last] = value


def test_fuzz_mutated_demo_config(tmp_path_factory, demo_ckpt, monkeypatch):
    """Random mutations of the demo run's config (deleted keys, changed types, interpolations and
    resolvers, huge and negative numbers, deep nesting): ``load_model`` (and ``describe``, as
    ``inspect`` does) either succeeds or raises a VQDeployError subclass, never another exception, and
    the environment's secret appears nowhere. Bounded: 150 examples in the suite (FUZZ_SCALE=20
    and FUZZ_RANDOM=1 for a longer, randomized run: 3000 random examples passed)."""
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies
    monkeypatch.setenv(SECRET_ENV, SECRET)
    base = demo_doc()
    counter = {"n": 0, "ok": 0}
    started = time.time()

    mutation = st.tuples(st.integers(0, 10**9), st.sampled_from(["set", "set", "set", "delete", "nest"]),
                         st.sampled_from(range(len(FUZZ_VALUES))))

    @hypothesis.settings(max_examples=examples(150), deadline=None, database=None,
                         derandomize=not os.environ.get("FUZZ_RANDOM"),
                         suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.given(st.lists(mutation, min_size=1, max_size=3))
    def check(mutations):
        doc = copy.deepcopy(base)
        for pick, op, value in mutations:
            paths = [p for p in _paths(doc) if p]
            if not paths:
                break
            _mutate(doc, paths[pick % len(paths)], op, copy.deepcopy(FUZZ_VALUES[value]))
        counter["n"] += 1
        root = tmp_path_factory.mktemp("fuzz")
        try:
            text = yaml.safe_dump(doc, sort_keys=False)
        except yaml.YAMLError:
            return
        run = make_run(root, text, demo_ckpt)
        try:
            model = vqdeploy.load_model(run)
            info = json.dumps(describe(model), default=str)
            assert SECRET not in info and SECRET not in repr(model.source)
            counter["ok"] += 1
        except VQDeployError as e:
            assert SECRET not in str(e) and "\n" not in str(e)
        except RecursionError as e:
            pytest.fail(f"RecursionError for {mutations}: {e}")

    check()
    elapsed = time.time() - started
    print(f"\nfuzz: {counter['n']} examples ({counter['ok']} loaded) in {elapsed:.1f} s")
    assert counter["n"] >= 50 and counter["ok"] >= 1
