"""The house rules (docs/architecture.md): layers only point down (import-linter contracts), function-local
imports of vqdeploy only where they keep an optional heavy dependency out of an import, and the two
extension points: a backend is one module plus a registration, a model family one package plus a
registration (a toy backend and a toy family registered here run the unchanged pipeline)."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vqdeploy.artifacts import Artifacts, read_manifest
from vqdeploy.runtime.backends import registry
from vqdeploy.runtime.backends.buffers import Buffer
from vqdeploy.runtime.backends.graph_backend import GraphBackend
from vqdeploy.runtime.pipeline import Pipeline
from vqdeploy.runtime.sampling import SamplingParams

ROOT = Path(__file__).resolve().parent.parent

# function-local `vqdeploy` imports, each keeping an optional heavy dependency (or the package root's
# lazy public API) out of a module's import; docs/architecture.md lists them with the same reasons
ALLOWED_LOCAL_IMPORTS = {
    ("vqdeploy/__init__.py", "vqdeploy.loading.load"),  # the public API, imported on first use
    ("vqdeploy/__init__.py", "vqdeploy.runtime.pipeline"),
    ("vqdeploy/__init__.py", "vqdeploy.runtime.sampling"),
    ("vqdeploy/bench/benchmark.py", "vqdeploy.families"),  # torch: the reference rows only
    ("vqdeploy/bench/benchmark.py", "vqdeploy.runtime.backends.torch_backend"),  # torch
    ("vqdeploy/commands/export.py", "vqdeploy.export.exporter"),  # torch
    ("vqdeploy/commands/inspect.py", "vqdeploy.families"),  # torch
    ("vqdeploy/commands/parity.py", "vqdeploy.parity.report"),  # torch
    ("vqdeploy/commands/serve.py", "vqdeploy.serve.app"),  # the serve extra (starlette, uvicorn)
    ("vqdeploy/runtime/backends/onnxruntime_backend.py", "vqdeploy.runtime.backends.bf16_emulation"),  # onnx
    ("vqdeploy/runtime/backends/registry.py", "vqdeploy.runtime.backends.torch_backend"),  # torch
}


def test_import_contracts_hold() -> None:
    """pyproject.toml's [tool.importlinter] contracts: layers, a torch-free runtime path, independent families."""
    lint = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    res = subprocess.run([lint, "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "BROKEN" not in res.stdout and res.stdout.count("KEPT") >= 3


def _local_imports() -> set[tuple[str, str]]:
    found = set()
    for path in sorted((ROOT / "vqdeploy").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                names = ([node.module] if isinstance(node, ast.ImportFrom) and node.module else
                         [a.name for a in node.names] if isinstance(node, ast.Import) else [])
                for name in names:
                    if name == "vqdeploy" or name.startswith("vqdeploy."):
                        found.add((path.relative_to(ROOT).as_posix(), name))
    return found


def test_function_local_imports_only_guard_optional_dependencies() -> None:
    local = _local_imports()
    assert local - ALLOWED_LOCAL_IMPORTS == set(), "a new function-local vqdeploy import: import it at the top, or " \
                                                   "add it here and to docs/architecture.md with its reason"
    assert ALLOWED_LOCAL_IMPORTS - local == set(), "listed but gone: drop it here and from docs/architecture.md"
    doc = (ROOT / "docs" / "architecture.md").read_text()
    for path, module in ALLOWED_LOCAL_IMPORTS:
        assert f"`{path}`" in doc and f"`{module}`" in doc, (path, module)


# --- a toy backend: one module (here, this test) plus a registration ------------------------------------
class PlainSessionExecutor:
    """ONNX Runtime's plain ``session.run`` on copies (no IO binding): another way to run the same graphs."""

    def __init__(self, session: Any, memory: Any) -> None:
        self.session, self.memory = session, memory

    def run(self, inputs: dict[str, Buffer], outputs: dict[str, Buffer]) -> None:
        feeds = {name: self.memory.download(buf) for name, buf in inputs.items()}
        results = self.session.run(list(outputs), feeds)
        for (name, buf), value in zip(outputs.items(), results):
            self.memory.upload(np.ascontiguousarray(value), buf)


class ToyBackend(GraphBackend):
    name = "toy"

    def __init__(self, artifacts: Artifacts) -> None:
        import onnxruntime

        super().__init__(artifacts, "cpu")
        self.ort = onnxruntime
        self.sessions: dict[str, PlainSessionExecutor] = {}

    def executor(self, graph: str, profile: str | None = None) -> PlainSessionExecutor:
        if graph not in self.sessions:
            session = self.ort.InferenceSession(str(self.artifacts.graph_file(graph)), providers=["CPUExecutionProvider"])
            self.sessions[graph] = PlainSessionExecutor(session, self.memory)
        return self.sessions[graph]


@pytest.fixture
def toy_backend():
    spec = registry.register(registry.BackendSpec(
        name="toy", extra=None, help="ONNX Runtime without IO binding (a test's backend)",
        resolve=lambda requested: ("cpu", ""), compare_on=lambda a, d: [], not_compared=lambda a, d: [],
        open=lambda artifacts, device, options: ToyBackend(artifacts)))
    try:
        yield spec
    finally:
        del registry.BACKENDS["toy"]


def test_a_registered_backend_runs_the_pipeline(demo_export: Path, toy_backend) -> None:
    params = SamplingParams(temperature=1.0, top_k=20)
    assert "toy" in registry.choices()
    toy = Pipeline.from_artifacts(demo_export, backend="toy")
    assert toy.backend.name == "toy"
    ort = Pipeline.from_artifacts(demo_export, backend="onnxruntime")
    sketch = ROOT / "models" / "demo" / "sketches" / "07_house-square-circle_horizon.png"
    a, b = toy(sketch, num_samples=2, params=params, seed=3), ort(sketch, num_samples=2, params=params, seed=3)
    assert np.array_equal(a.tokens, b.tokens)
    assert registry.parse_backends("toy", demo_export, None) == [("toy", "cpu")]


# --- a toy family: one package (here, this test) plus a registration --------------------------------------
def test_a_registered_family_exports_and_runs(runs, tmp_path: Path) -> None:
    from vqdeploy import families
    from vqdeploy.export.exporter import export
    from vqdeploy.families.taming.family import Taming

    calls: list[str] = []

    class Toy(Taming):
        """taming's modules under another name: claims run directories that carry a TOY marker file."""

        name = "toy"
        title = "toy family"

        def claims(self, ckpt: Path, options: Any) -> bool:
            return any((p / "TOY").exists() for p in Path(ckpt).resolve().parents)

        def torch_stages(self, model: Any, manifest: Any) -> Any:
            calls.append("torch_stages")
            return super().torch_stages(model, manifest)

    run = runs("class_subsample")
    toy_run = tmp_path / "toy-run"
    shutil.copytree(run.run_dir, toy_run)
    (toy_run / "TOY").touch()
    ckpt = toy_run / run.ckpt.relative_to(run.run_dir)
    families.register(Toy())
    try:
        assert isinstance(families.family_for(ckpt), Toy)
        assert isinstance(families.family_for(run.ckpt), Taming) and not isinstance(families.family_for(run.ckpt), Toy)
        manifest = export(ckpt, tmp_path / "art", log=lambda m: None)
        assert manifest.model.family == "toy" and read_manifest(tmp_path / "art").raw["model"]["family"] == "toy"
        assert manifest.raw["parity"]["passed"]  # the export's parity ran the toy family's torch stages
        assert calls
        calls.clear()
        torch_pipe = Pipeline.from_artifacts(tmp_path / "art", backend="torch")
        ort_pipe = Pipeline.from_artifacts(tmp_path / "art", backend="onnxruntime")
        params = SamplingParams(temperature=1.0, top_k=5)
        a, b = torch_pipe(class_id=1, num_samples=2, params=params, seed=4), ort_pipe(1, num_samples=2, params=params,
                                                                                     seed=4)
        assert calls == ["torch_stages"] and np.array_equal(a.tokens, b.tokens)
    finally:
        del families.FAMILIES["toy"]
