"""What a new user meets first (issue 16): the README's library example runs, conditions are resized to the
trained size with a note, --size has one syntax, large --num-samples run in batches with the same images,
--top-k beyond the vocabulary is clamped with a note, every option has help and every command an example."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import click
import numpy as np
import pytest
from conftest import copy_artifacts, reuse_graphs
from PIL import Image

import vqdeploy
from vqdeploy.cli import main
from vqdeploy.errors import InputError
from vqdeploy.images import parse_size

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "models" / "demo"
SKETCH = DEMO / "sketches" / "07_house-square-circle_horizon.png"


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vqdeploy", *args], capture_output=True, text=True, check=False,
                          timeout=300, cwd=cwd)


@pytest.fixture(scope="module")
def demo(demo_export: Path, tmp_path_factory) -> Path:
    return copy_artifacts(demo_export, tmp_path_factory.mktemp("demo") / "artifacts")


def test_readme_library_example_runs(demo_export, tmp_path, monkeypatch):
    """The README's example, as written, in a fresh directory. It runs in this process, where the session's
    graph cache hands its export the demo's graphs (``demo_export`` traced them): the export around them, its
    parity check and the sampling all run; a subprocess would trace the five graphs again (about 30 s of CPU)."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- library-example -->\n```python\n(.*?)```", text, re.S)
    assert block, "README.md has no library example"
    (tmp_path / "models").symlink_to(ROOT / "models")
    monkeypatch.chdir(tmp_path)
    exec(compile(block.group(1), "README.md library example", "exec"), {"__name__": "__main__"})  # noqa: S102 (our README)
    assert not list(tmp_path.glob("*.png")), "the README's example writes images outside samples/ (not ignored by git)"
    images = sorted((tmp_path / "samples").glob("sample-*.png"))
    assert len(images) == 4 and Image.open(images[0]).size == (64, 64)


def test_size_syntax_is_s_or_wxh():
    assert parse_size("128") == (128, 128)
    assert parse_size("512x256") == (256, 512)  # width x height -> (height, width)
    for bad in ("16by16", "1x2x3", "x", "-5", "0x64"):
        with pytest.raises(InputError, match="--size"):
            parse_size(bad)


def test_run_resizes_to_the_trained_size_and_says_so(demo, tmp_path):
    big = tmp_path / "big.png"
    Image.open(SKETCH).resize((256, 128)).save(big)
    proc = cli("run", str(big), "--artifacts", str(demo), "--out", str(tmp_path / "s.png"))
    assert proc.returncode == 0, proc.stderr
    assert "is 256x128; resized to 64x64 (the aspect ratio changes)" in proc.stderr
    assert "sliding window" not in proc.stderr
    assert Image.open(tmp_path / "s.png").size == (64, 64)
    small = cli("run", str(SKETCH), "--artifacts", str(demo), "--size", "32", "--out", str(tmp_path / "t.png"))
    assert small.returncode == 1 and "the width 32 and height 32 are below the trained 64 pixels" in small.stderr
    assert "sampling" not in small.stderr and not (tmp_path / "t.png").exists()


def test_many_samples_run_in_batches_with_the_same_images(demo):
    """ONNX Runtime's graphs take at most 8 samples: 10 run as 8 + 2 and equal torch's single batch of 10."""
    from vqdeploy.runtime.pipeline import Pipeline

    ort = Pipeline.from_artifacts(demo, "onnxruntime", "cpu")
    torch_ = Pipeline.from_artifacts(demo, "torch", "cpu")
    assert ort.backend.max_batch("transformer") == 8
    announced: list[str] = []

    def progress(total: int, what: str):
        announced.append(what)
        return lambda n: None

    chunked = ort(str(SKETCH), num_samples=10, seed=5, progress=progress)
    whole = torch_(str(SKETCH), num_samples=10, seed=5)
    assert announced == ["sampling 10 x 64 tokens in 2 batches of up to 8 with onnxruntime (cpu)"]
    assert chunked.images.shape == (10, 3, 64, 64)
    np.testing.assert_array_equal(chunked.tokens, whole.tokens)


def test_library_takes_paths_pil_images_and_arrays(demo):
    pipe = vqdeploy.Pipeline.from_artifacts(demo, backend="onnxruntime")
    img = Image.open(SKETCH)
    results = [pipe(x, num_samples=2, seed=1) for x in (str(SKETCH), img, np.asarray(img.convert("L")))]
    for r in results[1:]:
        np.testing.assert_array_equal(r.tokens, results[0].tokens)
    assert [im.size for im in results[0].to_pil()] == [(64, 64), (64, 64)]
    with pytest.raises(InputError, match="unsupported condition type"):
        pipe(42)
    with pytest.raises(InputError, match="condition array of shape"):
        pipe(np.zeros((2, 3, 4, 5, 6), np.uint8))


def test_top_k_beyond_the_vocabulary_is_clamped_with_a_note(demo, tmp_path):
    proc = cli("run", str(SKETCH), "--artifacts", str(demo), "--top-k", "1000", "--out", str(tmp_path / "s.png"))
    assert proc.returncode == 0, proc.stderr
    assert "note: --top-k 1000 is more than the 256 tokens of this model: all are kept" in proc.stderr


def test_reexport_says_what_it_removes(demo_export, tmp_path, monkeypatch):
    from vqdeploy.export.exporter import export

    out = copy_artifacts(demo_export, tmp_path / "a")  # a previous export of the same model
    reuse_graphs(monkeypatch, demo_export)
    ckpt = DEMO / "checkpoints" / "last.ckpt"
    (out / "parity").mkdir()
    (out / "bench.json").write_text("{}")
    logs: list[str] = []
    export(ckpt, out, parity=False, log=logs.append)
    assert any("removed bench.json, parity/ (results of the previous graphs)" in m for m in logs), logs


def _commands() -> dict[str, click.Command]:
    return dict(main.commands)


@pytest.mark.parametrize("name", sorted(_commands()))
def test_every_option_has_help_and_every_command_an_example(name):
    cmd = _commands()[name]
    missing = [p.name for p in cmd.params if isinstance(p, click.Option) and not p.help]
    assert missing == [], f"vqdeploy {name}: options without help: {missing}"
    assert cmd.epilog and "vqdeploy " + name in cmd.epilog, f"vqdeploy {name} --help shows no example"


def test_input_conventions_are_stated_and_inverted_or_rgb_sketches_are_flagged(demo, tmp_path):
    from PIL import ImageOps

    from vqdeploy.artifacts import read_manifest

    pre = read_manifest(demo).raw["model"]["conditioning"]["preprocessing"]
    assert "dark strokes on a light (white) background" in pre["input"]
    inverted, rgb = tmp_path / "inv.png", tmp_path / "rgb.png"
    ImageOps.invert(Image.open(SKETCH).convert("L")).save(inverted)
    Image.open(SKETCH).convert("RGB").save(rgb)
    for path, message in ((inverted, "is mostly dark; this model's inputs are dark strokes on a light background"),
                          (rgb, "is an RGB image; converted to greyscale")):
        proc = cli("run", str(path), "--artifacts", str(demo), "--out", str(tmp_path / "s.png"))
        assert proc.returncode == 0 and message in proc.stderr, proc.stderr
    from vqdeploy.images import load_condition

    notes: list[str] = []
    for sketch in sorted((DEMO / "sketches").glob("*.png")):  # no false alarms on the model's own sketches
        load_condition(sketch, pre, (64, 64), note=notes.append)
    assert notes == []


def test_inspect_of_a_file_that_is_no_checkpoint_says_so(tmp_path):
    proc = cli("inspect", str(ROOT / "README.md"))
    assert proc.returncode == 1
    assert proc.stderr.strip() == (f"error: {ROOT / 'README.md'}: not a checkpoint (expected a Lightning .ckpt, a "
                                   "torch state_dict file or .safetensors)")


def test_parity_report_shows_condition_versions_date_and_machine(demo, tmp_path):
    import json

    from vqdeploy.parity.report import run_parity

    out = tmp_path / "parity"
    run_parity(demo, "onnxruntime", "cpu", 0, out, None, log=lambda m: None)
    report = json.loads((out / "report.json").read_text())
    assert report["condition"] == "condition.png" and Image.open(out / "condition.png").size == (64, 64)
    assert report["versions"]["running"]["onnxruntime"] and report["versions"]["exported_with"]["onnx"]
    assert report["machine"]["cpus"] >= 1 and re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d", report["created"])
    page = (out / "report.html").read_text()
    assert "condition.png" in page and "&#10004; passed" in page and "&#10004; ok" in page


def test_parity_report_says_which_installed_backends_were_skipped_and_why(demo, tmp_path, monkeypatch):
    import json

    from vqdeploy import machine
    from vqdeploy.parity.report import run_parity

    monkeypatch.setattr(machine, "gpu_present", lambda: False)
    monkeypatch.setattr(machine, "tensorrt_installed", lambda: True)
    out = tmp_path / "parity"
    run_parity(demo, "auto", None, 0, out, None, log=lambda m: None)
    report = json.loads((out / "report.json").read_text())
    assert "tensorrt: installed, but no CUDA GPU here" in report["skipped"]
    assert "Not compared here" in (out / "report.html").read_text()
