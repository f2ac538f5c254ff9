"""``run --build-engines`` / ``VQDEPLOY_BUILD_ENGINES=1`` (the GPU image's first start): when TensorRT
would be used and its engines are missing or outdated, they are built before sampling; otherwise
nothing is built. GPU presence, TensorRT and the build are stubbed (no GPU here); the real build is
tests/test_trt_build.py's, the load-time checks tests/test_trt_*'s."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from vqdeploy import machine
from vqdeploy.cli import main
from vqdeploy.trt import engines, ensure


@pytest.mark.parametrize("backend, device, gpu, trt, want", [
    ("auto", None, True, True, True),
    ("tensorrt", "cuda", True, True, True),
    ("onnxruntime", None, True, True, False),
    ("torch", None, True, True, False),
    ("auto", "cpu", True, True, False),
    ("auto", None, False, True, False),
    ("auto", None, True, False, False),
])
def test_wanted_only_where_tensorrt_would_run(monkeypatch: pytest.MonkeyPatch, backend: str, device: str | None,
                                               gpu: bool, trt: bool, want: bool) -> None:
    monkeypatch.setattr(machine, "gpu_present", lambda: gpu)
    monkeypatch.setattr(machine, "tensorrt_installed", lambda: trt)
    assert ensure.wanted(backend, device) is want


@pytest.mark.parametrize("current, built", [(False, True), (True, False)])
def test_builds_only_missing_or_outdated_engines(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, current: bool,
                                                 built: bool) -> None:
    calls: list[Path] = []
    monkeypatch.setattr(ensure, "wanted", lambda backend, device: True)
    monkeypatch.setattr(ensure, "engines_current", lambda artifacts: current)
    monkeypatch.setattr(engines, "build_engines", lambda artifacts, echo: calls.append(artifacts))
    lines: list[str] = []
    assert ensure.ensure_engines(tmp_path, "auto", None, lines.append) is built
    assert calls == ([tmp_path] if built else [])
    assert bool(lines) is built


def test_no_engines_record_is_not_current(tmp_path: Path) -> None:
    assert ensure.engines_current(tmp_path) is False  # before asking TensorRT or the GPU anything


@pytest.mark.parametrize("args, env, called", [
    ([], {}, False),
    (["--build-engines"], {}, True),
    ([], {"VQDEPLOY_BUILD_ENGINES": "1"}, True),
    ([], {"VQDEPLOY_BUILD_ENGINES": "0"}, False),
    (["--no-build-engines"], {"VQDEPLOY_BUILD_ENGINES": "1"}, False),
])
def test_run_option_and_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, args: list[str],
                                    env: dict[str, str], called: bool) -> None:
    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(ensure, "ensure_engines", lambda *a, **k: calls.append(a))
    res = CliRunner().invoke(main, ["run", "--artifacts", str(tmp_path), "--backend", "tensorrt", *args], env=env)
    assert calls == ([(tmp_path, "tensorrt", None)] if called else [])
    assert res.exit_code == 1 and res.output.startswith(f"error: {tmp_path}: no manifest.json"), res.output


def test_bad_environment_value_is_one_error_line(tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["run", "--artifacts", str(tmp_path)], env={"VQDEPLOY_BUILD_ENGINES": "maybe"})
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, res.output
    assert res.output.startswith("error: Invalid value for '--build-engines' (env var: 'VQDEPLOY_BUILD_ENGINES')")
