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


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if MEASURED:
        terminalreporter.section("vqdeploy vs upstream taming: measured max abs errors (fp32, CPU)")
        for name in sorted(MEASURED):
            terminalreporter.write_line(f"{name:70s} {MEASURED[name]:.3e}")
    if MINIMA:
        terminalreporter.section("fixture sanity: measured minima")
        for name in sorted(MINIMA):
            terminalreporter.write_line(f"{name:70s} {MINIMA[name]:.3e}")
