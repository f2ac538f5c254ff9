"""An artifacts directory is untrusted input (issue 11): what manifest.json and engines.json name,
and every path vqdeploy writes into it.

The general rules, each tested per case below:
- reads: every file named by manifest.json or engines.json (and every external-data file named
  inside an ``.onnx``) is inside the artifacts directory, reached without a symlink; anything else is
  refused with one line naming the entry, before any loader sees it;
- writes: nothing outside the artifacts (or the user's ``--out``) directory is written, truncated or
  appended; sentinels outside, reached through symlinks planted at every path vqdeploy writes, keep
  their contents and mtimes; where a command writes is checked before its expensive work;
- a malformed manifest or engines.json (missing keys, wrong types, NaN, deep nesting, huge numbers
  or files) is one ``error:`` line and a non-zero exit, never a traceback or "internal error";
- the fuzz tests mutate manifest.json and engines.json and run the library entry points: success or
  a ``VQDeployError``, never another exception, and no file outside touched.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from conftest import copy_artifacts
from fuzzing import examples

from vqdeploy.artifacts import MANIFEST, Artifacts, read_manifest
from vqdeploy.cli import main
from vqdeploy.errors import ArtifactError, BackendError, VQDeployError
from vqdeploy.files import sha256_file

DEMO = Path(__file__).resolve().parent.parent / "models" / "demo"
SKETCH = sorted((DEMO / "sketches").glob("*.png"))[0]
SM86 = ("8.6",)


# --- fixtures and helpers ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo(demo_export: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the session's demo export (exporting is not under test here)."""
    return copy_artifacts(demo_export, tmp_path_factory.mktemp("untrusted") / "demo")


@pytest.fixture(scope="module")
def demo_engines(demo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo with the sampler's engine built for SM86 (TensorRT-RTX, ahead of time: a second)."""
    pytest.importorskip("tensorrt_rtx_bindings")
    from vqdeploy.trt.engines import BuildOptions, build_engines

    out = tmp_path_factory.mktemp("untrusted_engines") / "demo"
    shutil.copytree(demo, out)
    build_engines(out, BuildOptions(target_cc=SM86, graphs=("sampler",)), echo=lambda m: None)
    return out


class Outside:
    """Sentinel files outside the artifacts directory: what a stray write would change."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "outside"
        self.dir.mkdir()
        self.files: dict[Path, tuple[bytes, int]] = {}

    def sentinel(self, name: str) -> Path:
        path = self.dir / name
        path.write_bytes(f"sentinel {name}\n".encode())
        os.utime(path, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
        self.files[path] = (path.read_bytes(), path.stat().st_mtime_ns)
        return path

    def plant(self, link: Path, name: str | None = None) -> Path:
        """A symlink at ``link`` to a new sentinel."""
        target = self.sentinel(name or link.name.lstrip(".") + ".sentinel")
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target)
        return target

    def assert_untouched(self) -> None:
        for path, (data, mtime) in self.files.items():
            assert path.read_bytes() == data, f"{path} was written"
            assert path.stat().st_mtime_ns == mtime, f"{path} was touched"
        assert sorted(self.dir.iterdir()) == sorted(self.files), "files were created outside"


@pytest.fixture
def outside(tmp_path: Path) -> Outside:
    return Outside(tmp_path)


def edit_manifest(art: Path, change: Callable[[dict[str, Any]], Any]) -> None:
    m = json.loads((art / MANIFEST).read_text())
    change(m)
    (art / MANIFEST).write_text(json.dumps(m))


def fix_sha(art: Path, graph: str) -> None:
    def change(m: dict[str, Any]) -> None:
        m["graphs"][graph]["sha256"] = sha256_file(art / m["graphs"][graph]["file"])

    edit_manifest(art, change)


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def assert_one_error(res: Result, *needles: str) -> str:
    """Exit != 0, exactly one ``error:`` line (the last), no traceback, no "internal error"."""
    assert res.exit_code != 0, res.output
    assert "Traceback" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and res.stderr.strip().splitlines()[-1] == errors[0], res.stderr
    assert "internal error" not in errors[0], errors[0]
    for n in needles:
        assert n in errors[0], errors[0]
    return errors[0]


def leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.rglob("*.tmp")] if directory.exists() else []


def run_args(art: Path, tmp_path: Path) -> list[str]:
    return ["run", str(SKETCH), "--artifacts", str(art), "--backend", "onnxruntime",
            "--out", str(tmp_path / "s" / "x.png")]


def build_args(art: Path, graph: str = "sampler") -> list[str]:
    return ["build-trt", "--artifacts", str(art), "--target-cc", "8.6", "--graph", graph]


# --- manifest.json: one validation step, one error line ----------------------------------------
def _text(change: Callable[[str], str]) -> Callable[[str], str]:
    """Marks a change of the manifest's text (what json.dumps cannot write)."""
    change.text = True  # type: ignore[attr-defined]
    return change


@_text
def _deep(text: str) -> str:
    return text.rstrip()[:-1] + ', "deep": ' + "[" * 100_000 + "]" * 100_000 + "}"


def _set(*path: Any, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(m: dict[str, Any]) -> None:
        node = m
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = value

    return change


def _delete(*path: Any) -> Callable[[dict[str, Any]], None]:
    def change(m: dict[str, Any]) -> None:
        node = m
        for k in path[:-1]:
            node = node[k]
        del node[path[-1]]

    return change


def _rename_graph(m: dict[str, Any]) -> None:
    m["graphs"]["../../x"] = m["graphs"].pop("sampler")


# case -> (change of the parsed manifest, or of its text; what the one error line must say)
MANIFEST_CASES: dict[str, tuple[Callable[[Any], Any], str]] = {
    "missing_key": (_delete("model", "conditioning", "preprocessing"), "model.conditioning.preprocessing: missing"),
    "wrong_type": (_set("model", "transformer", "vocab_size", value="x"),
                   'model.transformer.vocab_size: expected a positive integer (at most 16777216), got "x"'),
    "bool_for_int": (_set("max_batch", value=True), "max_batch: expected a positive integer"),
    "negative": (_set("model", "first_stage", "resolution", value=-64), "model.first_stage.resolution"),
    "huge_number": (_set("model", "transformer", "n_layer", value=2**64), "model.transformer.n_layer"),
    "float_for_int": (_set("graphs", "decoder", "dims", "batch", "max", value=8.5), "graphs.decoder.dims.batch.max"),
    "unknown_kind": (_set("model", "kind", value="gpt"), 'model.kind: expected one of "vqgan", "net2net"'),
    "bad_precision": (_set("precision", value="int4"), "precision"),
    "not_a_permutation": (_set("model", "permuter", "order", value=[0] * 64), "model.permuter.order"),
    "tokens_disagree": (_set("model", "tokens", "image", value=65), "model.tokens.image"),
    "grid_disagrees": (_set("model", "first_stage", "latent_grid", value=[8, 1000]), "model.first_stage.latent_grid"),
    "missing_dim_range": (_delete("graphs", "decoder", "profiles", "default", "latent_h"),
                          "graphs.decoder.profiles.default: no range for dim 'latent_h'"),
    "bad_dim_expression": (_set("graphs", "decoder", "outputs", 0, "shape", 2, value="latent_h**8"),
                           "graphs.decoder.outputs[0].shape[2]"),
    "unbound_output_dim": (_set("graphs", "decoder", "outputs", 0, "shape", 2, value="tokens"),
                           "graphs.decoder.outputs[0].shape"),
    "kv_cache_layers": (_set("model", "transformer", "n_layer", value=5), "for n_layer 5"),
    "missing_graph": (_delete("graphs", "decoder"), "graphs: no 'decoder' graph"),
    "missing_stage_tensor": (_set("graphs", "encoder", "outputs", 0, "name", value="codes"), "'indices' int64"),
    "graph_name_path": (_rename_graph, "refused name '../../x'"),
    "graph_file_absolute": (_set("graphs", "decoder", "file", value="/etc/passwd"), "graphs.decoder.file: refused"),
    "graph_file_dotdot": (_set("graphs", "decoder", "file", value="../../etc/passwd"), "graphs.decoder.file: refused"),
    "external_data_dir": (_set("graphs", "decoder", "external_data", value={"file": "a/b", "sha256": "0" * 64}),
                          "graphs.decoder.external_data.file"),
    "bad_sha": (_set("graphs", "decoder", "sha256", value="xyz"), "graphs.decoder.sha256"),
    "graphs_not_object": (_set("graphs", value=[]), "graphs: expected an object"),
    "not_an_object": (_text(lambda text: "[]"), "not a vqdeploy manifest"),
    "nan": (_text(lambda text: text.replace('"max_batch": 8', '"max_batch": NaN')), "NaN is not a JSON number"),
    "infinity": (_text(lambda text: text.replace('"resolution": 64', '"resolution": -Infinity', 1)), "-Infinity"),
    "deep_nesting": (_deep, "nested too deeply"),
    "huge_int_text": (_text(lambda text: text.replace('"max_batch": 8', '"max_batch": ' + "9" * 5000)),
                      "unreadable JSON"),
    "huge_file": (_text(lambda text: text.rstrip()[:-1] + ', "pad": "' + "x" * (17 << 20) + '"}'), "over 16 MiB"),
    "not_utf8": (_text(lambda text: text.replace('"target"', '"t\udcff"')), "unreadable JSON"),
    "truncated": (_text(lambda text: text[: len(text) // 2]), "unreadable JSON"),
}


def _apply(art: Path, change: Callable[[Any], Any]) -> None:
    path = art / MANIFEST
    if getattr(change, "text", False):
        path.write_bytes(change(path.read_text()).encode("utf-8", "surrogateescape"))
    else:
        edit_manifest(art, change)


@pytest.mark.parametrize("case", list(MANIFEST_CASES))
def test_malformed_manifest_is_one_error_line(demo: Path, tmp_path: Path, case: str) -> None:
    change, message = MANIFEST_CASES[case]
    art = copy_artifacts(demo, tmp_path / "art")
    _apply(art, change)
    with pytest.raises(ArtifactError) as e:
        read_manifest(art)
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert f"{art / MANIFEST}:" in str(e.value) or "manifest.json" in str(e.value)
    assert_one_error(cli(*run_args(art, tmp_path)), message)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("command", ["run", "build-trt", "parity", "bench"])
def test_every_command_validates_the_manifest(demo: Path, tmp_path: Path, command: str) -> None:
    art = copy_artifacts(demo, tmp_path / "art")
    _apply(art, MANIFEST_CASES["wrong_type"][0])
    args = {"run": run_args(art, tmp_path), "build-trt": build_args(art),
            "parity": ["parity", "--artifacts", str(art), "--backends", "onnxruntime"],
            "bench": ["bench", "--artifacts", str(art), "--backends", "onnxruntime"]}[command]
    assert_one_error(cli(*args), "model.transformer.vocab_size")
    assert sorted(p.name for p in art.iterdir()) == sorted(p.name for p in demo.iterdir())


def test_manifest_symlink_is_refused(demo: Path, tmp_path: Path, outside: Outside) -> None:
    art = copy_artifacts(demo, tmp_path / "art")
    (outside.dir / "manifest.json").write_bytes((art / MANIFEST).read_bytes())
    outside.files[outside.dir / "manifest.json"] = ((art / MANIFEST).read_bytes(),
                                                    (outside.dir / "manifest.json").stat().st_mtime_ns)
    (art / MANIFEST).unlink()
    (art / MANIFEST).symlink_to(outside.dir / "manifest.json")
    assert_one_error(cli(*run_args(art, tmp_path)), "is a symlink")
    outside.assert_untouched()


# --- reads: every file the manifest names is inside ---------------------------------------------
def _outside_copy(art: Path, outside: Outside, graph: str = "decoder") -> Path:
    """A valid copy of the graph outside: only the path rule can stop it being read."""
    target = outside.dir / f"{graph}.onnx"
    shutil.copy(art / f"{graph}.onnx", target)
    outside.files[target] = (target.read_bytes(), target.stat().st_mtime_ns)
    return target


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink", "symlinked_dir"])
def test_graph_file_outside_is_never_read(demo: Path, tmp_path: Path, outside: Outside, how: str) -> None:
    art = copy_artifacts(demo, tmp_path / "art")
    target = _outside_copy(art, outside)
    if how == "dotdot":
        edit_manifest(art, _set("graphs", "decoder", "file", value="../outside/decoder.onnx"))
    elif how == "absolute":
        edit_manifest(art, _set("graphs", "decoder", "file", value=str(target)))
    elif how == "symlink":
        (art / "decoder.onnx").unlink()
        (art / "decoder.onnx").symlink_to(target)
    else:  # graphs/decoder.onnx where graphs/ is a link to the outside directory
        (art / "graphs").symlink_to(outside.dir)
        edit_manifest(art, _set("graphs", "decoder", "file", value="graphs/decoder.onnx"))
    expect = "graphs.decoder.file"
    assert_one_error(cli(*run_args(art, tmp_path)), expect)
    pytest.importorskip("tensorrt_rtx_bindings")
    assert_one_error(cli(*build_args(art, "decoder")), expect)
    assert not (art / "engines" / "decoder.engine").exists()
    outside.assert_untouched()


def _externalize(art: Path, location: str, data_file: Path) -> None:
    """Move decoder.onnx's largest initializer to ``data_file``, named in the graph as ``location``."""
    import onnx
    from onnx.external_data_helper import set_external_data

    model = onnx.load(str(art / "decoder.onnx"))
    t = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    data_file.write_bytes(t.raw_data)
    set_external_data(t, location=location)
    t.ClearField("raw_data")
    t.data_location = onnx.TensorProto.EXTERNAL
    (art / "decoder.onnx").write_bytes(model.SerializeToString())
    fix_sha(art, "decoder")


@pytest.mark.parametrize("how", ["unlisted", "other_file", "absolute"])
def test_external_data_outside_is_never_read(demo: Path, tmp_path: Path, outside: Outside, how: str) -> None:
    """The .onnx names its own external data; a name other than the manifest's is refused before
    ONNX Runtime or the TensorRT parser follows it."""
    art = copy_artifacts(demo, tmp_path / "art")
    data = outside.dir / "w.bin"
    _externalize(art, str(data) if how == "absolute" else "../outside/w.bin", data)
    outside.files[data] = (data.read_bytes(), data.stat().st_mtime_ns)
    if how == "other_file":  # the manifest lists a legitimate data file; the graph points elsewhere
        (art / "decoder.onnx.data").write_bytes(b"\0" * 16)
        edit_manifest(art, _set("graphs", "decoder", "external_data",
                                value={"file": "decoder.onnx.data", "sha256": sha256_file(art / "decoder.onnx.data")}))
    err = assert_one_error(cli(*run_args(art, tmp_path)), "decoder.onnx: tensor", "keeps its data in file")
    assert "refused" in err
    assert not (tmp_path / "s").exists()
    pytest.importorskip("tensorrt_rtx_bindings")
    assert_one_error(cli(*build_args(art, "decoder")), "keeps its data in file")
    outside.assert_untouched()


@pytest.mark.parametrize("kind", ["hard_link", "fifo"])
def test_external_data_that_is_a_hard_link_or_a_fifo_is_refused(demo: Path, tmp_path: Path, outside: Outside,
                                                                kind: str) -> None:
    """The listed data file, with the right sha256, but a second name of a file outside the directory (link
    count 2), or a FIFO: refused before ONNX Runtime (or the hash) reads it."""
    art = copy_artifacts(demo, tmp_path / "art")
    data = outside.dir / "w.bin"
    _externalize(art, "decoder.onnx.data", data)
    outside.files[data] = (data.read_bytes(), data.stat().st_mtime_ns)
    edit_manifest(art, _set("graphs", "decoder", "external_data",
                            value={"file": "decoder.onnx.data", "sha256": sha256_file(data)}))
    if kind == "hard_link":
        os.link(data, art / "decoder.onnx.data")
        expect = "it has 2 hard links"
    else:
        os.mkfifo(art / "decoder.onnx.data")
        expect = "not a regular file"
    t = time.perf_counter()
    assert_one_error(cli(*run_args(art, tmp_path)), "graphs.decoder.external_data.file", "refused", expect)
    assert time.perf_counter() - t < 60 and not (tmp_path / "s").exists()
    outside.assert_untouched()


def test_external_data_inside_still_loads(demo: Path, tmp_path: Path) -> None:
    """The check does not break the legitimate case: a data file beside the graph, as listed."""
    art = copy_artifacts(demo, tmp_path / "art")
    _externalize(art, "decoder.onnx.data", art / "decoder.onnx.data")
    edit_manifest(art, _set("graphs", "decoder", "external_data",
                            value={"file": "decoder.onnx.data", "sha256": sha256_file(art / "decoder.onnx.data")}))
    res = cli(*run_args(art, tmp_path))
    assert res.exit_code == 0, res.output


# --- writes: build-trt ----------------------------------------------------------------------------
@pytest.mark.parametrize("planted", [".build.lock", "build.log", "build.prev.log", "sampler.engine", "engines.json"])
def test_build_trt_never_writes_through_a_planted_link(demo_engines: Path, tmp_path: Path, outside: Outside,
                                                       planted: str) -> None:
    """A symlink at each path build-trt writes: refused before anything is built, left alone, never followed."""
    art = copy_artifacts(demo_engines, tmp_path / "art")
    link = art / "engines" / planted
    if link.exists():
        link.unlink()
    outside.plant(link)
    res = cli(*build_args(art), "--force")
    assert_one_error(res, "is a symlink")
    assert "building" not in res.stderr
    assert link.is_symlink()  # refused, left alone
    assert not leftovers(art / "engines")
    outside.assert_untouched()


def test_build_trt_refuses_a_symlinked_engines_dir(demo: Path, tmp_path: Path, outside: Outside) -> None:
    pytest.importorskip("tensorrt_rtx_bindings")
    art = copy_artifacts(demo, tmp_path / "art")
    (art / "engines").symlink_to(outside.dir)
    assert_one_error(cli(*build_args(art)), "engines: refused: is a symlink")
    outside.assert_untouched()


def test_build_trt_graph_names_cannot_escape(demo: Path, tmp_path: Path, outside: Outside) -> None:
    pytest.importorskip("tensorrt_rtx_bindings")
    art = copy_artifacts(demo, tmp_path / "art")
    edit_manifest(art, _rename_graph)
    assert_one_error(cli("build-trt", "--artifacts", str(art), "--target-cc", "8.6"), "refused name '../../x'")
    assert not (tmp_path / "x.engine").exists() and not (art / "engines").exists()
    outside.assert_untouched()


def test_build_trt_checks_its_outputs_before_building(demo: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorrt_rtx_bindings")
    art = copy_artifacts(demo, tmp_path / "art")
    (art / "engines").write_text("not a directory")
    assert_one_error(cli(*build_args(art)), "engines: exists and is not a directory")
    (art / "engines").unlink()
    (art / "engines" / "sampler.engine").mkdir(parents=True)
    res = cli(*build_args(art))
    assert_one_error(res, "sampler.engine: not a regular file")
    assert "building" not in res.stderr
    shutil.rmtree(art / "engines")
    (art / "engines" / "build.log").mkdir(parents=True)
    res = cli(*build_args(art))
    assert_one_error(res, "build.log: it is a directory")
    assert "building" not in res.stderr


def test_build_log_is_rotated_never_appended(demo_engines: Path, tmp_path: Path) -> None:
    """build.log = the last build that built something, build.prev.log = the one before (files of
    their own, never reopened); a run that only keeps cached engines leaves both alone."""
    art = copy_artifacts(demo_engines, tmp_path / "art")
    log, prev = art / "engines" / "build.log", art / "engines" / "build.prev.log"
    first = (log.read_text(), log.stat().st_ino)
    assert first[0].count("===== sampler") == 1
    assert cli(*build_args(art), "--force").exit_code == 0
    assert (prev.read_text(), prev.stat().st_ino) == first
    assert log.stat().st_ino != first[1] and log.read_text().count("===== sampler") == 1
    second = (log.read_text(), log.stat().st_ino)
    assert cli(*build_args(art)).exit_code == 0  # cached: nothing logged, nothing rotated
    assert (log.read_text(), log.stat().st_ino) == second and (prev.read_text(), prev.stat().st_ino) == first


def test_build_lock_that_is_a_fifo_does_not_hang(demo_engines: Path, tmp_path: Path) -> None:
    art = copy_artifacts(demo_engines, tmp_path / "art")
    (art / "engines" / ".build.lock").unlink(missing_ok=True)  # removed after each build
    os.mkfifo(art / "engines" / ".build.lock")
    proc = subprocess.run([sys.executable, "-m", "vqdeploy", *build_args(art)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "not a regular file" in errors[0], proc.stderr


# --- engines.json: validated, and the files it names resolved like the manifest's ----------------
def _machine() -> Any:
    import tensorrt_rtx_bindings as trt

    from vqdeploy.trt import check

    return check.Machine("tensorrt-rtx", trt.__version__, "NVIDIA GeForce RTX 3090", "8.6")


def _edit_engines(art: Path, change: Callable[[dict[str, Any]], Any]) -> None:
    path = art / "engines" / "engines.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


ENGINES_CASES: dict[str, tuple[Callable[[dict[str, Any]], Any], str]] = {
    "file_dotdot": (_set("engines", "sampler", "file", value="../../outside/x.engine"), "engines.sampler.file"),
    "file_absolute": (_set("engines", "sampler", "file", value="/etc/passwd"), "engines.sampler.file"),
    "file_other_engine": (_set("engines", "sampler", "file", value="decoder.engine"), "engines.sampler.file"),
    "missing_profiles": (_delete("engines", "sampler", "profiles"), "engines.sampler.profiles: missing"),
    "profile_order": (_set("engines", "sampler", "profile_order", value=["nope"]), "engines.sampler.profile_order"),
    "bad_shapes": (_set("engines", "sampler", "profiles", "default", "logits", "max", value=[1, "x", 3]),
                   "engines.sampler.profiles.default.logits.max[1]"),
    "cc_type": (_set("engines", "sampler", "target", "compute_capabilities", value=[8.6]), "compute_capabilities[0]"),
    "engines_list": (_set("engines", value=[]), "engines: expected an object"),
    "name_path": (lambda d: d["engines"].update({"../x": d["engines"]["sampler"]}), "refused name '../x'"),
}


@pytest.mark.parametrize("case", list(ENGINES_CASES))
def test_malformed_engines_json(demo_engines: Path, tmp_path: Path, outside: Outside, case: str) -> None:
    """Loading refuses it with the entry named; build-trt notes it and rebuilds (the record is its own)."""
    from vqdeploy.trt import check

    change, message = ENGINES_CASES[case]
    art = copy_artifacts(demo_engines, tmp_path / "art")
    _edit_engines(art, change)
    with pytest.raises(ArtifactError) as e:
        check.engine_path(Artifacts(art, read_manifest(art)), "sampler", _machine())
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)
    res = cli(*build_args(art))
    assert res.exit_code == 0, res.output
    assert f"note: {art / 'engines' / 'engines.json'}" in res.stderr and "built sampler.engine" in res.stderr
    check.engine_path(Artifacts(art, read_manifest(art)), "sampler", _machine())  # a valid record again
    outside.assert_untouched()


def test_cached_build_restates_what_the_key_covers(demo_engines: Path, tmp_path: Path) -> None:
    """The cache key does not protect the record itself: a cached engine's entry is rewritten from
    this build's inputs, so a damaged (yet well-formed) entry does not survive the build."""
    from vqdeploy.trt import check

    art = copy_artifacts(demo_engines, tmp_path / "art")
    good = json.loads((art / "engines" / "engines.json").read_text())["engines"]["sampler"]

    def damage(d: dict[str, Any]) -> None:
        prof = d["engines"]["sampler"]["profiles"]["default"]
        prof["renamed"] = prof.pop("temperature")

    _edit_engines(art, damage)
    with pytest.raises(ArtifactError, match="no shapes for input 'temperature'"):
        check.engine_path(Artifacts(art, read_manifest(art)), "sampler", _machine())
    res = cli(*build_args(art))
    assert res.exit_code == 0 and "unchanged, kept sampler.engine" in res.stderr, res.output
    _, entry = check.engine_path(Artifacts(art, read_manifest(art)), "sampler", _machine())
    assert entry["profiles"] == good["profiles"]


@pytest.mark.parametrize("planted", ["engines", "engines.json", "sampler.engine"])
def test_engine_loading_refuses_symlinks(demo_engines: Path, tmp_path: Path, outside: Outside, planted: str) -> None:
    from vqdeploy.trt import check

    art = copy_artifacts(demo_engines, tmp_path / "art")
    if planted == "engines":
        shutil.move(art / "engines", outside.dir / "engines")
        (art / "engines").symlink_to(outside.dir / "engines")
        outside.files = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (outside.dir / "engines").iterdir()}
        outside.dir = outside.dir / "engines"
    else:
        path = art / "engines" / planted
        shutil.move(path, outside.dir / planted)
        path.symlink_to(outside.dir / planted)
        outside.files[outside.dir / planted] = ((outside.dir / planted).read_bytes(),
                                                (outside.dir / planted).stat().st_mtime_ns)
    with pytest.raises(ArtifactError, match="is a symlink"):
        check.engine_path(Artifacts(art, read_manifest(art)), "sampler", _machine())
    outside.assert_untouched()


# --- writes: parity and bench -------------------------------------------------------------------
PARITY_FILES = ["report.json", "report.html", "torch-cpu-0.png", "torch-cpu-1.png", "onnxruntime-cpu-0.png",
                "onnxruntime-cpu-1.png"]


def test_parity_never_writes_through_a_planted_link(demo: Path, tmp_path: Path, outside: Outside) -> None:
    """A symlink where a report file goes: refused before any work (the write rule), never followed."""
    art = copy_artifacts(demo, tmp_path / "art")
    for name in PARITY_FILES:
        outside.plant(art / "parity" / name)
    res = cli("parity", "--artifacts", str(art), "--backends", "onnxruntime")
    assert_one_error(res, "parity --out: refused to write", "it is a symlink")
    assert "parity: onnxruntime" not in res.stderr
    for name in PARITY_FILES:
        assert (art / "parity" / name).is_symlink(), name
    assert not leftovers(art / "parity")
    outside.assert_untouched()


def test_parity_refuses_a_symlinked_report_dir_before_work(demo: Path, tmp_path: Path, outside: Outside) -> None:
    art = copy_artifacts(demo, tmp_path / "art")
    (art / "parity").symlink_to(outside.dir)
    t = time.perf_counter()
    res = cli("parity", "--artifacts", str(art), "--backends", "onnxruntime")
    assert_one_error(res, "parity: refused: is a symlink")
    assert "parity: onnxruntime" not in res.stderr and time.perf_counter() - t < 20
    outside.assert_untouched()


@pytest.mark.parametrize("case", ["out_under_a_file", "report_is_a_directory"])
def test_parity_checks_its_outputs_before_work(demo: Path, tmp_path: Path, case: str) -> None:
    art = copy_artifacts(demo, tmp_path / "art")
    out = tmp_path / "p"
    if case == "out_under_a_file":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "p"
    else:
        (out / "report.json").mkdir(parents=True)
    res = cli("parity", "--artifacts", str(art), "--backends", "onnxruntime", "--out", str(out))
    assert_one_error(res, "parity --out")
    assert "parity: onnxruntime" not in res.stderr


def test_bench_never_writes_through_a_planted_link(demo: Path, tmp_path: Path, outside: Outside) -> None:
    art = copy_artifacts(demo, tmp_path / "art")
    outside.plant(art / "bench.json")
    res = cli("bench", "--artifacts", str(art), "--backends", "onnxruntime", "--repeats", "1", "--no-reference")
    assert_one_error(res, "bench --out: refused to write", "it is a symlink")
    assert "bench: " not in res.stderr and (art / "bench.json").is_symlink()
    outside.assert_untouched()


@pytest.mark.parametrize("args,message", [
    (["--num-samples", "0"], "--num-samples"), (["--num-samples", "100000"], "--num-samples"),
    (["--repeats", "0"], "--repeats"), (["--repeats", "-3"], "--repeats"),
    (["--out", "DIR"], "it is a directory"), (["--out", "FILE/b.json"], "bench --out"),
])
def test_bench_options_fail_before_work(demo: Path, tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "DIR").mkdir()
    (tmp_path / "FILE").write_text("x")
    args = [str(tmp_path / a) if a in ("DIR", "FILE/b.json") else a for a in args]
    res = cli("bench", "--artifacts", str(demo), "--backends", "onnxruntime", *args)
    assert_one_error(res, message)
    assert "bench: " not in res.stderr and not (demo / "bench.json").exists()


# --- ONNX Runtime: errors are one line, its log is quiet ------------------------------------------
def test_onnxruntime_load_error_is_one_line(demo: Path, tmp_path: Path) -> None:
    """Through a real process: ONNX Runtime's native log (coloured, on fd 2) stays quiet."""
    art = copy_artifacts(demo, tmp_path / "art")
    (art / "cond_encoder.onnx").write_bytes(b"\x08\x07garbage" * 100)
    fix_sha(art, "cond_encoder")
    env = {k: v for k, v in os.environ.items() if k != "VQDEPLOY_DEBUG"}
    proc = subprocess.run([sys.executable, "-m", "vqdeploy", *run_args(art, tmp_path)], capture_output=True,
                          text=True, timeout=300, check=False, env=env)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "cond_encoder.onnx: onnxruntime cannot load it" in lines[0]
    assert "internal error" not in lines[0] and "\x1b[" not in proc.stderr


def test_onnxruntime_run_error_is_one_line(demo: Path, capfd: pytest.CaptureFixture[str]) -> None:
    from vqdeploy.runtime.backends.buffers import HostMemory
    from vqdeploy.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

    be = OnnxRuntimeBackend(Artifacts.open(demo))
    ex = be.executor("decoder")
    mem = HostMemory()
    capfd.readouterr()
    with pytest.raises(BackendError) as e:  # an output buffer of the wrong shape: ONNX Runtime refuses it
        ex.run({"indices": mem.zeros((1, 8, 8), "int64")}, {"image": mem.empty((1, 3, 10, 10), "float32")})
    assert str(e.value).startswith("decoder: onnxruntime failed to run it (") and "\n" not in str(e.value)
    captured = capfd.readouterr()
    assert "onnxruntime" not in captured.err and "\x1b[" not in captured.err, captured.err


def test_graph_io_must_match_the_manifest(demo: Path, tmp_path: Path) -> None:
    """The buffers bound by address are sized from the manifest: a graph that disagrees is refused."""
    art = copy_artifacts(demo, tmp_path / "art")
    edit_manifest(art, _set("graphs", "decoder", "outputs", 0, "shape", 1, value=4))
    err = assert_one_error(cli(*run_args(art, tmp_path)), "decoder.onnx: output 'image' is tensor(float)")
    assert "manifest.json graphs.decoder" in err


# --- fuzz -------------------------------------------------------------------------------------------
hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies

DEEP = "__deep__"
NAN = "__nan__"


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every key path of a JSON tree (the first items of each list only)."""
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node[:3]):
            yield from _paths(v, (*prefix, i))


def _values(outside: Path) -> Any:
    strings = st.sampled_from(["", "x", "../x", "../../outside/sentinel", str(outside / "sentinel"), "/etc/passwd",
                               "a/../b", "./decoder.onnx", "decoder.onnx", "sampler.engine", "engines/../x",
                               "float32", "bfloat16", "batch", "batch*0", "past+tokens", "latent_h*8", "prefill",
                               "tensorrt-rtx", "8.6", "0" * 64, "\u0000", "x" * 300, DEEP, NAN])
    return st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.integers(-2, 70),
                     st.floats(allow_nan=False, allow_infinity=False), strings,
                     st.lists(st.integers(-3, 130), max_size=4), st.just({}), st.just([]))


def _mutation(paths: list[tuple[Any, ...]], outside: Path) -> Any:
    return st.tuples(st.sampled_from(paths), st.sampled_from(["set", "delete", "wrap", "rename"]), _values(outside))


def _mutate(doc: Any, mutations: list[Any]) -> str:
    doc = copy.deepcopy(doc)
    for path, op, value in mutations:
        if not path:
            continue
        node = doc
        try:
            for k in path[:-1]:
                node = node[k]
            key = path[-1]
            if op == "delete":
                del node[key]
            elif op == "wrap":
                node[key] = [node[key]]
            elif op == "rename" and isinstance(node, dict) and isinstance(value, str):
                node[value] = node.pop(key)
            else:
                node[key] = copy.deepcopy(value)  # st.just({}) is one object: never nest it into itself
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation changed the path
    text = json.dumps(doc)
    text = text.replace(f'"{NAN}"', "NaN").replace(f'"{DEEP}"', "[" * 50_000 + "]" * 50_000)
    return text


@pytest.fixture(scope="module")
def fuzz_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fuzz")
    (root / "outside").mkdir()
    (root / "outside" / "sentinel").write_text("sentinel\n")
    return root


def _untouched(root: Path, mtime: int) -> None:
    sentinel = root / "outside" / "sentinel"
    assert sentinel.read_text() == "sentinel\n" and sentinel.stat().st_mtime_ns == mtime
    assert [p.name for p in (root / "outside").iterdir()] == ["sentinel"]


def test_fuzz_manifest(demo: Path, fuzz_root: Path) -> None:
    """Mutated manifest.json through read_manifest, the ONNX Runtime backend and (sometimes) a
    short Pipeline call: success or a VQDeployError, nothing else, nothing outside touched."""
    from vqdeploy.parity.inputs import sample_condition
    from vqdeploy.runtime.backends.registry import open_backend
    from vqdeploy.runtime.pipeline import Pipeline

    art = copy_artifacts(demo, fuzz_root / "manifest_art")
    base = json.loads((art / MANIFEST).read_text())
    paths = list(_paths(base))
    mtime = (fuzz_root / "outside" / "sentinel").stat().st_mtime_ns
    outcomes: dict[str, int] = {}
    t0 = time.perf_counter()

    @hypothesis.settings(max_examples=examples(600), deadline=None, database=None,
                         suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.given(mutations=st.lists(_mutation(paths, fuzz_root / "outside"), min_size=1, max_size=3),
                      sample=st.sampled_from([False, False, False, True]))
    def check(mutations: list[Any], sample: bool) -> None:
        (art / MANIFEST).write_text(_mutate(base, mutations))
        try:
            opened = Artifacts.open(art)
            m = opened.manifest
            be = open_backend("onnxruntime", opened, "cpu")
            for name in m.graphs:
                opened.graph_file(name)
            if sample and m.model.samples:
                Pipeline(be, m)(sample_condition(m.model, 0), num_samples=1, seed=0)
            outcomes["ok"] = outcomes.get("ok", 0) + 1
        except VQDeployError as e:
            assert "\n" not in str(e)
            outcomes[type(e).__name__] = outcomes.get(type(e).__name__, 0) + 1
        _untouched(fuzz_root, mtime)

    check()
    print(f"manifest fuzz: {outcomes} in {time.perf_counter() - t0:.1f} s")
    assert sum(outcomes.values()) > 0


def test_fuzz_engines_json(demo_engines: Path, fuzz_root: Path) -> None:
    """Mutated engines.json through the load-time check and build-trt (TensorRT-RTX, the sampler
    graph: a rebuild takes a fraction of a second)."""
    from vqdeploy.trt import check
    from vqdeploy.trt.engines import BuildOptions, build_engines

    art = copy_artifacts(demo_engines, fuzz_root / "engines_art")
    manifest = read_manifest(art)
    pristine = fuzz_root / "engines_pristine"
    shutil.copytree(art / "engines", pristine)
    base = json.loads((pristine / "engines.json").read_text())
    paths = list(_paths(base))
    mtime = (fuzz_root / "outside" / "sentinel").stat().st_mtime_ns
    machine = _machine()
    outcomes: dict[str, int] = {}
    t0 = time.perf_counter()

    @hypothesis.settings(max_examples=examples(50), deadline=None, database=None,
                         suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.given(mutations=st.lists(_mutation(paths, fuzz_root / "outside"), min_size=1, max_size=3))
    def check_one(mutations: list[Any]) -> None:
        shutil.rmtree(art / "engines")
        shutil.copytree(pristine, art / "engines")
        (art / "engines" / "engines.json").write_text(_mutate(base, mutations))
        for step in ("load", "build"):
            try:
                if step == "load":
                    check.engine_path(Artifacts(art, manifest), "sampler", machine)
                else:
                    build_engines(art, BuildOptions(target_cc=SM86, graphs=("sampler",)), echo=lambda m: None)
                    check.engine_path(Artifacts(art, manifest), "sampler", machine)  # the build left a valid record
                outcomes[f"{step} ok"] = outcomes.get(f"{step} ok", 0) + 1
            except VQDeployError as e:
                assert step == "load", f"build-trt failed on a damaged engines.json: {e}"
                assert "\n" not in str(e)
                outcomes[f"{step} {type(e).__name__}"] = outcomes.get(f"{step} {type(e).__name__}", 0) + 1
        _untouched(fuzz_root, mtime)

    check_one()
    print(f"engines.json fuzz: {outcomes} in {time.perf_counter() - t0:.1f} s")
    assert sum(outcomes.values()) > 0
