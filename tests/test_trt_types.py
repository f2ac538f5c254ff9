"""The TensorRT calls type-check against stubs of the installed TensorRT-RTX bindings, so API
misuse (a misspelt attribute, a removed method, a wrong argument) is caught without a GPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("tensorrt_rtx_bindings")
pytest.importorskip("pybind11_stubgen")
pytest.importorskip("mypy")

sys.path.insert(0, str(Path(__file__).parent))
from trt_stubs import generate

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ["vqdeploy/trt", "vqdeploy/runtime/backends/tensorrt_backend.py"]
CONFIG = """\
[mypy]
python_version = 3.11
ignore_missing_imports = True
follow_imports = silent
[mypy-tensorrt_rtx_bindings.*]
ignore_errors = True
"""

MISUSE = """\
from vqdeploy.trt.shim import trt


def misuse(builder: trt.Builder, ctx: trt.IExecutionContext) -> None:
    config = builder.create_builder_config()
    config.set_compute_capability("SM86", 0)
    config.num_compute_capabilites = 1
    ctx.execute_async_v2(0)
    ctx.set_tensor_address("x")
"""


@pytest.fixture(scope="module")
def mypy(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("trt_types")
    stubs = generate(root / "stubs")
    (root / "mypy.ini").write_text(CONFIG)

    def run(*paths: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "mypy", "--strict", "--config-file", str(root / "mypy.ini"),
               "--cache-dir", str(ROOT / ".mypy_cache"), *paths]
        env = {**os.environ, "MYPYPATH": str(stubs)}
        return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)

    return run, root


def test_stubs_are_generated(mypy) -> None:
    _, root = mypy
    stub = (root / "stubs" / "tensorrt_rtx_bindings" / "tensorrt_rtx.pyi").read_text()
    assert "class IExecutionContext" in stub and "def execute_async_v3" in stub
    assert "def get_error(self, index: typing.SupportsInt) -> ParserError:" in stub


def test_tensorrt_code_type_checks(mypy) -> None:
    run, _ = mypy
    res = run(*TARGETS)
    assert res.returncode == 0, res.stdout + res.stderr


def test_misuse_is_caught(mypy) -> None:
    run, root = mypy
    bad = root / "misuse.py"
    bad.write_text(MISUSE)
    res = run(str(bad))
    assert res.returncode == 1
    for what in ('incompatible type "str"; expected "ComputeCapability"', 'no attribute "num_compute_capabilites"',
                 'no attribute "execute_async_v2"', 'Missing positional argument "memory"'):
        assert what in res.stdout, res.stdout
