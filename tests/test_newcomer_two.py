"""A newcomer's first hour, round two (issue 26): one test (or a few) per item of the issue, on the session's demo
export. The page's items are in test_serve_page.py, the quantized-artifacts note in test_quantize.py."""

from __future__ import annotations

import gc
import io
import json
import logging
import os
import pydoc
import re
import shutil
import subprocess
import sys
import time
import typing
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import copy_artifacts
from PIL import Image

import vqdeploy
from vqdeploy.cli import main
from vqdeploy.errors import InputError

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "models" / "demo"
SKETCH = DEMO / "sketches" / "04_circle_horizon.png"


def cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vqdeploy", *args], capture_output=True, text=True, check=False,
                          timeout=300, env=env, cwd=cwd)


def invoke(*args: str):
    """The CLI in this process (no interpreter start): exit code, stdout and stderr apart."""
    return CliRunner().invoke(main, list(args))


def errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def pipe(demo_export: Path) -> vqdeploy.Pipeline:
    return vqdeploy.Pipeline.from_artifacts(demo_export, backend="onnxruntime")


# --- 1. bench opens the artifacts alone -------------------------------------------------------------
@pytest.fixture(scope="module")
def moved(demo_export: Path, tmp_path_factory) -> Path:
    """The demo's artifacts as on another machine: the checkpoint the manifest names is not there."""
    art = copy_artifacts(demo_export, tmp_path_factory.mktemp("moved") / "artifacts")
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["source"]["checkpoint"] = str(tmp_path_factory.getbasetemp() / "elsewhere" / "checkpoints" / "last.ckpt")
    (art / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return art


def test_bench_of_moved_artifacts_needs_neither_the_checkpoint_nor_pytorch(moved: Path) -> None:
    """Without torch (its import blocked) and without the checkpoint: ONNX Runtime rows only, no error."""
    code = ("import sys; sys.modules['torch'] = None\nfrom vqdeploy.cli import main\n"
            f"main(['bench', '--artifacts', {str(moved)!r}, '--backends', 'onnxruntime', '--no-reference', "
            "'--repeats', '1'])\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "torch-cpu fp32" not in proc.stderr and "error" not in proc.stderr, proc.stderr
    rows = json.loads((moved / "bench.json").read_text())["backends"]
    assert rows and {r["backend"] for r in rows.values()} == {"onnxruntime"}


def test_bench_auto_without_the_checkpoint_leaves_torch_out_and_says_how_to_add_it(moved: Path) -> None:
    r = invoke("bench", "--artifacts", str(moved), "--no-reference", "--repeats", "1", "--out",
               str(moved / "auto.json"))
    assert r.exit_code == 0, r.output
    assert "the torch-cpu and upstream rows are left out (pass --ckpt to add them)" in r.stderr
    assert "checkpoint not found" in r.stderr  # the reason, in the note
    rows = json.loads((moved / "auto.json").read_text())["backends"]
    assert {r["backend"] for r in rows.values()} == {"onnxruntime"}


# --- 2. bench rows that hold still ----------------------------------------------------------------
def test_bench_makes_openmp_wait_passively_before_torch_loads() -> None:
    """The cause of the torch row's swings (docs/performance.md): libgomp's spinning barriers. bench sets the
    passive policy before torch is imported, keeps one the user set, and says when it came too late."""
    code = ("import os, sys\nfrom vqdeploy.bench.benchmark import passive_openmp\n"
            "print(*passive_openmp(), 'torch' in sys.modules)\n"
            "import torch\nprint(*passive_openmp())\n")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                         check=True).stdout.split("\n")
    assert out[0] == "PASSIVE None False" and out[1] == "PASSIVE None"
    late = "import torch\nfrom vqdeploy.bench.benchmark import passive_openmp\nprint(*passive_openmp())"
    said = subprocess.run([sys.executable, "-c", late], capture_output=True, text=True, timeout=120, check=True,
                          env={**env, "OMP_WAIT_POLICY": "ACTIVE"}).stdout
    assert said.startswith("ACTIVE") and "its rows may swing between runs" in said  # the user's, with a note


def test_bench_reports_the_spread_next_to_the_median() -> None:
    from vqdeploy.bench.benchmark import _print_table

    def row(steps: list[float]) -> dict:
        return {"backend": "onnxruntime", "device": "cpu", "cuda_graphs": False, "cond_encoder": 0.01,
                "prefill": 0.02, "step": sorted(steps)[len(steps) // 2], "decoder": 0.05, "tokens_per_s": 100.0,
                "floor_ms": 1.0, "runs": {"step": steps}}

    result = {"num_samples": 1, "repeats": 3, "precision": "fp32", "host_memory_bandwidth_GBps": 10.0,
              "transformer_weight_bytes": 10**6, "step_floor_ms_cpu": 0.1, "machine": {"load_average": 6.5},
              "backends": {"steady": row([0.004, 0.0041, 0.0042]), "swinging": row([0.003, 0.004, 0.050])}}
    lines: list[str] = []
    _print_table(result, lines.append)
    steady = next(line for line in lines if line.startswith("steady"))
    assert "(4.00-4.20)" in steady
    notes = [line for line in lines if line.startswith("note:")]
    assert notes == ["note: swinging: one token took 3.00-50.00 ms over the 3 runs (16.7x) with a load average of 6.5: "
                     "the machine is busy; compare rows of one run, or raise --repeats"]


def test_bench_floor_is_the_rows_own_devices() -> None:
    """GPU rows get the GPU's floor where its bandwidth was measured (the first H200 run printed "-" for them: a
    0.79 ms token against a 0.025 ms weight read), "-" where it could not be (no torch or no CUDA, as here)."""
    from vqdeploy.bench.benchmark import _print_table, device_bandwidth

    assert device_bandwidth("cpu") is None and device_bandwidth("cuda") is None  # this machine has no GPU

    def row(device: str, floor_ms: float | None) -> dict:
        return {"backend": "onnxruntime", "device": device, "cuda_graphs": False, "cond_encoder": 0.01,
                "prefill": 0.02, "step": 0.00079, "decoder": 0.05, "tokens_per_s": 1254.0, "floor_ms": floor_ms,
                "runs": {"step": [0.00079]}}

    result = {"num_samples": 1, "repeats": 1, "precision": "fp32", "host_memory_bandwidth_GBps": 20.0,
              "device_memory_bandwidth_GBps": {"cuda": 4300.0}, "transformer_weight_bytes": 106 * 10**6,
              "step_floor_ms_cpu": 5.3, "machine": {},
              "backends": {"measured": row("cuda", 106e6 / 4300e9 * 1e3), "unknown": row("cuda:1", None)}}
    lines: list[str] = []
    _print_table(result, lines.append)
    assert next(line for line in lines if line.startswith("measured")).endswith("32.05x")
    assert next(line for line in lines if line.startswith("unknown")).endswith(" -")
    assert "cuda memory bandwidth 4300 GB/s (a device-to-device copy) -> floor 0.025 ms per token" in lines


def test_bench_json_keeps_every_run(moved: Path) -> None:
    r = invoke("bench", "--artifacts", str(moved), "--backends", "onnxruntime", "--no-reference", "--repeats", "2",
               "--out", str(moved / "two.json"))
    assert r.exit_code == 0, r.output
    result = json.loads((moved / "two.json").read_text())
    assert {"omp_wait_policy", "load_average"} <= set(result["machine"])  # torch came first here: the user's policy
    for row in result["backends"].values():
        assert len(row["runs"]["step"]) == 2 and min(row["runs"]["step"]) <= row["step"] <= max(row["runs"]["step"])
    assert re.search(r"\(\d+\.\d\d-\d+\.\d\d\)", r.stderr), r.stderr  # min-max in the table


# --- 4. the library takes what people pass --------------------------------------------------------
def test_library_takes_params_as_a_mapping_or_keywords(pipe) -> None:
    a = pipe(str(SKETCH), seed=2, params={"temperature": 0.5, "top_k": 20})
    b = pipe(str(SKETCH), seed=2, temperature=0.5, top_k=20)
    c = pipe(str(SKETCH), seed=2, params=vqdeploy.SamplingParams(temperature=0.5, top_k=20))
    d = pipe(str(SKETCH), seed=2)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.tokens, c.tokens)
    assert not np.array_equal(a.tokens, d.tokens)
    fields = r"\(temperature, top_k, top_p, cfg_scale, cfg_interval\)"
    with pytest.raises(InputError, match=r"params: unknown field 'temp' " + fields):
        pipe(str(SKETCH), params={"temp": 0.5})


def test_library_size_is_s_wxh_or_a_pair(pipe) -> None:
    from vqdeploy.runtime.pipeline import as_size

    assert as_size(128) == as_size("128") == as_size("128x128") == as_size((128, 128)) == (128, 128)
    assert as_size("128x64") == as_size((64, 128)) == (64, 128)  # "WxH" as --size; a pair is (H, W)
    square = pipe(str(SKETCH), seed=1, size=128)
    assert square.images.shape == (1, 3, 128, 128) and square.sliding_window
    wide = pipe(str(SKETCH), seed=1, size="128x64")
    assert wide.images.shape == (1, 3, 64, 128)
    for bad in (0, "12by12", (64,), (64, 0), True, 1.5):
        with pytest.raises(InputError, match="size must be"):
            pipe(str(SKETCH), size=bad)


@pytest.mark.parametrize("kwargs,message", [
    ({"seed": -1}, "seed must be in 0.."),
    ({"num_samples": 0}, "num_samples must be in 1.."),
    ({"top_k": 0}, "top_k must be in 1.."),
    ({"temperature": -1.0}, "temperature must be >= 0"),
    ({"top_p": 2.0}, "top_p must be <= 1"),
    ({"params": {"top_p": 0.0}}, "top_p must be > 0"),
])
def test_library_errors_name_the_argument_not_a_cli_flag(pipe, kwargs, message) -> None:
    with pytest.raises(InputError) as e:
        pipe(str(SKETCH), **kwargs)
    assert str(e.value).startswith(message) and "--" not in str(e.value), str(e.value)


def test_library_images_are_within_minus_one_and_one(pipe) -> None:
    r = pipe(str(SKETCH), num_samples=8, seed=0)
    assert r.images.dtype == np.float32 and r.images.min() >= -1.0 and r.images.max() <= 1.0
    assert r.images.min() == -1.0 or r.images.max() == 1.0  # the decoder does reach (and overshoot) the ends


def test_library_class_id_positional_or_keyword(exported) -> None:
    _, out, manifest = exported("class_subsample")
    pipe = vqdeploy.Pipeline.from_artifacts(out, backend="onnxruntime")
    n = int(manifest.raw["model"]["conditioning"]["n_classes"])
    a, b = pipe(n - 1, seed=4, num_samples=2), pipe(class_id=n - 1, seed=4, num_samples=2)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert not np.array_equal(a.tokens, pipe(0, seed=4, num_samples=2).tokens)
    with pytest.raises(InputError, match=fr"class_id {n} is out of range \(0..{n - 1}\)"):
        pipe(class_id=n)


def test_the_api_is_visible_typed_and_documented() -> None:
    assert {"Pipeline", "SamplingParams", "load_model", "__version__"} <= set(dir(vqdeploy))
    hints = typing.get_type_hints(vqdeploy.Pipeline.__call__)  # resolvable, not strings
    condition = set(typing.get_args(hints["condition"]))
    assert {str, bytes, np.ndarray, int, type(None), Image.Image} <= condition
    assert set(typing.get_args(hints["size"])) >= {int, str, type(None)}
    assert hints["return"].__name__ == "Result"
    text = pydoc.render_doc(vqdeploy.Pipeline, renderer=pydoc.plaintext)
    for what in ("from_artifacts", "num_samples", "params={\"temperature\": 0.5}", "class_id", "\"256x128\"",
                 "InputError", "result.images", "result.to_pil()", "max_batch"):
        assert what in text, what


# --- 5. serve: an access line per request; a cancelled request leaves no asyncio noise ------------------
def test_serve_logs_one_line_per_request_and_nothing_about_abandoned_answers(demo_export: Path) -> None:
    pytest.importorskip("starlette")
    httpx = pytest.importorskip("httpx")
    from serve_support import running

    from vqdeploy.serve.app import ServeConfig, create_app

    lines: list[str] = []
    asyncio_errors: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            asyncio_errors.append(record.getMessage())

    catch = Catch(logging.ERROR)
    logging.getLogger("asyncio").addHandler(catch)
    try:
        pipeline = vqdeploy.Pipeline.from_artifacts(demo_export, "onnxruntime")
        with running(create_app(pipeline, ServeConfig(request_timeout_s=0.3, max_wait_s=0.0), lines.append)) as url:
            assert httpx.get(f"{url}/healthz").status_code == 200
            slow = httpx.post(f"{url}/v1/generate", data={"seed": "1", "num_samples": "8"},
                              files={"condition": ("s.png", SKETCH.read_bytes(), "image/png")}, timeout=60)
            assert slow.status_code == 504  # the batch stops at its next token: Abandoned, for a request gone
            time.sleep(2.0)
            gc.collect()
        with running(create_app(pipeline, ServeConfig(), lines.append)) as url:
            ok = httpx.post(f"{url}/v1/generate", data={"seed": "1", "num_samples": "2"},
                            files={"condition": ("s.png", SKETCH.read_bytes(), "image/png")}, timeout=120)
            assert ok.status_code == 200
            assert httpx.get(f"{url}/nothing-here").status_code == 404
        gc.collect()
    finally:
        logging.getLogger("asyncio").removeHandler(catch)
    assert not [m for m in asyncio_errors if "never retrieved" in m], asyncio_errors
    line = r'127\.0\.0\.1:\d+ "{} {}" {} \d+\.\d\d s'
    assert re.fullmatch(line.format("GET", "/healthz", 200), lines[0]), lines
    assert re.fullmatch(line.format("POST", "/v1/generate", 504) + " batch 8", lines[1]), lines
    assert re.fullmatch(line.format("POST", "/v1/generate", 200) + " batch 2", lines[2]), lines
    assert re.fullmatch(line.format("GET", "/nothing-here", 404), lines[3]), lines


# --- 3. serve reads an upload as run reads a file; what is too large says what the client can do ----------
def test_serve_too_large_condition_says_what_an_http_client_can_do(pipe, demo_export: Path, tmp_path: Path) -> None:
    pytest.importorskip("starlette")
    httpx = pytest.importorskip("httpx")
    from serve_support import running

    from vqdeploy.serve.app import create_app

    huge = _png(Image.new("L", (3000, 2000), 255))  # over the 4 MP a condition may have
    with running(create_app(pipe)) as url:
        r = httpx.post(f"{url}/v1/generate", files={"condition": ("s.png", huge, "image/png")}, timeout=60)
    assert r.status_code == 413, r.text
    message = r.json()["error"]["message"]
    assert message == ("condition: 3000x2000 is 6000000 pixels, over this model's budget of 4194304; send an image of "
                       "at most 4194304 pixels (e.g. 2048x2048; it is resized to the model's size anyway); the "
                       "server's --max-pixels sets this limit"), message
    (tmp_path / "huge.png").write_bytes(huge)  # the CLI and the library name their own options
    r = invoke("run", str(tmp_path / "huge.png"), "--artifacts", str(demo_export), "--out", str(tmp_path / "s.png"))
    assert r.exit_code == 1 and errors(r.stderr)[0].endswith("; pass --max-pixels N to raise it"), r.stderr
    with pytest.raises(InputError, match="; pass max_pixels=N to raise it$"):
        pipe(Image.open(io.BytesIO(huge)))


# --- 6. paths that point the wrong way -------------------------------------------------------------
def test_artifacts_given_as_the_manifest_file_or_a_checkpoint(demo_export: Path, tmp_path: Path) -> None:
    from vqdeploy.artifacts import Artifacts

    assert Artifacts.open(demo_export / "manifest.json").path == Artifacts.open(demo_export).path
    r = invoke("run", str(SKETCH), "--artifacts", str(demo_export / "manifest.json"), "--out", str(tmp_path / "a.png"))
    assert r.exit_code == 0, r.output
    ckpt = DEMO / "checkpoints" / "last.ckpt"
    r = invoke("run", str(SKETCH), "--artifacts", str(ckpt), "--out", str(tmp_path / "b.png"))
    assert r.exit_code == 1 and errors(r.stderr) == [
        f"error: {ckpt} is a checkpoint, not an artifacts directory: pass the directory that "
        "`vqdeploy export --ckpt CKPT --out DIR` wrote"], r.stderr
    assert not (tmp_path / "b.png").exists()


def test_input_that_is_a_directory_or_a_fifo_is_named(demo_export: Path, tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    for path, what in ((tmp_path, "is a directory, not an input image file"),
                       (fifo, "is a FIFO, not an input image file")):
        r = invoke("run", str(path), "--artifacts", str(demo_export), "--out", str(tmp_path / "s.png"))
        assert r.exit_code == 1 and errors(r.stderr) == [f"error: {path} {what}"], r.stderr


def test_inspect_describes_exported_artifacts(demo_export: Path) -> None:
    r = invoke("inspect", str(demo_export))
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["precision"] == "fp32" and "transformer" in info["graphs"]


# --- 7. the output's extension names its format -----------------------------------------------------
def test_out_extension_names_the_format(demo_export: Path, tmp_path: Path) -> None:
    r = invoke("run", str(SKETCH), "--artifacts", str(demo_export), "--num-samples", "2", "--seed", "3",
               "--out", str(tmp_path / "x.JPG"))
    assert r.exit_code == 0, r.output
    for i in range(2):
        assert Image.open(tmp_path / f"x-{i}.JPG").format == "JPEG"
    r = invoke("run", str(SKETCH), "--artifacts", str(demo_export), "--seed", "3", "--out", str(tmp_path / "y.webp"))
    assert r.exit_code == 0, r.output
    webp = Image.open(tmp_path / "y.webp")
    r = invoke("run", str(SKETCH), "--artifacts", str(demo_export), "--seed", "3", "--out", str(tmp_path / "y.png"))
    assert webp.format == "WEBP" and np.array_equal(np.asarray(webp), np.asarray(Image.open(tmp_path / "y.png")))
    for name, why in (("noext", "has no extension"), ("z.gif", "ends in .gif, a format vqdeploy does not write")):
        r = invoke("run", str(SKETCH), "--artifacts", str(demo_export), "--out", str(tmp_path / name))
        assert r.exit_code == 1 and errors(r.stderr) == [
            f"error: --out {tmp_path / name} {why}: name the image format with one of .png, .jpg, .jpeg, .webp "
            f"(e.g. {Path(name).stem}.png)"], r.stderr
        assert "sampling" not in r.stderr and not (tmp_path / name).exists()


# --- 9. a corrupt checkpoint's reason is whole sentences ------------------------------------------------
def test_truncated_checkpoint_message_ends_with_a_whole_sentence(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    data = (DEMO / "checkpoints" / "last.ckpt").read_bytes()
    (run / "checkpoints" / "last.ckpt").write_bytes(data[: len(data) - 4096])
    shutil.copytree(DEMO / "configs", run / "configs")
    r = invoke("inspect", str(run / "checkpoints" / "last.ckpt"))
    assert r.exit_code == 1
    [line] = errors(r.stderr)
    reason = re.fullmatch(r"error: .*: corrupt or truncated checkpoint \((.*)\)", line)
    assert reason, line
    assert reason.group(1).endswith((".", " ...")) and "checkpoint file is)" not in line, line
    from vqdeploy.loading.checkpoint import _whole_sentences

    long = _whole_sentences("word " * 60)  # one sentence over the limit: cut at a word, marked
    assert long.endswith("word ...") and len(long) <= 200


# --- 10. what the README and tools leave behind ----------------------------------------------------------
def test_load_test_says_how_to_get_httpx() -> None:
    code = ("import runpy, sys; sys.modules['httpx'] = None; sys.argv = ['load_test.py', '--help']\n"
            f"runpy.run_path({str(ROOT / 'tools' / 'load_test.py')!r}, run_name='__main__')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip() == ('tools/load_test.py needs httpx (its HTTP client) and the serve extra: '
                                   'pip install -e ".[serve]" httpx')


def test_build_trt_leaves_no_lock_file(demo_export: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorrt_rtx_bindings")
    from vqdeploy.trt.engines import BuildOptions, build_engines

    art = copy_artifacts(demo_export, tmp_path / "art")
    build_engines(art, BuildOptions(target_cc=("8.6",), graphs=("sampler",)), echo=lambda m: None)
    assert (art / "engines" / "sampler.engine").is_file()
    assert not (art / "engines" / ".build.lock").exists(), sorted(p.name for p in (art / "engines").iterdir())


# --- 11. inputs that should not pass silently -----------------------------------------------------------
def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _notes(pipe, img: Image.Image) -> list[str]:
    notes: list[str] = []
    pipe.read(_png(img), log=notes.append)
    return notes


def test_a_photograph_or_a_blank_sketch_gets_a_warning(pipe, demo_export: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)  # a "photograph": smooth colour fields with noise (no line drawing)
    field = np.cumsum(np.cumsum(rng.normal(size=(64, 64, 3)), 0), 1)
    field = (255 * (field - field.min()) / np.ptp(field)).astype(np.uint8)
    photo = _notes(pipe, Image.fromarray(field))
    assert any(n.startswith("warning: condition looks like a photograph or a painted picture, not a line drawing")
               for n in photo), photo
    blank = _notes(pipe, Image.new("RGBA", (320, 320), (255, 255, 255, 255)))  # the page's empty pad
    assert blank == ["note: condition is 320x320; resized to 64x64",
                     "warning: condition is blank (no dark stroke): the samples follow nothing drawn; draw dark "
                     "strokes on a light background"], blank
    drawn = Image.new("RGBA", (320, 320), (255, 255, 255, 255))  # the page's pad with strokes: nothing to say
    from PIL import ImageDraw

    ImageDraw.Draw(drawn).line([(20, 250), (300, 250)], fill=(0, 0, 0, 255), width=10)
    ImageDraw.Draw(drawn).ellipse([(120, 80), (200, 160)], outline=(0, 0, 0, 255), width=10)
    assert _notes(pipe, drawn) == ["note: condition is 320x320; resized to 64x64"]
    assert _notes(pipe, Image.open(SKETCH).convert("RGB")) == [
        "note: condition is an RGB image; converted to greyscale as this model expects"]
    Image.new("L", (64, 64), 255).save(tmp_path / "blank.png")
    r = invoke("run", str(tmp_path / "blank.png"), "--artifacts", str(demo_export), "--out", str(tmp_path / "s.png"))
    assert r.exit_code == 0 and f"warning: {tmp_path / 'blank.png'} is blank (no dark stroke)" in r.stderr, r.stderr


def test_the_demo_renderings_given_as_sketches_are_flagged() -> None:
    """The model's own training pictures (coloured, textured renderings) are what a 'photograph' is here."""
    sys.path.insert(0, str(ROOT / "tools"))
    import demo_data

    from vqdeploy.images import _colourful_fraction, sketch_warning

    split = demo_data.make_split(7, 40, 1)
    flagged = sum(sketch_warning(np.asarray(Image.fromarray(im[0]).convert("L")),
                                 _colourful_fraction(Image.fromarray(im[0]))) is not None for im in split["image"])
    assert flagged >= 32, flagged  # measured 186 of 200 (the rest: pale, nearly grey pictures)
    assert all(sketch_warning(s) is None for s in split["sketch"])  # and never a sketch


# --- 13. parity samples a real condition ------------------------------------------------------------
def test_parity_samples_the_example_recorded_at_export_or_input(demo_export: Path, tmp_path: Path) -> None:
    from vqdeploy.artifacts import read_manifest
    from vqdeploy.parity.report import parity_condition, run_parity

    manifest = read_manifest(demo_export)
    assert manifest.example == str(DEMO / "example.png")  # the run's example.png, recorded by export
    info = manifest.model
    value, source = parity_condition(info, manifest.example, 0, False, lambda m: None)
    assert source == str(DEMO / "example.png")
    read = vqdeploy.Pipeline.from_artifacts(demo_export, "onnxruntime").read(str(DEMO / "example.png"))
    np.testing.assert_array_equal(value.array, read.array)  # read as run and the library read it
    notes: list[str] = []
    _, source = parity_condition(info, str(tmp_path / "gone.png"), 0, False, notes.append)
    assert source == "random" and "is not here; sampling a seeded random condition (pass --input FILE)" in notes[0]
    with pytest.raises(InputError, match="input image not found"):
        parity_condition(info, tmp_path / "gone.png", 0, True, notes.append)

    sketch = DEMO / "sketches" / "06_triangle_plain.png"
    report = run_parity(demo_export, "onnxruntime", None, 0, tmp_path / "p", None, log=lambda m: None, input=sketch)
    assert report["condition_source"] == str(sketch) and report["passed"]
    picture = np.asarray(Image.open(tmp_path / "p" / "condition.png").convert("L"))
    assert picture.shape == (64, 64) and (picture < 128).sum() == (np.asarray(Image.open(sketch)) < 128).sum()
    assert "Condition (06_triangle_plain.png)" in (tmp_path / "p" / "report.html").read_text()


def test_export_example_must_be_a_file(tmp_path: Path) -> None:
    r = invoke("export", "--ckpt", str(DEMO / "checkpoints" / "last.ckpt"), "--out", str(tmp_path / "a"),
               "--example", str(tmp_path / "nope.png"))
    assert r.exit_code == 1 and errors(r.stderr) == [
        f"error: --example {tmp_path / 'nope.png'}: not a file (a condition of this model: a sketch, a label map, "
        "a scene)"], r.stderr
    from vqdeploy.export.exporter import example_condition

    assert example_condition(str(DEMO / "checkpoints" / "last.ckpt"), None) == {"example": str(DEMO / "example.png")}
    assert example_condition(str(tmp_path / "model.ckpt"), None) == {}  # not a run directory: nothing is guessed


# --- 14. the README leads with the sketch that was measured best --------------------------------------
def test_readme_example_is_the_measured_best_sketch() -> None:
    readme = (ROOT / "README.md").read_text()
    command = readme.split("<!-- main-command -->", 1)[1].split("```", 2)[1]
    sketch = re.search(r"vqdeploy run (models/demo/sketches/\S+\.png)", command).group(1)
    assert (ROOT / sketch).read_bytes() == (DEMO / "example.png").read_bytes()
    table = (ROOT / "docs" / "models.md").read_text().split("## The demo model", 1)[1]
    first = re.search(r"^\| `([^`]+)`", table, re.M).group(1)  # the ranking's winner (tools/eval_demo.py)
    assert sketch.endswith(f"/{first}.png")
    assert "What to expect from 32 minutes of CPU training" in readme
