"""Shared fixtures: tiny upstream taming runs saved in tmp dirs, built once per session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from taming_runs import MEASURED, MINIMA, Run, build_variant
from upstream_shim import upstream


@pytest.fixture(scope="session")
def up():
    return upstream()


@pytest.fixture(scope="session")
def runs(tmp_path_factory: pytest.TempPathFactory, up):
    """``runs(name)``: the upstream model of variant ``name`` and its saved run (cached)."""
    root = tmp_path_factory.mktemp("runs")
    cache: dict[str, Run] = {}

    def get(name: str) -> Run:
        if name not in cache:
            cache[name] = build_variant(name, root)
        return cache[name]

    return get


@pytest.fixture(scope="session")
def exported(runs, tmp_path_factory):
    """``exported(variant, precision)``: (run, artifacts dir, manifest), exported once per session."""
    from vqdeploy.export.exporter import export

    root = tmp_path_factory.mktemp("artifacts")
    cache: dict[tuple[str, str], tuple] = {}

    def get(name: str, precision: str = "fp32"):
        if (name, precision) not in cache:
            run = runs(name)
            out = root / f"{name}-{precision}"
            manifest = export(run.ckpt, out, precision=precision, log=lambda m: None)
            cache[name, precision] = (run, out, manifest)
        return cache[name, precision]

    return get


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if MEASURED:
        terminalreporter.section("vqdeploy vs upstream taming: measured max abs errors (fp32, CPU)")
        for name in sorted(MEASURED):
            terminalreporter.write_line(f"{name:70s} {MEASURED[name]:.3e}")
    if MINIMA:
        terminalreporter.section("fixture sanity: measured minima")
        for name in sorted(MINIMA):
            terminalreporter.write_line(f"{name:70s} {MINIMA[name]:.3e}")


@pytest.fixture(scope="session")
def demo_export(tmp_path_factory) -> Path:
    """The bundled demo model exported once per session (fp32, no parity check): artifacts dir."""
    from vqdeploy.export.exporter import export

    out = tmp_path_factory.mktemp("demo-export") / "artifacts"
    export(Path(__file__).resolve().parent.parent / "models" / "demo" / "checkpoints" / "last.ckpt", out,
           parity=False, log=lambda m: None)
    return out
