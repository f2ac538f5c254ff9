"""Bad input: ``load_model`` raises CheckpointError/ConfigError with one clear line, and
``vqdeploy inspect`` exits non-zero with exactly one ``error:`` line on stderr and no traceback.
Malicious pickles never run their payload. Also: import hygiene, ``--help``, a successful inspect."""

from __future__ import annotations

import copy
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from taming_runs import PERMUTER, lightning_checkpoint, save_run, write_config

import vqdeploy
from vqdeploy.errors import CheckpointError, ConfigError


@dataclass
class Case:
    ckpt: Path
    config: Path | None
    error: type
    message: str  # regex the one-line message must match
    marker: Path | None = None  # must never be created


class OsSystem:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class Exec:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def _run_with(root: Path, name: str, cfg, state_dict=None, payload: bytes | None = None) -> Path:
    """A run dir with ``cfg`` as its project.yaml and ``state_dict`` (or raw bytes) as last.ckpt."""
    run = root / name
    if state_dict is not None:
        return save_run(run, cfg, state_dict)
    (run / "checkpoints").mkdir(parents=True)
    write_config(run, cfg)
    ckpt = run / "checkpoints" / "last.ckpt"
    ckpt.write_bytes(payload or b"")
    return ckpt


@pytest.fixture(scope="module")
def cases(runs, tmp_path_factory) -> dict[str, Case]:
    root = tmp_path_factory.mktemp("bad")
    vq = runs("vq_noattn")
    sd = dict(vq.model.state_dict())
    good = vq.ckpt.read_bytes()
    out: dict[str, Case] = {}

    out["missing_file"] = Case(root / "nope" / "checkpoints" / "last.ckpt", None, CheckpointError,
                               r"^checkpoint not found: .*nope/checkpoints/last\.ckpt$")
    out["truncated_half"] = Case(_run_with(root, "trunc_half", vq.cfg, payload=good[: len(good) // 2]), None,
                                 CheckpointError, r"corrupt or truncated checkpoint")
    out["truncated_tail"] = Case(_run_with(root, "trunc_tail", vq.cfg, payload=good[:-64]), None,
                                 CheckpointError, r"corrupt or truncated checkpoint")
    out["random_bytes"] = Case(_run_with(root, "random", vq.cfg, payload=torch.randint(
        0, 256, (4096,), generator=torch.Generator().manual_seed(0), dtype=torch.uint8).numpy().tobytes()),
        None, CheckpointError, r"not a checkpoint \(expected a Lightning \.ckpt")
    out["empty_file"] = Case(_run_with(root, "empty", vq.cfg, payload=b""), None, CheckpointError,
                             r"empty checkpoint file")
    (root / "not_a_run").mkdir()
    out["directory_not_a_run"] = Case(root / "not_a_run", None, CheckpointError,
                                      r"not a checkpoint file or run directory")

    wrong = copy.deepcopy(vq.cfg)
    wrong["params"]["n_embed"] = 64
    out["shape_mismatch"] = Case(_run_with(root, "shape", wrong, sd), None, CheckpointError,
                                 r"'quantize\.embedding\.weight' has shape \(32, 8\), config expects \(64, 8\)")
    wrong = copy.deepcopy(vq.cfg)
    wrong["params"]["ddconfig"]["ch"] = 64
    out["shape_mismatch_explicit_config"] = Case(
        vq.ckpt, _run_with(root, "shape2", wrong, sd).parent.parent / "configs" / "2021-01-01T00-00-00-project.yaml",
        CheckpointError, r"checkpoint does not match the config: 'encoder\.conv_in\.weight' has shape")
    missing = {k: v for k, v in sd.items() if k != "decoder.conv_out.bias"}
    out["missing_key"] = Case(_run_with(root, "missing", vq.cfg, missing), None, CheckpointError,
                              r"missing weight 'decoder\.conv_out\.bias'")
    unknown = copy.deepcopy(vq.cfg)
    unknown["target"] = "taming.models.vqgan.VQModelXL"
    out["unknown_target"] = Case(_run_with(root, "unknown", unknown, sd), None, ConfigError,
                                 r"unknown target 'taming\.models\.vqgan\.VQModelXL'")
    n2n = runs("class_subsample")
    nested = copy.deepcopy(n2n.cfg)
    nested["params"]["permuter_config"]["target"] = PERMUTER + "Hilbert"
    out["unknown_nested_target"] = Case(
        _run_with(root, "nested", nested, dict(n2n.model.state_dict())), None, ConfigError,
        r"unknown target 'taming\.modules\.transformer\.permuter\.Hilbert'")
    typo = copy.deepcopy(n2n.cfg)
    typo["params"]["transformer_config"]["params"]["n_layers"] = 2
    out["invalid_params"] = Case(_run_with(root, "typo", typo, dict(n2n.model.state_dict())), None, ConfigError,
                                 r"invalid params for taming\.modules\.transformer\.mingpt\.GPT: .*n_layers")
    listy = copy.deepcopy(vq.cfg)
    listy["params"] = [1, 2]
    out["params_not_a_mapping"] = Case(_run_with(root, "listy", listy, sd), None, ConfigError,
                                       r"params of taming\.models\.vqgan\.VQModel must be a mapping")

    outside = root / "outside" / "weights.ckpt"
    outside.parent.mkdir()
    shutil.copy(vq.ckpt, outside)
    out["no_config_found"] = Case(outside, None, ConfigError, r"no config for .*weights\.ckpt.*--config")
    out["config_not_found"] = Case(outside, root / "nowhere.yaml", ConfigError, r"config not found: .*nowhere\.yaml")
    bad_yaml = root / "bad.yaml"
    bad_yaml.write_text("model:\n  target: [unclosed\n  params: {}\n")
    out["config_not_yaml"] = Case(outside, bad_yaml, ConfigError, r"invalid config: not valid YAML")
    no_target = root / "no_target.yaml"
    no_target.write_text("model:\n  params: {n_embed: 3}\n")
    out["config_without_target"] = Case(outside, no_target, ConfigError, r"no 'model\.target'")
    non_tensor = root / "non_tensor.pt"
    torch.save({"state_dict": {"encoder.conv_in.weight": [1, 2, 3]}}, non_tensor)
    out["non_tensor_entries"] = Case(non_tensor, project_yaml(vq.run_dir), CheckpointError,
                                     r"non-tensor entries \(e\.g\. 'encoder\.conv_in\.weight'\)")

    # malicious pickles: a Lightning-looking checkpoint whose callbacks state runs code on load
    for name, payload_cls, global_name in [("malicious_os_system", OsSystem, f"{os.system.__module__}.system"),
                                           ("malicious_exec", Exec, "builtins.exec")]:
        marker = root / f"{name}.marker"
        ckpt = save_run(root / name, vq.cfg, sd)
        torch.save(lightning_checkpoint(sd, callbacks={"ModelCheckpoint": payload_cls(marker)}), ckpt)
        out[name] = Case(ckpt, None, CheckpointError,
                         rf"refused to load: the checkpoint's pickle references {re.escape(global_name)}\b", marker)
    # the same payload as a bare pickle (not a torch zip archive)
    marker = root / "raw_pickle.marker"
    raw = root / "raw.pkl"
    raw.write_bytes(pickle.dumps({"state_dict": OsSystem(marker)}))
    out["malicious_raw_pickle"] = Case(raw, project_yaml(vq.run_dir), CheckpointError, r"corrupt or truncated", marker)
    return out


def project_yaml(run_dir: Path) -> Path:
    (path,) = (run_dir / "configs").glob("*-project.yaml")
    return path


CASES = ["missing_file", "truncated_half", "truncated_tail", "random_bytes", "empty_file", "directory_not_a_run",
         "shape_mismatch", "shape_mismatch_explicit_config", "missing_key", "unknown_target",
         "unknown_nested_target", "invalid_params", "params_not_a_mapping", "no_config_found", "config_not_found",
         "config_not_yaml", "config_without_target", "non_tensor_entries", "malicious_os_system", "malicious_exec",
         "malicious_raw_pickle"]


def test_case_list_is_complete(cases):
    assert sorted(cases) == sorted(CASES)


@pytest.mark.parametrize("name", CASES)
def test_load_model_raises_one_clear_line(cases, name):
    case = cases[name]
    with pytest.raises(case.error) as info:
        vqdeploy.load_model(case.ckpt, case.config)
    message = str(info.value)
    assert "\n" not in message and message.strip() == message and message
    assert re.search(case.message, message), message
    if case.marker is not None:
        assert not case.marker.exists(), "the pickle's payload ran"


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "VQDEPLOY_DEBUG"}
    return subprocess.run([sys.executable, "-m", "vqdeploy", *args], capture_output=True, text=True, check=False,
                          timeout=120, env=env, cwd=cwd)


# Runs the CLI's entry point (what ``python -m vqdeploy`` calls) once per case in one fresh interpreter: each
# case in its own working directory, its stdout, stderr and exit code captured. One process for the 21 cases
# instead of 21 (each paid ``import torch``: about 50 s of the suite's CPU); two of them also run as
# ``python -m vqdeploy`` processes of their own below, and must answer the same.
_EACH_CASE = """
import contextlib, io, json, os, sys
from vqdeploy.cli import main
out = {}
for name, cwd, args in json.loads(sys.argv[1]):
    os.chdir(cwd)
    stdout, stderr = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            main.main(args, prog_name="vqdeploy")
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    out[name] = [code, stdout.getvalue(), stderr.getvalue()]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def cli_results(cases, tmp_path_factory):
    """``vqdeploy inspect`` on every case, each in its own empty working directory (``_EACH_CASE``); the payload
    markers are checked once all have finished."""
    runs = []
    for name in CASES:
        case = cases[name]
        cwd = tmp_path_factory.mktemp(f"cli_{name}")
        runs.append([name, str(cwd), ["inspect", str(case.ckpt)] + (["--config", str(case.config)] if case.config else [])])
    env = {k: v for k, v in os.environ.items() if k != "VQDEPLOY_DEBUG"}
    proc = subprocess.run([sys.executable, "-c", _EACH_CASE, json.dumps(runs)], capture_output=True, text=True,
                          check=False, timeout=300, env=env, cwd=tmp_path_factory.mktemp("cli_driver"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    answers = json.loads(proc.stdout.splitlines()[-1])
    return {name: (subprocess.CompletedProcess(args, *answers[name]), Path(cwd),
                   cases[name].marker is not None and cases[name].marker.exists())
            for name, cwd, args in runs}


@pytest.mark.parametrize("name", ["missing_file", "truncated_half"])
def test_a_cli_process_answers_as_the_entry_point(cases, cli_results, name, tmp_path):
    """``python -m vqdeploy inspect`` in a process of its own: the same exit code and output as ``cli_results``."""
    case = cases[name]
    proc = run_cli("inspect", str(case.ckpt), cwd=tmp_path)
    expected = cli_results[name][0]
    assert (proc.returncode, proc.stdout, proc.stderr) == (expected.returncode, expected.stdout, expected.stderr)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", CASES)
def test_cli_inspect_one_error_line(cases, cli_results, name):
    case = cases[name]
    proc, cwd, marker_created = cli_results[name]
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    assert "internal error" not in lines[0]
    assert re.search(case.message, lines[0].removeprefix("error: ")), lines[0]
    assert proc.stdout == ""
    assert not marker_created, "the pickle's payload ran"
    assert list(cwd.iterdir()) == []  # nothing written where the CLI ran


@pytest.mark.parametrize("name", ["malicious_os_system", "malicious_exec", "malicious_raw_pickle"])
def test_malicious_payloads_are_real(cases, name):
    """The markers above could have been created: an unrestricted load runs the payload."""
    case = cases[name]
    assert not case.marker.exists()
    if name == "malicious_raw_pickle":
        pickle.loads(case.ckpt.read_bytes())
    else:
        torch.load(case.ckpt, weights_only=False)
    assert case.marker.exists()
    case.marker.unlink()


def test_console_script_reports_errors_the_same_way(cases, tmp_path):
    script = Path(sys.executable).parent / "vqdeploy"
    assert script.exists(), "the vqdeploy console script is not installed beside the interpreter"
    case = cases["malicious_os_system"]
    proc = subprocess.run([str(script), "inspect", str(case.ckpt)], capture_output=True, text=True, check=False,
                          timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ")
    assert "posix.system" in proc.stderr or "nt.system" in proc.stderr
    assert not case.marker.exists()


def test_import_does_not_load_backends():
    backends = "('onnx','onnxruntime','tensorrt','tensorrt_rtx_bindings')"
    code = ("import vqdeploy, sys; "
            f"assert not any(m in sys.modules for m in {backends}), "
            f"sorted(m for m in sys.modules if m.split('.')[0] in {backends})")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr
    # loading and describing a model stays free of them too
    code2 = code.replace("import vqdeploy, sys; ",
                         "import vqdeploy, sys; from vqdeploy.loading.load import load_model; "
                         "from vqdeploy.families.taming.describe import describe; import vqdeploy.cli; ")
    proc = subprocess.run([sys.executable, "-c", code2], capture_output=True, text=True, check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_help():
    proc = run_cli("--help")
    assert proc.returncode == 0, proc.stderr
    assert "Usage:" in proc.stdout and "inspect" in proc.stdout
    proc = run_cli("inspect", "--help")
    assert proc.returncode == 0 and "--config" in proc.stdout


def test_cli_inspect_success(runs):
    run = runs("seg")
    proc = run_cli("inspect", str(run.run_dir))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    info = json.loads(proc.stdout)
    assert info["kind"] == "net2net"
    assert info["target"] == "taming.models.cond_transformer.Net2NetTransformer"
    assert info["conditioning"]["kind"] == "image"
    assert info["conditioning"]["key"] == "segmentation"
    assert info["conditioning"]["preprocessing"]["kind"] == "onehot"
    assert info["conditioning"]["downsample_cond_size"] == 16
    assert info["tokens"] == {"cond": 16, "image": 16, "steps": 16}
    assert info["transformer"]["n_unmasked"] == 16
    assert info["first_stage"]["latent_grid"] == [4, 4]

    vq = runs("vq_remap")
    proc = run_cli("inspect", str(vq.ckpt), "--config", str(project_yaml(vq.run_dir)))
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["kind"] == "vqgan"
    assert info["first_stage"]["remap"] == {"used": 10, "unknown_index": "random"}
    assert info["first_stage"]["vocab_size"] == 10
