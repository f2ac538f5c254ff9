"""`vqdeploy run` in a fresh venv without PyTorch (issue 12 item 5): the runtime's own dependencies
only, installed from the package index at the versions of this environment, with the repository on
PYTHONPATH (nothing is written into it). The image equals the one this (torch) environment writes;
export says in one line that it needs PyTorch. Everything lives under pytest's tmp directory.
Set VQDEPLOY_OFFLINE=1 to skip it where no package index can be reached."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import copy_artifacts

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "models" / "demo"
SKETCH = DEMO / "sketches" / "07_house-square-circle_horizon.png"
# what the runtime imports, and their own requirements (installed with --no-deps: exactly these)
RUNTIME = ("numpy", "onnx", "onnxruntime", "click", "pillow", "protobuf", "ml_dtypes", "typing_extensions",
           "flatbuffers", "packaging")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    return {**env, **extra}


@pytest.mark.skipif(bool(os.environ.get("VQDEPLOY_OFFLINE")), reason="VQDEPLOY_OFFLINE=1: no package index")
def test_run_without_torch(demo_export: Path, tmp_path: Path) -> None:
    art = copy_artifacts(demo_export, tmp_path / "artifacts")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = str(venv / "bin" / "python")
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in RUNTIME]
    pip = subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", "--cache-dir", str(tmp_path / "pip-cache"),
                          *pins], capture_output=True, text=True, timeout=600, env=_env())
    assert pip.returncode == 0, pip.stderr[-2000:]
    env = _env(PYTHONPATH=str(ROOT))

    probe = subprocess.run([py, "-c", "import torch"], capture_output=True, text=True, env=env, timeout=60)
    assert probe.returncode != 0 and "No module named 'torch'" in probe.stderr

    args = ["-m", "vqdeploy", "run", str(SKETCH), "--artifacts", str(art), "--num-samples", "2", "--seed", "3",
            "--backend", "onnxruntime"]
    t = time.perf_counter()
    bare = subprocess.run([py, *args, "--out", str(tmp_path / "bare.png")], capture_output=True, text=True, env=env,
                          timeout=300)
    bare_s = time.perf_counter() - t
    assert bare.returncode == 0, bare.stderr[-2000:]
    ref = subprocess.run([sys.executable, *args, "--out", str(tmp_path / "torch.png")], capture_output=True, text=True,
                         env=_env(PYTHONPATH=str(ROOT)), timeout=300)
    assert ref.returncode == 0, ref.stderr[-2000:]
    for i in range(2):
        assert (tmp_path / f"bare-{i}.png").read_bytes() == (tmp_path / f"torch-{i}.png").read_bytes()

    bench = subprocess.run([py, "-m", "vqdeploy", "bench", "--artifacts", str(art), "--backends", "onnxruntime",
                            "--repeats", "1", "--out", str(art / "bench.json")], capture_output=True, text=True,
                           env=env, timeout=300)
    assert bench.returncode == 0, bench.stderr[-2000:]
    assert "PyTorch is not installed: the torch-cpu and upstream rows are left out" in bench.stderr

    for cmd, want in ((["export", "--ckpt", str(DEMO / "checkpoints" / "last.ckpt"), "--out", str(tmp_path / "x")],
                       "error: export needs PyTorch: pip install torch"),
                      (["parity", "--artifacts", str(art)],
                       "error: parity compares against PyTorch and needs it: pip install torch")):
        res = subprocess.run([py, "-m", "vqdeploy", *cmd], capture_output=True, text=True, env=env, timeout=120)
        assert res.returncode != 0 and res.stderr.strip().splitlines() == [want], res.stderr
    print(f"vqdeploy run without torch: {bare_s:.2f} s")
