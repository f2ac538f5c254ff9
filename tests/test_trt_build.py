"""``vqdeploy build-trt`` with TensorRT-RTX on a CPU-only machine (ahead of time, for SM86).

Engines cannot be deserialized or run without a GPU, so what is checked is what TensorRT gives
without one: the parse (zero errors), the network's I/O, the builder succeeding for every graph
and precision, engines.json against the manifest, the engine cache, the error paths, and the
load-time checks of engines.json (pure functions).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import copy_artifacts

trt = pytest.importorskip("tensorrt_rtx_bindings")

from vqdeploy import artifacts as mf
from vqdeploy.artifacts import Artifacts
from vqdeploy.artifacts import engines as record
from vqdeploy.artifacts.manifest import as_manifest
from vqdeploy.artifacts.tensors import TensorSpec
from vqdeploy.cli import main
from vqdeploy.errors import ArtifactError, BackendError, ConfigError
from vqdeploy.files import sha256_file
from vqdeploy.trt import check, profiles, shim
from vqdeploy.trt.engines import BuildOptions, build_engines, cache_key

SM86 = ("8.6",)


@pytest.fixture(scope="session")
def trt_artifacts(exported, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """fp32, fp16 and bf16 artifacts of the tiny sflckr-like ``seg`` model (VQGAN f4, a segmentation VQ cond
    stage, block size 32), the session's shared exports (test_export checks their parity): private copies,
    since the builds write engines/ into them."""
    root = tmp_path_factory.mktemp("trt_art")
    return {precision: copy_artifacts(exported("seg", precision)[1], root / precision)
            for precision in ("fp32", "fp16", "bf16")}


@pytest.fixture(scope="session")
def trt_built(trt_artifacts: dict[str, Path]) -> dict[str, tuple[Path, dict[str, Any], list[str]]]:
    """Every graph built for SM86, per precision: (artifacts, engines.json, console lines)."""
    out = {}
    for precision, art in trt_artifacts.items():
        lines: list[str] = []
        data = build_engines(art, BuildOptions(target_cc=SM86), echo=lines.append)
        out[precision] = (art, data, lines)
    return out


def _copy(art: Path, dst: Path, engines: bool = True) -> Path:
    shutil.copytree(art, dst, ignore=None if engines else shutil.ignore_patterns("engines"))
    return dst


# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_every_graph_parses_without_errors(trt_artifacts: dict[str, Path], precision: str) -> None:
    art = trt_artifacts[precision]
    logger = trt.Logger(trt.Logger.ERROR)
    for name, g in mf.read_manifest(art).raw["graphs"].items():
        builder = trt.Builder(logger)
        network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
        parser = trt.OnnxParser(network, logger)
        ok = parser.parse_from_file(str(art / g["file"]))
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        assert ok and not errors, (name, errors)


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_every_engine_built_and_recorded(trt_built: dict[str, Any], precision: str) -> None:
    art, data, lines = trt_built[precision]
    manifest = mf.read_manifest(art)
    assert set(data["engines"]) == set(manifest.raw["graphs"]) == {"encoder", "cond_encoder", "transformer", "sampler", "decoder"}
    assert data["model_fingerprint"] == manifest.raw["model_fingerprint"]
    assert record.read(art / "engines") == data  # what was returned is what was written
    for name, g in manifest.raw["graphs"].items():
        e = data["engines"][name]
        path = art / "engines" / e["file"]
        assert path.is_file() and path.stat().st_size == e["bytes"] > 0
        assert sha256_file(path) == e["sha256"]
        assert e["graph"]["sha256"] == g["sha256"]
        assert e["tensorrt"] == {"flavour": "tensorrt-rtx", "version": trt.__version__}
        assert e["target"] == {"compute_capabilities": ["8.6"], "gpu": None}
        assert e["precision"] == precision
        # I/O from the parsed network: the manifest's names, dtypes and static extents
        for kind in ("inputs", "outputs"):
            got = {t["name"]: t for t in e[kind]}
            assert list(got) == [t["name"] for t in g[kind]], (name, kind)
            for t in g[kind]:
                assert got[t["name"]]["dtype"] == t["dtype"], (name, t["name"])
                shape = got[t["name"]]["shape"]
                assert len(shape) == len(t["shape"])
                assert [s for s, w in zip(shape, t["shape"]) if isinstance(w, int)] == [w for w in t["shape"] if isinstance(w, int)]
        # profiles: each input's shapes from the manifest's dim ranges, in manifest order
        assert e["profile_order"] == list(g["profiles"])
        for pname, dims in g["profiles"].items():
            for t in map(TensorSpec.from_dict, g["inputs"]):
                want = {k: list(t.concrete({d: r[i] for d, r in dims.items()})) for i, k in enumerate(("min", "opt", "max"))}
                assert e["profiles"][pname][t.name] == want, (name, pname, t.name)
    tr = data["engines"]["transformer"]
    # one fixed-capacity cache in both profiles (the KVCacheUpdate layer needs a static sequence axis)
    assert tr["profiles"]["prefill"]["cache.0.key"]["max"][2] == tr["profiles"]["step"]["cache.0.key"]["min"][2] == 32
    assert tr["profiles"]["prefill"]["tokens"]["max"][1] == 32
    assert tr["profiles"]["step"]["position"]["max"] == [manifest.max_batch]  # one position per row
    assert tr["profiles"]["step"]["tokens"]["max"] == [manifest.max_batch, 1]  # step: one token, up to --max-batch
    kv = {t["name"]: t["dtype"] for t in tr["inputs"]}["cache.1.value"]
    assert kv == {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}[precision]
    assert sum("built" in line for line in lines) == 5
    leftovers = [p.name for p in (art / "engines").iterdir() if p.name.endswith(".tmp")]
    assert not leftovers
    log = (art / "engines" / "build.log").read_text()  # the builder's log and its progress phases
    assert "===== transformer: transformer.onnx -> transformer.engine" in log and "[progress] " in log


def test_cache_skips_unchanged_and_rebuilds_on_change(trt_built: dict[str, Any], tmp_path: Path) -> None:
    art = _copy(trt_built["fp32"][0], tmp_path / "art")
    before = record.read(art / "engines")
    assert before is not None
    mtimes = {p.name: p.stat().st_mtime_ns for p in (art / "engines").glob("*.engine")}

    lines: list[str] = []
    again = build_engines(art, BuildOptions(target_cc=["sm86"]), echo=lines.append)  # same target, other spelling
    assert sum(": unchanged, kept" in line for line in lines) == 5 and not any(": built" in line for line in lines)
    assert again["engines"] == before["engines"]
    assert {p.name: p.stat().st_mtime_ns for p in (art / "engines").glob("*.engine")} == mtimes

    # another batch range: a new key for the transformer only (--graph), the others untouched
    lines.clear()
    changed = build_engines(art, BuildOptions(target_cc=SM86, batch=(1, 2, 2), graphs=["transformer"]), echo=lines.append)
    tr = changed["engines"]["transformer"]
    assert any("built transformer.engine" in line for line in lines)
    assert tr["cache_key"] != before["engines"]["transformer"]["cache_key"]
    assert tr["profiles"]["step"]["tokens"]["max"] == [2, 1]
    assert changed["engines"]["decoder"] == before["engines"]["decoder"]

    # another target: every engine rebuilt; then a truncated engine file is noticed and rebuilt
    lines.clear()
    build_engines(art, BuildOptions(target_cc=["8.9"], graphs=["decoder"]), echo=lines.append)
    assert any("built decoder.engine" in line for line in lines)
    engine = art / "engines" / "decoder.engine"
    engine.write_bytes(engine.read_bytes()[:100])
    lines.clear()
    build_engines(art, BuildOptions(target_cc=["8.9"], graphs=["decoder"]), echo=lines.append)
    assert any("built decoder.engine" in line for line in lines)


def test_cache_key_covers_every_input() -> None:
    base = {"graph": {"sha256": "a"}, "tensorrt": {"flavour": "tensorrt-rtx", "version": "1"},
            "target": {"compute_capabilities": ["8.6"], "gpu": None}, "precision": "fp32", "profiles": {}, "workspace": None}
    keys = {cache_key(base)}
    for path, value in [(("graph", "sha256"), "b"), (("tensorrt", "version"), "2"), (("tensorrt", "flavour"), "tensorrt"),
                        (("target", "compute_capabilities"), ["8.9"]), (("target", "gpu"), "RTX 4090"),
                        (("precision",), "fp16"), (("profiles",), {"default": {}}), (("workspace",), 1 << 30)]:
        d = json.loads(json.dumps(base))
        node = d
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = value
        keys.add(cache_key(d))
    assert len(keys) == 9


def _fix_manifest_sha(art: Path, name: str) -> None:
    m = json.loads((art / mf.MANIFEST).read_text())
    m["graphs"][name]["sha256"] = sha256_file(art / m["graphs"][name]["file"])
    (art / mf.MANIFEST).write_text(json.dumps(m))


def test_corrupted_graph_is_named_and_leaves_no_engine(trt_artifacts: dict[str, Path], tmp_path: Path) -> None:
    import onnx

    art = _copy(trt_artifacts["fp32"], tmp_path / "art", engines=False)
    graph = art / "decoder.onnx"
    good = graph.read_bytes()

    def build() -> str:
        with pytest.raises(ArtifactError) as e:
            build_engines(art, BuildOptions(target_cc=SM86, graphs=["decoder"]), echo=lambda m: None)
        assert not (art / "engines" / "decoder.engine").exists()
        assert not [p for p in (art / "engines").glob(".*.tmp")] if (art / "engines").exists() else True
        return str(e.value)

    graph.write_bytes(good[: len(good) // 2])  # truncated: caught by the manifest hash first
    assert "decoder.onnx" in build() and "sha256 differs" in build()

    _fix_manifest_sha(art, "decoder")  # same bytes, hash updated: TensorRT's parser sees them
    msg = build()
    assert msg.startswith("decoder.onnx: TensorRT cannot parse the graph") and "MODEL_DESERIALIZE_FAILED" in msg

    model = onnx.load_from_string(good)
    node = next(n for n in model.graph.node if n.op_type == "Conv")
    index = list(model.graph.node).index(node)
    node.op_type = "NoSuchOp"
    graph.write_bytes(model.SerializeToString())
    _fix_manifest_sha(art, "decoder")
    msg = build()
    assert f"at node {index} '{node.name}' (op NoSuchOp)" in msg, msg
    assert "\n" not in msg

    # through the CLI: one error line, exit status 1
    from click.testing import CliRunner

    res = CliRunner().invoke(main, ["build-trt", "--artifacts", str(art), "--target-cc", "8.6"])
    assert res.exit_code == 1
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "(op NoSuchOp)" in errors[0]


def test_error_inside_nearest_code_function_names_it(trt_artifacts: dict[str, Path], tmp_path: Path) -> None:
    import onnx

    art = _copy(trt_artifacts["fp32"], tmp_path / "art", engines=False)
    model = onnx.load(str(art / "encoder.onnx"))
    fn = next(f for f in model.functions if f.name == "NearestCode")
    fn.node[len(fn.node) // 2].op_type = "NoSuchOp"
    onnx.save(model, str(art / "encoder.onnx"))
    _fix_manifest_sha(art, "encoder")
    with pytest.raises(ArtifactError, match=r"\(op NoSuchOp\) inside function .*NearestCode"):
        build_engines(art, BuildOptions(target_cc=SM86, graphs=["encoder"]), echo=lambda m: None)


def test_missing_tensorrt_is_one_clear_error(trt_artifacts: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` raise ImportError
    monkeypatch.setitem(sys.modules, "tensorrt_rtx_bindings", None)
    shim.load.cache_clear()
    try:
        with pytest.raises(BackendError, match=r"^TensorRT is not installed \(pip install 'vqdeploy\[tensorrt\]' or "
                                               r"pip install 'vqdeploy\[tensorrt-rtx\]'\)$"):
            build_engines(trt_artifacts["fp32"], BuildOptions(target_cc=SM86), echo=lambda m: None)
        from click.testing import CliRunner

        res = CliRunner().invoke(main, ["build-trt", "--artifacts", str(trt_artifacts["fp32"]), "--target-cc", "8.6"])
        assert res.exit_code == 1 and res.output.strip().startswith("error: TensorRT is not installed")
    finally:
        shim.load.cache_clear()


def test_builder_config_keeps_fp32_arithmetic() -> None:
    """TensorRT sets TF32 by default; fp32 engines are held to the fp32 parity bound, which ONNX Runtime's TF32 missed
    by 11x on an H200, so the builder config clears it (strongly typed networks take no other precision flag)."""
    from vqdeploy.trt.builder import configure
    from vqdeploy.trt.target import Target

    api = shim.load()
    builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
    assert builder.create_builder_config().get_flag(trt.BuilderFlag.TF32)  # TensorRT's own default
    config = configure(api, builder, {}, Target(("8.6",)), None)
    assert not config.get_flag(trt.BuilderFlag.TF32)


def test_flavour_detection(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    shim.load.cache_clear()
    try:
        # a `tensorrt` that is not a real build (no Builder) is skipped for TensorRT-RTX
        monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
        api = shim.load()
        assert (api.flavour, api.version, str(api)) == ("tensorrt-rtx", trt.__version__, f"TensorRT-RTX {trt.__version__}")
        shim.load.cache_clear()
        monkeypatch.setenv(shim.ENV, "tensorrt")
        with pytest.raises(BackendError, match="not a usable TensorRT build"):
            shim.load()
    finally:
        shim.load.cache_clear()


def test_imports_do_not_load_tensorrt() -> None:
    import subprocess

    code = ("import sys, vqdeploy, vqdeploy.cli, vqdeploy.commands.build_trt, vqdeploy.runtime.backends.tensorrt_backend;"
            "print([m for m in sys.modules if m.startswith('tensorrt')])")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"


def test_option_errors(trt_built: dict[str, Any]) -> None:
    art = trt_built["fp32"][0]
    quiet = {"echo": lambda m: None}
    with pytest.raises(ConfigError, match="exported in fp32.*vqdeploy export --precision fp16"):
        build_engines(art, BuildOptions(precision="fp16", target_cc=SM86), **quiet)
    with pytest.raises(ConfigError, match="bf16.*exported in fp32.*vqdeploy export --precision bf16"):
        build_engines(art, BuildOptions(precision="bf16", target_cc=SM86), **quiet)
    with pytest.raises(ConfigError, match="fp16.*exported in bf16"):
        build_engines(trt_built["bf16"][0], BuildOptions(precision="fp16", target_cc=SM86), **quiet)
    with pytest.raises(ConfigError, match=r"compute capability 9.0 is not supported by TensorRT-RTX .*supported: 7.5, 8.0, 8.6"):
        build_engines(art, BuildOptions(target_cc=["9.0"]), **quiet)
    with pytest.raises(ConfigError, match="expected a compute capability"):
        build_engines(art, BuildOptions(target_cc=["ampere"]), **quiet)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no GPU here: pass --target-cc"):
            build_engines(art, BuildOptions(), **quiet)
    with pytest.raises(ConfigError, match="4-pixel cells"):
        build_engines(art, BuildOptions(target_cc=SM86, size=((10, 10), (16, 16), (32, 32))), **quiet)
    with pytest.raises(ConfigError, match="no graph 'gpt'"):
        build_engines(art, BuildOptions(target_cc=SM86, graphs=["gpt"]), **quiet)


def test_profile_overrides(trt_built: dict[str, Any]) -> None:
    manifest = mf.read_manifest(trt_built["fp32"][0])
    graphs = manifest.raw["graphs"]
    size = profiles.parse_size("8:16:32x64")
    assert size == ((8, 8), (16, 16), (32, 64))
    enc = profiles.resolve(graphs["encoder"], "encoder", batch=profiles.parse_range("2:3:6", "--batch"), size=size)
    assert enc["default"]["image"] == ((2, 3, 8, 8), (3, 3, 16, 16), (6, 3, 32, 64))
    dec = profiles.resolve(graphs["decoder"], "decoder", size=size)  # latent cells, 4 pixels each
    assert dec["default"]["indices"] == ((1, 2, 2), (4, 4, 4), (manifest.max_batch, 8, 16))  # batch: the export's
    tr = profiles.resolve(graphs["transformer"], "transformer", batch=(1, 1, 1), size=size)  # no spatial dims
    assert tr["step"]["cache.0.key"] == ((1, 2, 32, 16),) * 3 and tr["step"]["tokens"][2] == (1, 1)
    assert profiles.parse_range("3", "--batch") == (3, 3, 3)
    for bad in ("0:1:2", "4:2:8", "a:b:c", "1:2"):
        with pytest.raises(ConfigError):
            profiles.parse_range(bad, "--batch")


def _machine(**kw: str) -> check.Machine:
    base = {"flavour": "tensorrt-rtx", "version": trt.__version__, "gpu": "NVIDIA GeForce RTX 3090", "compute_capability": "8.6"}
    return check.Machine(**{**base, **kw})


def test_load_checks_name_what_differs(trt_built: dict[str, Any]) -> None:
    art, data, _ = trt_built["fp32"]
    manifest = mf.read_manifest(art)
    path, entry = check.engine_path(Artifacts(art, manifest), "transformer", _machine())
    assert path == art / "engines" / "transformer.engine" and entry == data["engines"]["transformer"]

    cases = [
        (_machine(flavour="tensorrt", version="10.9.0"), f"built with TensorRT-RTX {trt.__version__}, this machine runs TensorRT 10.9.0"),
        (_machine(compute_capability="8.9", gpu="NVIDIA GeForce RTX 4090"), "built for SM86, this GPU (NVIDIA GeForce RTX 4090) is SM89"),
    ]
    for machine, why in cases:
        with pytest.raises(ArtifactError) as e:
            check.engine_path(Artifacts(art, manifest), "decoder", machine)
        assert why in str(e.value) and str(e.value).endswith(f"rebuild: vqdeploy build-trt --artifacts {art}")

    data = json.loads(json.dumps(manifest.raw))
    data["graphs"]["decoder"]["sha256"] = "0" * 64
    other = as_manifest(data)
    with pytest.raises(ArtifactError, match="built from another decoder.onnx"):
        check.engine_path(Artifacts(art, other), "decoder", _machine())


def test_load_checks_missing_and_corrupt_engines(trt_built: dict[str, Any], tmp_path: Path) -> None:
    art = _copy(trt_built["fp32"][0], tmp_path / "art")
    manifest = mf.read_manifest(art)
    (art / "engines" / "encoder.engine").write_bytes(b"garbage")
    with pytest.raises(ArtifactError, match="does not match engines.json"):
        check.engine_path(Artifacts(art, manifest), "encoder", _machine())
    (art / "engines" / "decoder.engine").unlink()
    with pytest.raises(ArtifactError, match="decoder.engine is missing"):
        check.engine_path(Artifacts(art, manifest), "decoder", _machine())
    shutil.rmtree(art / "engines")
    with pytest.raises(ArtifactError, match=f"no TensorRT engines .*vqdeploy build-trt --artifacts {art}"):
        check.engine_path(Artifacts(art, manifest), "decoder", _machine())


def test_backend_needs_a_gpu(trt_built: dict[str, Any]) -> None:
    from vqdeploy.runtime.backends.tensorrt_backend import TensorRTBackend

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    art = trt_built["fp32"][0]
    with pytest.raises(BackendError, match="CUDA GPU only"):
        TensorRTBackend(Artifacts(art, mf.read_manifest(art)), "cuda")


def test_cli_build_trt_reports_cached_engines(trt_built: dict[str, Any]) -> None:
    from click.testing import CliRunner

    art = trt_built["fp16"][0]
    res = CliRunner().invoke(main, ["build-trt", "--artifacts", str(art), "--target-cc", "8.6", "--precision", "fp16"])
    assert res.exit_code == 0, res.output
    assert "precision fp16" in res.output and res.output.count(": unchanged, kept") == 5


class FakeContext:
    """Stands in for an IExecutionContext on CPU: records what the executor binds and enqueues."""

    def __init__(self, manifest: dict[str, Any], profile: dict[str, dict[str, list[int]]]) -> None:
        info = manifest.raw["model"]["transformer"]
        self.nh, self.hd, self.vocab = int(info["n_head"]), int(info["head_dim"]), int(info["vocab_size"])
        self.profile = profile
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.enqueued = 0

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        lo, hi = self.profile[name]["min"], self.profile[name]["max"]
        self.shapes[name] = shape
        return all(a <= s <= b for a, s, b in zip(lo, shape, hi))

    def set_tensor_address(self, name: str, address: int) -> bool:
        self.addresses[name] = address
        return True

    def get_tensor_shape(self, name: str) -> Any:
        b, t = self.shapes["tokens"]
        cache = name.replace("cache_out", "cache")
        return trt.Dims([b, t, self.vocab] if name == "logits" else list(self.shapes[cache]))

    def execute_async_v3(self, stream: int) -> bool:
        self.enqueued += 1
        return True


def test_executor_binds_the_kv_cache_by_address(trt_built: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """The TensorRT glue without a GPU: shapes set per call, tensors bound by address, each layer's
    cache bound as its input and as its (aliased) output at the same address in every call, with
    the same shapes at every position; the profile picked by the number of new tokens, and enforced."""
    from vqdeploy.errors import InputError
    from vqdeploy.runtime.backends.graph_backend import GraphBackend, KVTransformer
    from vqdeploy.runtime.backends.tensorrt_backend import TrtExecutor

    art, data, _ = trt_built["fp32"]
    manifest = mf.read_manifest(art)
    entry = data["engines"]["transformer"]
    backend = GraphBackend(Artifacts(art, manifest), "cpu")  # host memory: the fake contexts only record addresses
    scratch = backend.memory.empty((256,), "uint8")
    contexts = {p: FakeContext(manifest, entry["profiles"][p]) for p in entry["profile_order"]}
    executors = {p: TrtExecutor(f"transformer ({p})", contexts[p], entry, p, 0, scratch, None, False)
                 for p in contexts}
    backend.executor = lambda graph, profile=None: executors[profile]  # type: ignore[method-assign]

    runner = KVTransformer(backend)
    runner.reset(2)
    c = entry["profiles"]["prefill"]["tokens"]["opt"][1]  # the condition's length, what the prefill is tuned for
    runner.forward(torch.randint(0, 32, (2, c)).numpy())
    pre, step = contexts["prefill"], contexts["step"]
    assert pre.enqueued == 1 and pre.shapes["cache.0.key"] == (2, 2, 32, 16) and pre.shapes["tokens"] == (2, c)
    assert all(a != 0 for a in pre.addresses.values())
    assert pre.addresses["cache.1.value"] == pre.addresses["cache_out.1.value"]  # in place: one buffer
    for k in range(2):
        runner.forward(torch.randint(0, 32, (2, 1)).numpy())
        assert list(backend.memory.download(runner.position)) == [c + k] * 2  # values: same shapes at every step
        assert step.shapes["cache.1.value"] == (2, 2, 32, 16) and step.shapes["position"] == (2,)
        assert step.addresses["cache.1.value"] == step.addresses["cache_out.1.value"] == pre.addresses["cache.1.value"]
        assert step.addresses["position"] == pre.addresses["position"]
    assert step.enqueued == 2
    window = contexts["window"]  # Jacobi decoding's calls (window + 1 tokens): their own profile
    assert entry["profiles"]["window"]["tokens"]["opt"][1] == entry["profiles"]["window"]["tokens"]["max"][1] == 17
    runner.rewind(1)
    runner.forward(torch.randint(0, 32, (2, 2)).numpy())
    runner.forward(torch.randint(0, 32, (2, 17)).numpy())
    assert window.enqueued == 2 and window.shapes["tokens"] == (2, 17) and pre.enqueued == 1
    assert window.addresses["cache.0.key"] == pre.addresses["cache.0.key"]
    runner.rewind(1)
    runner.forward(torch.randint(0, 32, (2, 18)).numpy())  # beyond the window's profile: the prefill's
    assert pre.enqueued == 2 and pre.shapes["tokens"] == (2, 18) and runner.length == 19

    with pytest.raises(InputError, match=r"outside the engine's 'step' profile .*rebuild with vqdeploy build-trt"):
        executors["step"].run({"tokens": backend.memory.zeros((2, 2), "int64")}, {})


def test_datacenter_step_is_captured_once_and_replayed(trt_built: dict[str, Any]) -> None:
    """Explicit CUDA-graph capture of the step enqueue (datacenter TensorRT): the first step runs,
    the second is captured, every later step (at any position) replays it; the prefill is never captured."""
    from test_cuda_memory import CaptureCudart

    from vqdeploy.runtime.backends.cuda_graphs import CapturedLaunches
    from vqdeploy.runtime.backends.cuda_memory import CudaRuntime
    from vqdeploy.runtime.backends.graph_backend import GraphBackend, KVTransformer
    from vqdeploy.runtime.backends.tensorrt_backend import TrtExecutor

    art, data, _ = trt_built["fp32"]
    manifest = mf.read_manifest(art)
    entry = data["engines"]["transformer"]
    backend = GraphBackend(Artifacts(art, manifest), "cpu")
    scratch = backend.memory.empty((256,), "uint8")
    rt = CaptureCudart()
    launches = CapturedLaunches(CudaRuntime(rt), 7)
    contexts = {p: FakeContext(manifest, entry["profiles"][p]) for p in entry["profile_order"]}
    executors = {p: TrtExecutor(f"transformer ({p})", contexts[p], entry, p, 0, scratch, None, False, None,
                                launches if p == "step" else None) for p in contexts}
    backend.executor = lambda graph, profile=None: executors[profile]  # type: ignore[method-assign]
    runner = KVTransformer(backend)
    runner.reset(2)
    c = entry["profiles"]["prefill"]["tokens"]["opt"][1]
    runner.forward(torch.randint(0, 32, (2, c)).numpy())
    for _ in range(5):
        runner.forward(torch.randint(0, 32, (2, 1)).numpy())
    assert contexts["prefill"].enqueued == 1 and contexts["step"].enqueued == 2  # eager, then inside the capture
    assert launches.captures == 1 and launches.replays == 4 and runner.length == c + 5
