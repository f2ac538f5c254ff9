"""Untrusted inputs of ``run`` and ``export`` (issue 11): option values, images and ``--out``.

Every case: one ``error:`` line (never "internal error", never a traceback), a non-zero exit, and no
output written; the work a request causes is bounded by the model's trained size; exports to one
``--out`` are locked, installed atomically and clean up after killed runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import copy_artifacts, reuse_graphs
from PIL import Image

from vqdeploy.errors import ArtifactError, InputError
from vqdeploy.export import install as inst
from vqdeploy.limits import AREA_FACTOR, DECODE_PIXELS
from vqdeploy.runtime.generation import check_size

DEMO = Path(__file__).resolve().parent.parent / "models" / "demo"
CKPT = DEMO / "checkpoints" / "last.ckpt"
SKETCH = sorted((DEMO / "sketches").glob("*.png"))[0]


def cli(*args: str, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "VQDEPLOY_DEBUG"}
    return subprocess.run([sys.executable, "-m", "vqdeploy", *args], capture_output=True, text=True, check=False,
                          timeout=timeout, env=env, cwd=cwd)


def assert_one_error(proc: subprocess.CompletedProcess, pattern: str) -> str:
    assert proc.returncode != 0, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and proc.stderr.strip().splitlines()[-1] == errors[0], proc.stderr
    assert "internal error" not in errors[0]
    assert pattern in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def demo(demo_export: Path, tmp_path_factory) -> Path:
    return copy_artifacts(demo_export, tmp_path_factory.mktemp("demo") / "artifacts")


def _images(root: Path) -> dict[str, Path]:
    """Hostile or careless condition images."""
    root.mkdir(parents=True, exist_ok=True)
    big = root / "big.png"  # a ~70 KB file of 67 megapixels: over the decode limit
    Image.new("L", (8200, 8200), 255).save(big, optimize=True)
    nan = root / "nan.tif"
    arr = np.zeros((64, 64), np.float32)
    arr[3, 5] = np.nan
    Image.fromarray(arr, mode="F").save(nan)
    inf = root / "inf.tif"
    arr[3, 5] = np.inf
    Image.fromarray(arr, mode="F").save(inf)
    return {"big": big, "nan": nan, "inf": inf}


CASES = {
    # name: (extra args, expected message part)
    "temperature_nan": (["--temperature", "nan"], "--temperature must be a finite number"),
    "temperature_inf": (["--temperature", "inf"], "--temperature must be a finite number"),
    "temperature_negative": (["--temperature", "-1"], "--temperature must be >= 0"),
    "temperature_subnormal": (["--temperature=1e-320"], "--temperature must be 0 (greedy) or at least 0.0001"),
    "temperature_huge": (["--temperature", "1e300"], "--temperature must be <= 10000"),
    "top_p_nan": (["--top-p", "nan"], "--top-p must be a finite number"),
    "top_p_zero": (["--top-p", "0"], "--top-p must be > 0"),
    "top_p_above_one": (["--top-p", "1.5"], "--top-p must be <= 1"),
    "top_k_zero": (["--top-k", "0"], "--top-k must be in 1.."),
    "top_k_huge_graph": (["--top-k", str(10**23), "--sampler", "graph"], "--top-k must be in 1.."),
    "seed_negative": (["--seed", "-1"], "--seed must be in 0..9223372036854775807"),
    "seed_huge": (["--seed", str(2**63)], "--seed must be in 0.."),
    "num_samples_zero": (["--num-samples", "0"], "--num-samples must be in 1.."),
    "size_huge": (["--size", "16000x16000"], "over this model's budget"),
    "size_thin": (["--size", "65536x1"], "--size 65536x1: the height 1 is below the trained 64 pixels"),
    "max_pixels_zero": (["--max-pixels", "0"], "--max-pixels must be in 1.."),
    "num_samples_not_int": (["--num-samples", "x"], "'x' is not a valid integer"),
    "big_image": (["@big"], "64000000 pixels"),
    "nan_image": (["@nan"], "NaN or infinite values"),
    "inf_image": (["@inf"], "NaN or infinite values"),
    "out_is_directory": (["--out", "@dir"], "is a directory"),
    "third_output_is_directory": (["--num-samples", "3", "--out", "@o/s.png", "@mkdir:o/s-2.png"], "is a directory"),
    "out_under_a_file": (["--out", "@file/x.png"], "is not a directory"),
}


@pytest.fixture(scope="module")
def run_results(demo, tmp_path_factory):
    """Every case through the CLI, concurrently, each in its own empty working directory."""
    images = _images(tmp_path_factory.mktemp("images"))

    def one(name: str):
        cwd = tmp_path_factory.mktemp(f"run_{name}")
        args, input_ = [], str(SKETCH)
        for a in CASES[name][0]:
            if a in ("@big", "@nan", "@inf"):
                input_ = str(images[a[1:]])
            elif a == "@dir":
                (cwd / "d").mkdir()
                args.append(str(cwd / "d"))
            elif a == "@file/x.png":
                (cwd / "f").write_text("a file")
                args.append(str(cwd / "f" / "x.png"))
            elif a.startswith("@mkdir:"):
                (cwd / a.removeprefix("@mkdir:")).mkdir(parents=True)
            elif a.startswith("@"):
                args.append(str(cwd / a[1:]))
            else:
                args.append(a)
        if "--out" not in args:
            args += ["--out", str(cwd / "out" / "s.png")]
        before = sorted(p.relative_to(cwd) for p in cwd.rglob("*"))
        t = time.perf_counter()
        proc = cli("run", input_, "--artifacts", str(demo), *args, cwd=cwd)
        after = sorted(p.relative_to(cwd) for p in cwd.rglob("*"))
        return proc, before, after, time.perf_counter() - t

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(CASES, pool.map(one, CASES)))


@pytest.mark.parametrize("name", CASES)
def test_run_refuses_bad_input_with_one_line_and_writes_nothing(run_results, name):
    proc, before, after, _ = run_results[name]
    assert_one_error(proc, CASES[name][1])
    assert "sampling" not in proc.stderr  # refused before any work
    assert after == before


def test_budget_follows_the_model_and_can_be_raised(demo):
    from vqdeploy.artifacts import read_manifest

    info = read_manifest(demo).model
    res = info.first_stage.resolution
    side = int(res * AREA_FACTOR**0.5)
    check_size(info, (side, side))  # exactly the default budget: accepted
    with pytest.raises(InputError, match="over this model's budget"):
        check_size(info, (side + 16, side))
    check_size(info, (side + 16, side), max_pixels=(side + 16) * side)
    assert DECODE_PIXELS >= AREA_FACTOR * res * res


def test_a_large_image_is_resized_before_the_encoder_sees_it(demo, tmp_path):
    """7992x7992 (under the decode limit) made the encoder ask for 8 GB when the grid followed the input;
    now the encoder sees the trained size, and an image kept at its own size is held to the budget."""
    from vqdeploy.artifacts import read_manifest
    from vqdeploy.images import load_condition

    info = read_manifest(demo).raw["model"]
    big = tmp_path / "big.png"
    Image.new("L", (7992, 7992), 255).save(big, optimize=True)
    pre = info["conditioning"]["preprocessing"]
    assert load_condition(big, pre, (64, 64)).shape == (1, 1, 64, 64)
    with pytest.raises(InputError, match="7992x7992 is 63872064 pixels, over this model's budget of 65536"):
        load_condition(big, pre, None, budget=AREA_FACTOR * 64 * 64)


def test_library_refuses_nan_conditions_and_bad_seeds(demo):
    from vqdeploy.runtime.pipeline import Pipeline

    pipe = Pipeline.from_artifacts(demo, "onnxruntime", "cpu")
    cond = np.zeros((1, 1, 64, 64), np.float32)
    cond[0, 0, 1, 2] = np.nan
    with pytest.raises(InputError, match="NaN"):
        pipe(cond)
    with pytest.raises(InputError, match="^seed must be in 0.."):  # the library's own words
        pipe(np.zeros((1, 1, 64, 64), np.float32), seed=-3)
    with pytest.raises(InputError, match="budget"):
        pipe(np.zeros((1, 1, 2048, 2048), np.float32))


# ---- export: lock, atomic install, recovery -------------------------------------------------------------


def test_two_exports_to_one_out_the_second_is_refused(runs, tmp_path, monkeypatch):
    """The first export runs in this process and is held inside its first graph, with the lock taken, while a
    second ``vqdeploy export`` process asks for the same ``--out`` (a process of its own, so the lock is proved
    across processes; holding the first in-process spares a subprocess trace, about 30 s of the suite's CPU)."""
    from vqdeploy.export import exporter

    # a tiny VQGAN (two graphs) that tests/test_export.py exports too, so its graphs are traced once per session
    ckpt = runs("gumbel").ckpt
    inside, release = threading.Event(), threading.Event()
    graph = exporter.export_graph

    def held(*args, **kwargs):
        inside.set()
        assert release.wait(300), "the second export never finished"
        return graph(*args, **kwargs)

    monkeypatch.setattr(exporter, "export_graph", held)
    outcome: list[BaseException | None] = []

    def first() -> None:
        try:
            exporter.export(ckpt, tmp_path / "a", parity=False, valid_length=False, log=lambda m: None)
            outcome.append(None)
        except BaseException as e:  # noqa: BLE001 (reported by the assertion below)
            outcome.append(e)

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert inside.wait(120), "the first export did not reach its graphs"
        assert list(tmp_path.glob(".a.export-*")), "the first export holds no temp dir"
        second = cli("export", "--ckpt", str(ckpt), "--out", "a", "--no-parity", cwd=tmp_path)
    finally:
        release.set()
        thread.join(300)
    assert_one_error(second, "another export to a is running")
    assert outcome == [None], outcome
    assert (tmp_path / "a" / "manifest.json").is_file()


def test_killed_export_leaves_the_old_artifacts_and_is_cleaned_up(exported, tmp_path, monkeypatch):
    from vqdeploy.export.exporter import export

    run, previous, _ = exported("class_subsample")  # a tiny model: the install rules are under test, not the export
    out = copy_artifacts(previous, tmp_path / "a")  # a previous export of the same model
    (out / "engines").mkdir()
    (out / "engines" / "demo.engine").write_bytes(b"engine")
    manifest = (out / "manifest.json").read_bytes()
    proc = subprocess.Popen([sys.executable, "-m", "vqdeploy", "export", "--ckpt", str(run.ckpt), "--out", str(out),
                             "--no-parity"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not any(p.glob("*.onnx") for p in tmp_path.glob(".a.export-*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(tmp_path.glob(".a.export-*")), "the kill came too late to leave a temp dir"
    assert (out / "manifest.json").read_bytes() == manifest  # untouched by the killed export
    logs: list[str] = []
    reuse_graphs(monkeypatch, previous)  # the recovery is under test: the graphs are copied, not traced again
    export(run.ckpt, out, parity=False, log=logs.append)
    assert not list(tmp_path.glob(".a.export-*")) and not list(tmp_path.glob(".a.old-*"))
    assert any("removed stale" in m for m in logs)
    assert (out / "engines" / "demo.engine").read_bytes() == b"engine"  # engines carried over


def test_install_exchanges_atomically_and_keeps_engines(tmp_path):
    out, new = tmp_path / "a", tmp_path / ".a.export-x"
    (out / "engines").mkdir(parents=True)
    (out / "engines" / "e.engine").write_bytes(b"e")
    (out / "manifest.json").write_text("old")
    new.mkdir()
    (new / "manifest.json").write_text("new")
    inst.install(new, out)
    assert (out / "manifest.json").read_text() == "new"
    assert (out / "engines" / "e.engine").read_bytes() == b"e"
    assert not new.exists()


def test_fallback_swap_cut_between_renames_is_restored(tmp_path):
    """The two-rename fallback, killed between its renames: the next export brings --out back."""
    out = tmp_path / "a"
    old = tmp_path / ".a.old-123"
    old.mkdir()
    (old / "manifest.json").write_text("previous")
    stale = tmp_path / ".a.export-abc"
    stale.mkdir()
    done = inst.recover(out)
    assert (out / "manifest.json").read_text() == "previous"
    assert not old.exists() and not stale.exists()
    assert len(done) == 2
    # and the fallback itself installs correctly
    new = tmp_path / ".a.export-y"
    new.mkdir()
    (new / "manifest.json").write_text("new")
    inst.install(new, out, exchange=False)
    assert (out / "manifest.json").read_text() == "new" and not list(tmp_path.glob(".a.old-*"))


def test_export_out_symlink_or_file_is_refused(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    (tmp_path / "file").write_text("x")
    from vqdeploy.export.exporter import export

    for out, msg in ((tmp_path / "link", "is a symlink"), (tmp_path / "file", "not a directory")):
        with pytest.raises(ArtifactError, match=msg):
            export(CKPT, out, parity=False, log=lambda m: None)
    assert list((tmp_path / "real").iterdir()) == []
