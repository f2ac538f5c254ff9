"""Shared fixtures: tiny upstream taming runs saved in tmp dirs, and exports made once per test session.

With pytest-xdist the session's workers share the exports (``shared``): the first worker that needs one
makes it under a file lock in the directory above every worker's basetemp, the others wait and reuse it.
Tests read shared artifacts and never write into them; a test that changes artifacts takes a copy
(``copy_artifacts``)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# Each xdist worker shares the machine's cores with the others: torch's intra-op threads then wait for each other
# (GNU OpenMP spins), which costs more than a second thread gains on the tiny test models (test_quantize.py alone,
# two workers: 130 -> 121 s). One thread per worker, for the processes it starts too; set before torch loads.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

sys.path.insert(0, str(Path(__file__).parent))


def _reuse_onnx_registry() -> None:
    """Tests only: torch.onnx.export builds its ATen -> ONNX registry anew on every call (0.8 s here, 5 s an
    export of 6-7 graphs); build it once per opset in this process and hand each export a copy of its lists
    (custom translations are inserted per export, so they never accumulate). Skipped if torch's private
    registry changes shape: the exports are then as slow as in production, not wrong."""
    try:
        from torch.onnx._internal.exporter import _registration
    except ImportError:
        return
    registry = getattr(_registration, "ONNXRegistry", None)
    build = getattr(registry, "from_torchlib", None)
    if build is None or not hasattr(registry(), "functions"):
        return
    built: dict[int, object] = {}

    def from_torchlib(cls, opset_version=None):  # type: ignore[no-untyped-def]
        key = opset_version if opset_version is not None else _registration._constants.TORCHLIB_OPSET
        if key not in built:
            built[key] = build(opset_version=key)
        fresh = cls()
        fresh._opset_version = built[key]._opset_version
        fresh.functions = {k: list(v) for k, v in built[key].functions.items()}
        return fresh

    registry.from_torchlib = classmethod(from_torchlib)


_reuse_onnx_registry()

from taming_runs import MEASURED, MINIMA, Run, build_variant
from upstream_shim import upstream

ROOT = Path(__file__).resolve().parent.parent
DEMO_CKPT = ROOT / "models" / "demo" / "checkpoints" / "last.ckpt"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _shared_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory every xdist worker of this session sees (the parent of their basetemps), or the basetemp."""
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "vqdeploy-shared"
    root.mkdir(exist_ok=True)
    return root


@pytest.fixture(scope="session")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, Callable[[Path], None]], Path]:
    """``shared(name, build)``: the directory ``build(path)`` made once for the whole session (all workers)."""
    root = _shared_root(tmp_path_factory)

    def get(name: str, build: Callable[[Path], None]) -> Path:
        out, done = root / name, root / f"{name}.done"
        with _locked(root / f"{name}.lock"):
            if not done.exists():
                shutil.rmtree(out, ignore_errors=True)
                build(out)
                done.touch()
        return out

    return get


GRAPH_CACHE = "graph-cache"  # under the session's shared root
_MODULE_INTERNALS = frozenset(vars(__import__("torch").nn.Module()))  # _parameters, _buffers, hooks, training ...


def _graph_key(spec, opset: int, quantize: str | None, block: int | None) -> str:  # type: ignore[no-untyped-def]
    """What a traced graph's bytes depend on (export makes them reproducible: ``onnx_export._reproducible``): the
    spec's contract, the export options (the external-data threshold, which a test lowers, too), and the module, by
    its classes, its plain attributes and every tensor's bytes. An attribute of a kind this does not know is keyed
    by its repr, which names its id where it has no repr of its own: such a module is then never a hit, which costs
    a trace and is never wrong."""
    import hashlib

    import torch

    from vqdeploy.export import onnx_export

    h = hashlib.sha256(repr((torch.__version__, onnx_export._EXTERNAL_DATA_BYTES, spec.name, spec.inputs, spec.outputs,
                             spec.dims, spec.sample_dims, spec.id_ranges, opset, quantize, block)).encode())
    for name, sub in spec.module.named_modules():
        attrs = {k: v for k, v in vars(sub).items() if k not in _MODULE_INTERNALS}
        h.update(f"{name}:{type(sub).__module__}.{type(sub).__qualname__}:{sorted(attrs.items())!r}".encode())
    for name, t in [*spec.module.named_parameters(remove_duplicate=False),
                    *spec.module.named_buffers(remove_duplicate=False)]:
        data = t.detach().cpu().contiguous()
        h.update(f"{name}:{data.dtype}:{tuple(data.shape)}".encode())
        h.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:32]


@pytest.fixture(scope="session", autouse=True)
def _graph_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable]:
    """Tests only: each distinct graph is traced once per session (all workers), and an export that needs the same
    graph again (same module state, spec and options: ``_graph_key``) gets a copy of those bytes. The demo alone is
    exported a dozen times by tests of what export does around its graphs (quantization, CLI, destinations,
    recovery); tracing is 95% of an export. Nothing is kept across sessions, and exports in other processes (CLI
    subprocesses, the container) trace. ``@pytest.mark.fresh_graphs`` makes a test's own exports trace
    (``test_a_graph_export_is_byte_reproducible`` proves the bytes a copy stands for). Yields the real
    ``export_graph``."""
    import pickle

    from vqdeploy.export import exporter

    real = exporter.export_graph
    root = _shared_root(tmp_path_factory) / GRAPH_CACHE
    root.mkdir(exist_ok=True)

    def export_graph(spec, path: Path, opset: int, quantize: str | None = None,  # type: ignore[no-untyped-def]
                     block: int | None = None) -> list:
        key = _graph_key(spec, opset, quantize, block)
        entry = root / key
        with _locked(root / f"{key}.lock"):
            if not (entry / "layers.pkl").exists():
                shutil.rmtree(entry, ignore_errors=True)
                entry.mkdir()
                layers = real(spec, entry / spec.file, opset, quantize, block)
                (entry / "layers.pkl").write_bytes(pickle.dumps(layers))
            else:
                with open(entry / "copies", "a") as f:  # counted for the session's summary
                    f.write(".")
        for f in entry.iterdir():
            if f.name.startswith(spec.file):  # the graph and its external data, if any
                shutil.copyfile(f, path.parent / f"{path.name}{f.name[len(spec.file):]}")
        return pickle.loads((entry / "layers.pkl").read_bytes())

    patch = pytest.MonkeyPatch()
    patch.setattr(exporter, "export_graph", export_graph)
    yield real
    patch.undo()


@pytest.fixture(autouse=True)
def _fresh_graphs(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, _graph_cache: Callable) -> None:
    if request.node.get_closest_marker("fresh_graphs"):
        from vqdeploy.export import exporter

        monkeypatch.setattr(exporter, "export_graph", _graph_cache)


def copy_artifacts(src: Path, dst: Path) -> Path:
    """A private copy of shared artifacts (``engines/`` included) for a test that changes them."""
    shutil.copytree(src, dst, symlinks=True)
    return dst


def reuse_graphs(monkeypatch: pytest.MonkeyPatch, source: Path) -> None:
    """Make ``export`` copy each graph file from ``source`` (an export of the same checkpoint with the same
    precision, unquantized) instead of tracing it again: for the tests of what export does around the graphs
    (destination rules, parity, install, logs), where tracing took 10-25 s of each. Everything else runs: loading,
    the manifest, hashing, parity on the copied graphs, the install."""
    from vqdeploy.export import exporter

    def copy_graph(spec, path: Path, opset: int, quantize: str | None = None, block: int | None = None) -> list:
        assert quantize is None, "reuse_graphs copies unquantized graphs only"
        shutil.copyfile(source / spec.file, path)
        if (source / f"{spec.file}.data").exists():
            shutil.copyfile(source / f"{spec.file}.data", Path(f"{path}.data"))
        return []

    monkeypatch.setattr(exporter, "export_graph", copy_graph)
    family_for = exporter.family_for

    class SourceGraphs:  # the graphs ``source`` has (a source exported with --no-valid-length has no twin)
        def __init__(self, family) -> None:
            self.family = family

        def __getattr__(self, name: str):
            return getattr(self.family, name)

        def graph_specs(self, *args, **kwargs):
            return [g for g in self.family.graph_specs(*args, **kwargs) if (source / g.file).exists()]

    monkeypatch.setattr(exporter, "family_for", lambda *a, **k: SourceGraphs(family_for(*a, **k)))


# Test files by their measured time, longest first (a full run's --durations, 2 cores). pyproject passes
# --no-loadscope-reorder, so xdist hands files to its workers in this collection order (by default it orders them by
# their number of tests, which put the 4-test container image build, about 9 minutes on one worker, last): the
# container build starts at once on one worker while the other takes the long files, and the short ones fill in.
LONGEST_FIRST = ("test_container_image.py", "test_export.py", "test_cpp.py", "test_quantize.py", "test_trt_build.py",
                 "test_newcomer.py", "test_untrusted_artifacts.py", "test_untrusted_inputs.py", "test_scene.py",
                 "test_cli_errors.py", "test_docker.py", "test_untrusted_config_checkpoint.py", "test_jacobi.py",
                 "test_llamagen_export.py",
                 "test_newcomer_two.py", "test_parity_checks.py", "test_demo.py", "test_upstream_parity.py")


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its tests' order


@pytest.fixture(scope="session")
def up():
    return upstream()


@pytest.fixture(scope="session")
def runs(tmp_path_factory: pytest.TempPathFactory, up):
    """``runs(name)``: the upstream model of variant ``name`` and its saved run (cached; the models are
    seeded, so every worker builds the same weights)."""
    root = tmp_path_factory.mktemp("runs")
    cache: dict[str, Run] = {}

    def get(name: str) -> Run:
        if name not in cache:
            cache[name] = build_variant(name, root)
        return cache[name]

    return get


# the tiny variants exported with ONNX Runtime's valid-length twin (export's default); the others are exported with
# --no-valid-length (3-4 s less each): the demo, the scene, LlamaGen and these carry the twin through the suite
WITH_VALID_LENGTH = ("first_stage", "coord_identity", "seg")  # seg: n_unmasked > 0, so none (the other case)


@pytest.fixture(scope="session")
def exported(runs, shared):
    """``exported(variant, precision)``: (run, artifacts dir, manifest), exported once per session."""
    from vqdeploy.artifacts import read_manifest
    from vqdeploy.export.exporter import export

    cache: dict[tuple[str, str], tuple] = {}

    def get(name: str, precision: str = "fp32"):
        if (name, precision) not in cache:
            run = runs(name)
            out = shared(f"{name}-{precision}", lambda path: export(run.ckpt, path, precision=precision,
                                                                     valid_length=name in WITH_VALID_LENGTH,
                                                                     log=lambda m: None))
            cache[name, precision] = (run, out, read_manifest(out))
        return cache[name, precision]

    return get


@pytest.fixture(scope="session")
def demo_export(shared) -> Path:
    """The bundled demo model exported once per session (fp32, parity checked): a shared, read-only artifacts dir."""
    from vqdeploy.export.exporter import export

    return shared("demo-fp32", lambda out: export(DEMO_CKPT, out, log=lambda m: None))


@pytest.fixture(scope="session")
def llamagen_export(shared) -> Path:
    """The shared LlamaGen reference pair (``../shared/reference/llamagen_c2i``: a tiny random c2i GPT and its VQ
    tokenizer) exported once per session (fp32, parity checked, guided sampler graph): a shared, read-only dir."""
    from llamagen_ref import GPT, OPTIONS, REFERENCE

    from vqdeploy.export.exporter import export

    if not REFERENCE.is_dir():
        pytest.skip(f"needs {REFERENCE}")
    return shared("llamagen-c2i-fp32", lambda out: export(GPT, out, family_options=OPTIONS, log=lambda m: None))


SCENE_RUN = ROOT.parent / "shared" / "reference" / "scene_bbox"


@pytest.fixture(scope="session")
def scene_export(shared) -> Path:
    """The shared reference scene (object-layout) model exported once per session (fp32, parity checked)."""
    from vqdeploy.export.exporter import export

    if not SCENE_RUN.is_dir():
        pytest.skip(f"needs {SCENE_RUN}")
    return shared("scene-fp32", lambda out: export(SCENE_RUN / "checkpoints" / "last.ckpt", out, log=lambda m: None))


@pytest.fixture
def demo_copy(demo_export: Path, tmp_path: Path) -> Path:
    """A private copy of the demo export, for a test that writes into or tampers with it."""
    return copy_artifacts(demo_export, tmp_path / "demo-artifacts")


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    cache = _shared_root(config._tmp_path_factory) / GRAPH_CACHE  # the controller's is the workers' shared root
    if cache.is_dir():
        entries = [e for e in cache.iterdir() if e.is_dir()]
        copies = sum((e / "copies").stat().st_size for e in entries if (e / "copies").exists())
        terminalreporter.write_line(f"graph cache: {len(entries)} graphs traced, {copies} exports of them copied")
    if MEASURED:
        terminalreporter.section("vqdeploy vs upstream taming: measured max abs errors (fp32, CPU)")
        for name in sorted(MEASURED):
            terminalreporter.write_line(f"{name:70s} {MEASURED[name]:.3e}")
    if MINIMA:
        terminalreporter.section("fixture sanity: measured minima")
        for name in sorted(MINIMA):
            terminalreporter.write_line(f"{name:70s} {MINIMA[name]:.3e}")
