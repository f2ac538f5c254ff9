"""The C++ runtime (``cpp/``, issue 21) against Python: one CMake build per session (and an
AddressSanitizer + UndefinedBehaviorSanitizer build beside it), then the same tokens as Python for
the same seed on the demo, a class-conditional, a permuted unconditional, a label-map and an
object-layout model, and the LlamaGen export with and without classifier-free guidance (host and guided sampler
graph); tampered artifacts, bad inputs and what it does not sample (another model family) refused with one line;
the TensorRT backend compiled and linked; the README's "Embedding in C++" app built against the installed package.

Python is driven through its public surface only (``vqdeploy.Pipeline``, ``vqdeploy.SamplingParams``,
the ``vqdeploy`` command line and the fixtures of conftest.py). Skips, with the reason, only where
the toolchain (g++, cmake) or a library the build needs (nlohmann-json, libpng, libcrypto) is missing.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
if not (SHARED / "vendor").is_dir():  # a worktree beside main: ../shared is the same folder
    SHARED = Path("/work/shared")
VENDOR = SHARED / "vendor"
SCENE = SHARED / "reference" / "scene_bbox"
DEMO = ROOT / "models" / "demo"
SKETCH = DEMO / "sketches" / "07_house-square-circle_horizon.png"
BUILD_TIMEOUT = 900
MISSING = {  # what cpp/CMakeLists.txt says when a library is missing -> the reason to skip
    "nlohmann-json not found": "nlohmann-json is not installed (apt-get install nlohmann-json3-dev)",
    "libpng not found": "libpng is not installed (apt-get install libpng-dev)",
    "OpenSSL's libcrypto not found": "OpenSSL's libcrypto is not installed (apt-get install libssl-dev)",
}


# --- the builds ------------------------------------------------------------------------------------
def _site_file(*parts: str) -> Path | None:
    for p in sys.path:
        f = Path(p, *parts)
        if f.exists():
            return f
    return None


def tensorrt_parts() -> tuple[dict[str, str], str]:
    """CMake arguments for the TensorRT backend from the vendored headers and the PyPI wheels
    (the ``cpp-tensorrt`` extra), or the reason they are not there."""
    spec = importlib.util.find_spec("tensorrt_lean_libs")
    lean = Path(spec.origin).parent / "libnvinfer_lean.so.11" if spec and spec.origin else None
    cuda_inc = _site_file("nvidia", "cu13", "include", "cuda_runtime_api.h")
    crt = _site_file("nvidia", "cu13", "include", "crt", "host_defines.h")
    cudart = _site_file("nvidia", "cu13", "lib", "libcudart.so.13")
    headers = VENDOR / "tensorrt-11.1" / "include" / "NvInferRuntime.h"
    missing = [what for what, found in (("tensorrt-lean-cu13-libs", lean and lean.exists()),
                                        ("nvidia-cuda-runtime", cuda_inc and cudart), ("nvidia-cuda-crt", crt),
                                        (str(headers), headers.exists())) if not found]
    if missing:
        return {}, f"the TensorRT link needs {', '.join(missing)} (pip install -e '.[cpp-tensorrt]')"
    return {"TENSORRT_INCLUDE_DIR": str(headers.parent), "TENSORRT_LIBRARY": str(lean),
            "CUDA_RUNTIME_INCLUDE_DIR": str(cuda_inc.parent), "CUDA_RUNTIME_LIBRARY": str(cudart)}, ""


class Builds:
    """The normal build (with the TensorRT backend where its parts are installed, and the check tool)
    and the sanitizer build, configured at once and compiled in the background while the first
    exports run."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.skip = ""
        tools = [t for t in ("cmake", "c++") if shutil.which(t) is None]
        if tools:
            self.skip = f"{' and '.join(tools)} not installed (apt-get install g++ cmake)"
            return
        import onnxruntime

        libs = sorted(glob.glob(str(Path(onnxruntime.__file__).parent / "capi" / "libonnxruntime.so.1.*")))
        headers = VENDOR / "onnxruntime-1.23.2" / "include"
        if not libs or not headers.is_dir():
            self.skip = f"needs the onnxruntime wheel's library and {headers}"
            return
        ort = {"ONNXRUNTIME_INCLUDE_DIR": str(headers), "ONNXRUNTIME_LIBRARY": libs[-1]}
        self.trt_args, self.trt_missing = tensorrt_parts()
        self.normal = root / "normal"
        self.asan = root / "asan"
        self.prefix = root / "install"
        configs = {
            self.normal: {**ort, **self.trt_args, "VQDEPLOY_WITH_TENSORRT": "ON" if self.trt_args else "OFF",
                          "VQDEPLOY_BUILD_TESTS": "ON", "CMAKE_CXX_FLAGS_RELEASE": "-O1 -DNDEBUG"},
            # -O1 above: 14.7 s of CPU to compile instead of -O3's 24.5 s (measured on 2 idle cores); the images
            # build with -O3 (Release) and tests/test_container_image.py runs that build
            # -O1: a quicker compile, and what sanitizers are usually run with
            self.asan: {**ort, "VQDEPLOY_WITH_TENSORRT": "OFF", "VQDEPLOY_SANITIZE": "ON",
                        "CMAKE_CXX_FLAGS_RELEASE": "-O1"},
        }
        self.procs: list[tuple[Path, subprocess.Popen]] = []
        t = time.perf_counter()
        for build, args in configs.items():
            r = subprocess.run(["cmake", "-S", str(ROOT / "cpp"), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
                                *(f"-D{k}={v}" for k, v in args.items())], capture_output=True, text=True,
                               timeout=300)
            if r.returncode:
                reason = next((why for text, why in MISSING.items() if text in r.stdout + r.stderr), None)
                if reason:
                    self.skip = reason
                    return
                raise AssertionError(f"cmake configure failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
        for build in configs:
            log = open(build / "build.log", "w")
            self.procs.append((build, subprocess.Popen(["cmake", "--build", str(build), "-j2"], stdout=log,
                                                       stderr=subprocess.STDOUT)))
        self.started = t
        self.seconds = 0.0

    def wait(self) -> Builds:
        if self.skip:
            pytest.skip(self.skip)
        for build, proc in self.procs:
            if proc.wait(timeout=BUILD_TIMEOUT):
                pytest.fail(f"building {build.name} failed:\n{(build / 'build.log').read_text()[-4000:]}")
        if not self.seconds:
            self.seconds = time.perf_counter() - self.started
        return self

    @property
    def exe(self) -> Path:
        return self.normal / "vqdeploy-cpp"

    @property
    def check(self) -> Path:
        return self.normal / "vqdeploy-cpp-check"

    @property
    def asan_exe(self) -> Path:
        return self.asan / "vqdeploy-cpp"


@pytest.fixture(scope="session")
def builds_started(tmp_path_factory: pytest.TempPathFactory) -> Builds:
    return Builds(tmp_path_factory.mktemp("cpp-build"))


@pytest.fixture(scope="session")
def cpp(builds_started: Builds, demo_export: Path) -> Builds:
    """The builds, done (the demo export ran meanwhile)."""
    return builds_started.wait()


# --- helpers ---------------------------------------------------------------------------------------------
def run_cpp(exe: Path, *args: object, timeout: int = 300) -> subprocess.CompletedProcess:
    """``vqdeploy-cpp run ARGS`` (on the CPU unless a backend or device is named: on a GPU machine the
    automatic choice is announced on stderr)."""
    if "--device" not in args and "--backend" not in args:
        args = (*args, "--device", "cpu")
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0", "UBSAN_OPTIONS": "print_stacktrace=1"}
    return subprocess.run([str(exe), "run", *(str(a) for a in args)], capture_output=True, text=True, timeout=timeout,
                          env=env)


def cpp_tokens(exe: Path, artifacts: Path, tmp: Path, *args: object) -> np.ndarray:
    out = tmp / f"t{time.monotonic_ns()}"
    r = run_cpp(exe, *args, "--artifacts", artifacts, "--out", out / "s.png",
                "--tokens-out", out / "tokens.json")
    assert r.returncode == 0, r.stderr
    data = json.loads((out / "tokens.json").read_text())
    tokens = np.array(data["tokens"], dtype=np.int64)
    assert list(tokens.shape) == data["shape"]
    return tokens


def one_error_line(r: subprocess.CompletedProcess, *needles: str) -> str:
    """A refusal: non-zero exit, exactly one line on stderr, "error: ...", nothing on stdout."""
    assert r.returncode not in (0, None) and r.returncode > 0, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr[-3000:]
    for n in needles:
        assert n in lines[0], lines[0]
    assert "internal error" not in lines[0]
    return lines[0]


_PIPELINES: dict[tuple[str, str], object] = {}


def python_tokens(artifacts: Path, condition: object, n: int, seed: int, params: tuple, sampler: str = "host",
                  class_id: int | None = None) -> np.ndarray:
    """Python's tokens for the same request (vqdeploy.Pipeline on ONNX Runtime, CPU)."""
    import vqdeploy

    key = (str(artifacts), sampler)
    if key not in _PIPELINES:
        _PIPELINES[key] = vqdeploy.Pipeline.from_artifacts(artifacts, backend="onnxruntime", device="cpu",
                                                           sampler=sampler)
    pipe = _PIPELINES[key]
    return pipe(condition, num_samples=n, params=vqdeploy.SamplingParams(*params), seed=seed, class_id=class_id).tokens


def as_flags(params: tuple) -> list[str]:
    """(temperature, top_k, top_p[, cfg_scale, cfg_interval]) as `run`'s options."""
    temperature, top_k, top_p, *cfg = params
    flags = ["--temperature", repr(temperature), "--top-k", str(top_k)] + ([] if top_p is None else ["--top-p", repr(top_p)])
    if cfg:
        flags += ["--cfg-scale", repr(cfg[0]), "--cfg-interval", str(cfg[1])]
    return flags


def pixels(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im).copy()


# --- the generator and the sampler, piece by piece --------------------------------------------------------
SEEDS = (0, 1, 12345, 2**31, 2**32 - 1, 2**32, 2**32 + 1, 2**53 + 1, 987654321987654321, 2**63 - 2, 2**63 - 1)


def test_uniforms_are_numpys_for_every_seed_size(cpp: Builds, demo_export: Path) -> None:
    """numpy's default_rng([seed, sample]).random(steps), bit for bit: one-word, two-word and the
    largest seeds, sample indices of one and two words; and the manifest states that generator."""
    stated = json.loads((demo_export / "manifest.json").read_text())["sampling"]["noise_generator"]
    assert stated == {"seed_sequence": "numpy.SeedSequence", "entropy": ["seed", "sample_index"],
                      "bit_generator": "numpy.PCG64", "draw": "numpy.Generator.random"}
    for seed in SEEDS:
        for sample in (0, 1, 7, 2**32 + 3):
            out = subprocess.run([str(cpp.check), "uniforms", str(seed), str(sample), "40"], capture_output=True,
                                 text=True, check=True).stdout.split()
            ours = np.array([float(x) for x in out])
            assert np.array_equal(ours, np.random.default_rng([seed, sample]).random(40)), (seed, sample)


def _reference_token(logits: np.ndarray, u: float, temperature: float, top_k: int | None, top_p: float | None) -> int:
    """The rule of vqdeploy/runtime/sampling.py, transcribed (tests reach Python's own sampler only through
    the pipeline, which the tests below compare end to end)."""
    x = logits.astype(np.float64)[None]
    if temperature == 0 or top_k == 1:
        return int(np.argmax(x[0]))
    x = x / temperature
    v = x.shape[-1]
    if top_k is not None and top_k < v:
        kth = np.partition(x, v - top_k, axis=-1)[:, v - top_k : v - top_k + 1]
        x = np.where(x < kth, -np.inf, x)
    p = np.exp(x - x.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    if top_p is not None and top_p < 1.0:
        srt = -np.sort(-p, axis=-1)
        keep = (np.cumsum(srt, axis=-1) - srt) <= top_p
        p = np.where(p >= np.min(np.where(keep, srt, np.inf), axis=-1, keepdims=True), p, 0.0)
    cdf = np.cumsum(p, axis=-1)
    return int(min((cdf <= u * cdf[:, -1:]).sum(), v - 1))


@pytest.mark.parametrize("vocab", [64, 1000])
def test_host_sampler_follows_the_rule_with_many_ties(cpp: Builds, vocab: int) -> None:
    """Logits on a coarse grid (many exact ties at the k-th value and at the top-p threshold), ten
    settings, 300 draws each: every token is the rule's. The C++ probabilities equal numpy's except
    for exp(), which numpy computes with its own SIMD code on AVX-512 machines (up to 1 ulp apart from
    glibc's); measured here: no token differs."""
    rng = np.random.default_rng(vocab)
    settings = [(0.0, None, None), (1.0, 1, None), (1.0, 5, None), (0.7, 17, None), (1.0, None, 0.5),
                (1.3, None, 0.9), (0.8, 40, 0.8), (1.0, vocab, 1.0), (2.0, 3, 0.3), (0.5, None, 1e-9)]
    for temperature, top_k, top_p in settings:
        rows = np.round(rng.normal(size=(300, vocab)) * 2) / 2  # steps of 0.5: exact ties
        u = rng.random(300)
        text = "\n".join(" ".join(repr(float(x)) for x in row) + f" {float(ui)!r}" for row, ui in zip(rows, u))
        out = subprocess.run([str(cpp.check), "sample", str(vocab), repr(temperature), str(top_k or "-"),
                              repr(top_p) if top_p is not None else "-"], input=text, capture_output=True, text=True,
                             check=True).stdout.split()
        want = [_reference_token(row.astype(np.float32), float(ui), temperature, top_k, top_p) for row, ui in zip(rows, u)]
        assert [int(t) for t in out] == want, (temperature, top_k, top_p)


# --- the same tokens as Python ------------------------------------------------------------------------------
DEMO_SETTINGS = {"greedy": (1.0, 1, None), "top-k": (1.0, 20, None), "temperature+top-p": (0.8, 100, 0.9)}


@pytest.mark.parametrize("setting", DEMO_SETTINGS)
def test_demo_tokens_equal_pythons(cpp: Builds, demo_export: Path, tmp_path: Path, setting: str) -> None:
    """3 seeds (the largest included) x 2 batch sizes per setting: identical token grids."""
    params = DEMO_SETTINGS[setting]
    for seed in (0, 1, 2**63 - 1):
        for n in (1, 3):
            ours = cpp_tokens(cpp.exe, demo_export, tmp_path, SKETCH, "--seed", seed, "--num-samples", n,
                              *as_flags(params))
            theirs = python_tokens(demo_export, str(SKETCH), n, seed, params)
            np.testing.assert_array_equal(ours, theirs, err_msg=f"{setting} seed {seed} batch {n}")


def test_demo_sampler_graph_and_batches_beyond_the_limit_equal_pythons(cpp: Builds, demo_export: Path,
                                                                         tmp_path: Path) -> None:
    """--sampler graph (sampler.onnx in the loop) against Python's graph sampler; 10 samples with a batch
    limit of 8 run as 8 + 2 and give the images of one batch."""
    for params in ((0.8, 100, 0.9), (1.0, 1, None)):
        ours = cpp_tokens(cpp.exe, demo_export, tmp_path, SKETCH, "--seed", 5, "--num-samples", 2, "--sampler",
                          "graph", *as_flags(params))
        np.testing.assert_array_equal(ours, python_tokens(demo_export, str(SKETCH), 2, 5, params, sampler="graph"))
    assert json.loads((demo_export / "manifest.json").read_text())["max_batch"] == 8
    ours = cpp_tokens(cpp.exe, demo_export, tmp_path, SKETCH, "--seed", 2, "--num-samples", 10)
    np.testing.assert_array_equal(ours, python_tokens(demo_export, str(SKETCH), 10, 2, (1.0, 100, None)))
    np.testing.assert_array_equal(ours[:3], cpp_tokens(cpp.exe, demo_export, tmp_path, SKETCH, "--seed", 2,
                                                       "--num-samples", 3))


def test_demo_images_and_defaults_equal_vqdeploy_runs(cpp: Builds, demo_export: Path, tmp_path: Path) -> None:
    """The PNGs' pixels equal `vqdeploy run`'s, with the default options (names and defaults are the
    same) and with a grid."""
    for extra in ([], ["--num-samples", "3", "--seed", "9", "--top-k", "20", "--grid"]):
        r = run_cpp(cpp.exe, SKETCH, "--artifacts", demo_export, "--out", tmp_path / "cpp" / "s.png", *extra)
        assert r.returncode == 0, r.stderr
        py = subprocess.run([sys.executable, "-m", "vqdeploy", "run", str(SKETCH), "--artifacts", str(demo_export),
                             "--backend", "onnxruntime", "--out", str(tmp_path / "py" / "s.png"), *extra],
                            capture_output=True, text=True, timeout=300)
        assert py.returncode == 0, py.stderr
        for f in sorted((tmp_path / "py").glob("*.png")):
            np.testing.assert_array_equal(pixels(tmp_path / "cpp" / f.name), pixels(f), err_msg=f.name)
        shutil.rmtree(tmp_path / "py")
        shutil.rmtree(tmp_path / "cpp")
    assert "--tokens-out" in subprocess.run([str(cpp.exe), "run", "--help"], capture_output=True, text=True).stdout
    python_help = subprocess.run([sys.executable, "-m", "vqdeploy", "run", "--help"], capture_output=True,
                                 text=True).stdout
    ours = subprocess.run([str(cpp.exe), "run", "--help"], capture_output=True, text=True).stdout
    for option in ("--artifacts", "--backend", "--device", "--num-samples", "--temperature", "--top-k", "--top-p",
                   "--seed", "--class", "--size", "--out", "--grid", "--json", "--sampler", "--cuda-graphs",
                   "--cfg-scale", "--cfg-interval"):
        assert option in python_help and option in ours, option


def test_input_modes_are_read_as_pillow_reads_them(cpp: Builds, demo_export: Path, tmp_path: Path) -> None:
    """The demo's greyscale condition given as RGB, RGBA, LA, palette, 1-bit and 16-bit PNGs: converted
    as Python converts them (Pillow's modes and L = 299/587/114 rule), the same tokens."""
    from PIL import Image

    with Image.open(DEMO / "sketches" / "03_circle-square_plain.png") as im:
        grey = np.asarray(im.convert("L"))
    rng = np.random.default_rng(0)
    rgb = np.clip(np.stack([grey] * 3, -1).astype(np.int32) + rng.integers(-40, 40, (*grey.shape, 3)), 0,
                  255).astype(np.uint8)
    deep = Image.new("I;16", grey.shape[::-1])
    deep.frombytes((grey.astype("<u2") * 200).tobytes())
    variants = {"RGB": Image.fromarray(rgb), "RGBA": Image.fromarray(np.dstack([rgb, np.full(grey.shape, 9, np.uint8)])),
                "LA": Image.fromarray(np.dstack([grey, np.full(grey.shape, 200, np.uint8)])),
                "P": Image.fromarray(rgb).quantize(37), "1": Image.fromarray(grey).convert("1"), "I;16": deep}
    for mode, im in variants.items():
        path = tmp_path / f"{mode.replace(';', '')}.png"
        im.save(path)
        with Image.open(path) as check:
            assert check.mode == mode
        np.testing.assert_array_equal(cpp_tokens(cpp.exe, demo_export, tmp_path, path, "--seed", 4, "--num-samples", 2),
                                      python_tokens(demo_export, str(path), 2, 4, (1.0, 100, None)), err_msg=mode)


def test_class_conditional_tokens_equal_pythons(cpp: Builds, exported, tmp_path: Path) -> None:
    _, art, _ = exported("class_subsample")  # Labelator + the Subsample permuter
    n_classes = json.loads((art / "manifest.json").read_text())["model"]["conditioning"]["n_classes"]
    for class_id in (0, n_classes - 1):
        for seed in (0, 2**40 + 5):
            for params in ((1.0, 100, None), (0.9, 8, 0.8)):
                ours = cpp_tokens(cpp.exe, art, tmp_path, "--class", class_id, "--seed", seed, "--num-samples", 3,
                                  *as_flags(params))
                np.testing.assert_array_equal(ours, python_tokens(art, None, 3, seed, params, class_id=class_id))
    one_error_line(run_cpp(cpp.exe, "--artifacts", art, "--class", n_classes, "--out", tmp_path / "x.png"),
                   f"--class {n_classes} is out of range (0..{n_classes - 1})")
    one_error_line(run_cpp(cpp.exe, "--artifacts", art, "--out", tmp_path / "x.png"), "pass --class ID")


def test_permuted_unconditional_and_label_map_models_equal_pythons(cpp: Builds, exported, tmp_path: Path) -> None:
    """ZCurve's order undone as Python undoes it; a label map (onehot) as a grey and a palette PNG; a
    label map given as RGB is refused with one line."""
    from PIL import Image

    _, sos, _ = exported("sos_zcurve")
    np.testing.assert_array_equal(cpp_tokens(cpp.exe, sos, tmp_path, "--seed", 3, "--num-samples", 2),
                                  python_tokens(sos, None, 2, 3, (1.0, 100, None)))
    _, seg, _ = exported("seg")
    cond = json.loads((seg / "manifest.json").read_text())["model"]["conditioning"]
    side, classes = cond["resolution"], cond["preprocessing"]["num_classes"]
    labels = np.kron(np.random.default_rng(1).integers(0, classes, (4, 4)), np.ones((side // 4, side // 4), int))
    Image.fromarray(labels.astype(np.uint8), mode="L").save(tmp_path / "labels.png")
    palette = Image.fromarray(labels.astype(np.uint8), mode="P")
    palette.putpalette([v for i in range(classes) for v in (40 * i, 0, 255 - 40 * i)])
    palette.save(tmp_path / "labels-p.png")
    for f in ("labels.png", "labels-p.png"):
        np.testing.assert_array_equal(cpp_tokens(cpp.exe, seg, tmp_path, tmp_path / f, "--seed", 1, "--num-samples", 2),
                                      python_tokens(seg, str(tmp_path / f), 2, 1, (1.0, 100, None)), err_msg=f)
    Image.fromarray(np.zeros((side, side, 3), np.uint8)).save(tmp_path / "rgb.png")
    one_error_line(run_cpp(cpp.exe, tmp_path / "rgb.png", "--artifacts", seg, "--out", tmp_path / "x.png"),
                   "a segmentation must be a label PNG", "got mode RGB")
    Image.fromarray(np.full((side, side), classes, np.uint8)).save(tmp_path / "big.png")
    one_error_line(run_cpp(cpp.exe, tmp_path / "big.png", "--artifacts", seg, "--out", tmp_path / "x.png"),
                   f"class ids must be in 0..{classes - 1}")


@pytest.fixture(scope="module")
def scene_artifacts(scene_export: Path) -> Path:
    """The session's shared scene export (read only)."""
    return scene_export


def test_object_layout_tokens_equal_pythons(cpp: Builds, scene_artifacts: Path, tmp_path: Path) -> None:
    """upstream's five builder cases (more objects than the model takes, crops, group-of flags) as scene
    files: identical tokens with the host sampler and with the sampler graph (8192 tokens: its
    multi-round TopK); bad scenes are one line."""
    cases = json.loads((SCENE / "builder_cases.json").read_text())["cases"]
    flags = ("is_group_of", "is_occluded", "is_depiction", "is_inside")
    for i, case in enumerate(cases):
        scene = {"objects": [{"category": o["category_no"], "bbox": o["bbox"], **{f: o[f] for f in flags}}
                             for o in case["objects"]], **({"crop": case["crop"]} if case["crop"] else {})}
        path = tmp_path / f"scene{i}.json"
        path.write_text(json.dumps(scene))
        samplers = ("host", "graph") if i == 1 else ("host",)
        for sampler in samplers:
            params = (1.0, 50, 0.95) if sampler == "graph" else (1.0, 100, None)
            ours = cpp_tokens(cpp.exe, scene_artifacts, tmp_path, path, "--seed", i, "--num-samples", 2, "--sampler",
                              sampler, *as_flags(params))
            np.testing.assert_array_equal(ours, python_tokens(scene_artifacts, str(path), 2, i, params, sampler=sampler),
                                          err_msg=f"case {i} {sampler}")
    bad = {"outside.json": ({"objects": [{"category": 1, "bbox": [0.5, 0.5, 0.7, 0.1]}]}, "is outside [0, 1]"),
           "category.json": ({"objects": [{"category": 10**6, "bbox": [0, 0, 0.1, 0.1]}]}, "unknown category 1000000"),
           "keys.json": ({"objects": [], "colour": 1}, "unknown key 'colour'"),
           "nan.json": ('{"objects": [{"category": 1, "bbox": [NaN, 0, 0.1, 0.1]}]}', "unreadable JSON")}
    for name, (content, needle) in bad.items():
        (tmp_path / name).write_text(content if isinstance(content, str) else json.dumps(content))
        one_error_line(run_cpp(cpp.exe, tmp_path / name, "--artifacts", scene_artifacts, "--out", tmp_path / "x.png"),
                       needle)
    one_error_line(run_cpp(cpp.exe, SKETCH, "--artifacts", scene_artifacts, "--out", tmp_path / "x.png"),
                   "pass a scene JSON file")


def test_coordinate_model_images_equal_vqdeploy_runs(cpp: Builds, exported, tmp_path: Path) -> None:
    _, art, _ = exported("coord_identity")
    args = ["--artifacts", str(art), "--seed", "4", "--num-samples", "2"]
    assert run_cpp(cpp.exe, *args, "--out", tmp_path / "c.png").returncode == 0
    py = subprocess.run([sys.executable, "-m", "vqdeploy", "run", *args, "--backend", "onnxruntime", "--out",
                         str(tmp_path / "p.png")], capture_output=True, text=True, timeout=300)
    assert py.returncode == 0, py.stderr
    for i in range(2):
        np.testing.assert_array_equal(pixels(tmp_path / f"c-{i}.png"), pixels(tmp_path / f"p-{i}.png"))


# --- refusals ----------------------------------------------------------------------------------------------
def _manifest_edit(change):
    def apply(art: Path) -> None:
        m = json.loads((art / "manifest.json").read_text())
        change(m)
        (art / "manifest.json").write_text(json.dumps(m))
    return apply


def _llamagen_edit(change):
    apply = _manifest_edit(change)
    apply.llamagen = True  # applied to a copy of the LlamaGen export
    return apply


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _truncate(art: Path) -> None:
    data = (art / "decoder.onnx").read_bytes()
    (art / "decoder.onnx").write_bytes(data[: len(data) // 2])
    _manifest_edit(lambda m: m["graphs"]["decoder"].update(sha256=_sha(art / "decoder.onnx")))(art)


def _flip_byte(art: Path) -> None:
    data = bytearray((art / "sampler.onnx").read_bytes())
    data[len(data) // 2] ^= 1
    (art / "sampler.onnx").write_bytes(bytes(data))


def _symlink(art: Path) -> None:
    target = art.parent / "elsewhere.onnx"
    shutil.copy(art / "decoder.onnx", target)
    (art / "decoder.onnx").unlink()
    (art / "decoder.onnx").symlink_to(target)


def _external_data(location: str):
    """The decoder's weights in decoder.onnx.data (the manifest's), one tensor pointing at ``location``."""
    def apply(art: Path) -> None:
        import onnx

        model = onnx.load(str(art / "decoder.onnx"))
        onnx.save_model(model, str(art / "decoder.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                        location="decoder.onnx.data", size_threshold=1024)
        if location != "decoder.onnx.data":
            model = onnx.load(str(art / "decoder.onnx"), load_external_data=False)
            t = next(t for t in model.graph.initializer if t.external_data)
            next(e for e in t.external_data if e.key == "location").value = location
            onnx.save_model(model, str(art / "decoder.onnx"))
        _manifest_edit(lambda m: m["graphs"]["decoder"].update(
            sha256=_sha(art / "decoder.onnx"),
            external_data={"file": "decoder.onnx.data", "sha256": _sha(art / "decoder.onnx.data")}))(art)
    return apply


def _other_manifest(other: Path):
    def apply(art: Path) -> None:
        shutil.copy(other / "manifest.json", art / "manifest.json")
    return apply


TAMPERED = {
    "escaping graph path": (_manifest_edit(lambda m: m["graphs"]["decoder"].update(file="../decoder.onnx")),
                            "refused file '../decoder.onnx'"),
    "absolute graph path": (_manifest_edit(lambda m: m["graphs"]["decoder"].update(file="/etc/hostname")),
                            "refused file '/etc/hostname'"),
    "symlinked graph": (_symlink, "is a symlink"),
    "wrong sha256": (_flip_byte, "sampler.onnx: does not match the manifest (sha256 differs)"),
    "truncated graph": (_truncate, "decoder.onnx"),
    "external data outside": (_external_data("../evil.data"), "keeps its data in file '../evil.data'"),
    "absurd n_layer": (_manifest_edit(lambda m: m["model"]["transformer"].update(n_layer=10**9)),
                       "model.transformer.n_layer: expected a positive integer (at most 1024)"),
    "absurd grid": (_manifest_edit(lambda m: m["model"]["first_stage"].update(latent_grid=[10**5, 8])),
                    "latent_grid[0]"),
    "absurd batch": (_manifest_edit(lambda m: m["graphs"]["transformer"]["dims"]["batch"].update(max=2**40)),
                     "graphs.transformer.dims.batch.max"),
    "absurd vocabulary": (_manifest_edit(lambda m: m["model"]["transformer"].update(vocab_size=2**40)),
                          "model.transformer.vocab_size"),
    "unknown format version": (_manifest_edit(lambda m: m.update(format_version=4)), "manifest format 4 is not supported"),
    "not a manifest": (_manifest_edit(lambda m: m.pop("format")), "not a vqdeploy manifest"),
    "NaN in the manifest": (lambda art: (art / "manifest.json").write_text(
        (art / "manifest.json").read_text().replace('"max_batch": 8', '"max_batch": NaN')), "unreadable JSON"),
    "nested too deeply": (lambda art: (art / "manifest.json").write_text("[" * 5000 + "]" * 5000), "nested too deeply"),
    "no manifest": (lambda art: (art / "manifest.json").unlink(), "no manifest.json"),
    "no noise generator": (_manifest_edit(lambda m: m["sampling"].pop("noise_generator")),
                           "sampling.noise_generator: missing"),
    "another generator": (_manifest_edit(lambda m: m["sampling"]["noise_generator"].update(bit_generator="numpy.MT19937")),
                          "sampling.noise_generator.bit_generator"),
    "not a permutation": (_manifest_edit(lambda m: m["model"]["permuter"].update(order=[0] * 64)),
                          "model.permuter.order: not a permutation"),
    "missing cache tensor": (_manifest_edit(lambda m: m["graphs"]["transformer"]["inputs"].pop(3)),
                             "expected 'cache.0.value'"),
    # a family whose sampling rules this runtime does not know is refused, not sampled with the wrong rules
    "another family": (_manifest_edit(lambda m: m["model"].update(family="maskgit")),
                       "model.family: model family \"maskgit\"",
                       "is not supported by this vqdeploy-cpp (taming and llamagen models only)"),
    "null class among the classes": (_llamagen_edit(lambda m: m["model"]["conditioning"].update(null_class=3)),
                                     "model.conditioning.null_class: 3 is one of the 10 classes"),
}


@pytest.mark.parametrize("case", TAMPERED)
def test_tampered_artifacts_are_one_error_line(cpp: Builds, demo_export: Path, request: pytest.FixtureRequest,
                                               tmp_path: Path, case: str) -> None:
    """Each with the normal build and the sanitizer build: one line, never a crash (and no sanitizer report)."""
    art = tmp_path / "art"
    change, *needles = TAMPERED[case]
    llamagen = getattr(change, "llamagen", False)  # an edit of the LlamaGen export (class-conditional: --class)
    shutil.copytree(request.getfixturevalue("llamagen_export") if llamagen else demo_export, art)
    change(art)
    condition = ["--class", 3] if llamagen else [SKETCH]
    for exe in (cpp.exe, cpp.asan_exe):
        one_error_line(run_cpp(exe, *condition, "--artifacts", art, "--device", "cpu", "--out",
                               tmp_path / "o" / "s.png"), *needles)
    assert not (tmp_path / "o").exists()


# --- LlamaGen: classifier-free guidance --------------------------------------------------------------------------
# (temperature, top_k, top_p, cfg_scale, cfg_interval): unguided, guided every token, guided for the first tokens only
LLAMAGEN_SETTINGS = {"unguided": (1.0, 50, None, 1.0, -1), "guided": (1.0, 50, None, 4.0, -1),
                     "guided interval": (0.9, 50, 0.9, 4.0, 5)}


@pytest.mark.parametrize("setting", LLAMAGEN_SETTINGS)
def test_llamagen_tokens_equal_pythons(cpp: Builds, llamagen_export: Path, tmp_path: Path, setting: str) -> None:
    """The LlamaGen export (class token + null class, guided_sampler graph): vqdeploy-cpp's tokens are Python's for 2
    seeds (the largest included), 5 samples (a guided batch holds 4 samples of the export's 8 rows: 4 + 1), with the
    host sampler and the guided sampler graph."""
    params = LLAMAGEN_SETTINGS[setting]
    for seed in (0, 2**63 - 1):
        ours = cpp_tokens(cpp.exe, llamagen_export, tmp_path, "--class", 3, "--seed", seed, "--num-samples", 5,
                          *as_flags(params))
        np.testing.assert_array_equal(ours, python_tokens(llamagen_export, None, 5, seed, params, class_id=3),
                                      err_msg=f"{setting} seed {seed}")
    graph = cpp_tokens(cpp.exe, llamagen_export, tmp_path, "--class", 7, "--seed", 1, "--num-samples", 2, "--sampler",
                       "graph", *as_flags(params))
    np.testing.assert_array_equal(graph, python_tokens(llamagen_export, None, 2, 1, params, sampler="graph",
                                                       class_id=7), err_msg=f"{setting} graph sampler")


def test_llamagen_guidance_rules(cpp: Builds, llamagen_export: Path, tmp_path: Path) -> None:
    """--cfg-scale 1 (and no --cfg-scale) is unguided; guidance changes the tokens; --cfg-interval counts as Python's
    (the first N + 2 tokens guided); greedy guided tokens on the host and the graph sampler agree."""
    def tokens(*args: object) -> np.ndarray:
        return cpp_tokens(cpp.exe, llamagen_export, tmp_path, "--class", 5, "--seed", 4, "--num-samples", 2, *args)

    plain = tokens("--top-k", 50)
    np.testing.assert_array_equal(tokens("--top-k", 50, "--cfg-scale", 1), plain)
    np.testing.assert_array_equal(tokens("--top-k", 50, "--cfg-scale", 1, "--cfg-interval", 3), plain)
    guided = tokens("--top-k", 50, "--cfg-scale", 4)
    assert (guided != plain).any()
    for n in (0, 10):
        params = (1.0, 50, None, 4.0, n)
        np.testing.assert_array_equal(tokens(*as_flags(params)),
                                      python_tokens(llamagen_export, None, 2, 4, params, class_id=5))
    greedy = tokens("--top-k", 1, "--cfg-scale", 2.5)
    np.testing.assert_array_equal(tokens("--top-k", 1, "--cfg-scale", 2.5, "--sampler", "graph"), greedy)
    np.testing.assert_array_equal(greedy, python_tokens(llamagen_export, None, 2, 4, (1.0, 1, None, 2.5, -1),
                                                        class_id=5))


def test_llamagen_images_equal_vqdeploy_runs(cpp: Builds, llamagen_export: Path, tmp_path: Path) -> None:
    """Guided, with an interval, 3 samples: the PNGs' pixels equal `vqdeploy run`'s; --json names the guidance as
    `vqdeploy run --json` does; the sanitizer build (host and guided sampler graph) gives the same tokens, clean."""
    args = ["--class", 2, "--seed", 11, "--num-samples", 3, "--top-k", 100, "--cfg-scale", 4, "--cfg-interval", 20]
    r = run_cpp(cpp.exe, *args, "--artifacts", llamagen_export, "--out", tmp_path / "cpp" / "s.png", "--json")
    assert r.returncode == 0, r.stderr
    py = subprocess.run([sys.executable, "-m", "vqdeploy", "run", *map(str, args), "--artifacts", str(llamagen_export),
                         "--backend", "onnxruntime", "--out", str(tmp_path / "py" / "s.png"), "--json"],
                        check=False, capture_output=True, text=True, timeout=300)
    assert py.returncode == 0, py.stderr
    assert json.loads(r.stdout)["sampling"] == json.loads(py.stdout)["sampling"]
    pngs = sorted((tmp_path / "py").glob("*.png"))
    assert len(pngs) == 3
    for f in pngs:
        np.testing.assert_array_equal(pixels(tmp_path / "cpp" / f.name), pixels(f), err_msg=f.name)
    for sampler in ("host", "graph"):
        run = [*args[:4], "--num-samples", 2, "--top-p", "0.9", "--cfg-scale", 3, "--cfg-interval", 7,
               "--sampler", sampler]
        r = run_cpp(cpp.asan_exe, *run, "--artifacts", llamagen_export, "--out", tmp_path / "a.png", "--tokens-out",
                    tmp_path / "a.json")
        assert r.returncode == 0, r.stderr[-4000:]
        assert "Sanitizer" not in r.stderr and "runtime error" not in r.stderr, r.stderr[-4000:]
        assert json.loads((tmp_path / "a.json").read_text())["tokens"] == \
            cpp_tokens(cpp.exe, llamagen_export, tmp_path, *run).tolist()


def test_llamagen_refusals_are_one_error_line(cpp: Builds, llamagen_export: Path, tmp_path: Path) -> None:
    """What vqdeploy-cpp does not do with a LlamaGen export is one line, as in Python: bad guidance options, a guided
    batch beyond one row (max_batch 1), the guided graph sampler without its graph."""
    out = tmp_path / "o" / "s.png"
    cases = {("--cfg-scale", "0.5"): "--cfg-scale must be >= 1.0, got 0.5",
             ("--cfg-scale", "nan"): "--cfg-scale must be a finite number",
             ("--cfg-scale", "1001"): "--cfg-scale must be <= 1000.0",
             ("--cfg-interval", "3"): "--cfg-interval applies to guided sampling: pass --cfg-scale S too",
             ("--cfg-scale", "2", "--cfg-interval", "-2"): "--cfg-interval must be in -1..65536, got -2",
             ("--cfg-scale", "2", "--cfg-interval", "x"): "is not a valid integer"}
    for args, needle in cases.items():
        one_error_line(run_cpp(cpp.exe, "--class", 3, "--artifacts", llamagen_export, *args, "--out", out), needle)
    art = tmp_path / "art"
    shutil.copytree(llamagen_export, art)
    _manifest_edit(lambda m: m["graphs"].pop("guided_sampler"))(art)
    one_error_line(run_cpp(cpp.exe, "--class", 3, "--artifacts", art, "--cfg-scale", "2", "--sampler", "graph", "--out",
                           out), "--sampler graph with --cfg-scale needs a guided_sampler graph")
    assert run_cpp(cpp.exe, "--class", 3, "--artifacts", art, "--cfg-scale", "2", "--out", out).returncode == 0
    shutil.rmtree(out.parent)

    def one_row(m: dict) -> None:
        for g in m["graphs"].values():
            if "batch" in g.get("dims", {}):
                g["dims"]["batch"].update(min=1, opt=1, max=1)
        m["max_batch"] = 1

    _manifest_edit(one_row)(art)
    one_error_line(run_cpp(cpp.exe, "--class", 3, "--artifacts", art, "--cfg-scale", "2", "--out", out),
                   "a guided sample runs two transformer rows, and this backend's batch limit is 1")
    assert not out.parent.exists()


def test_another_models_manifest_and_good_external_data(cpp: Builds, demo_export: Path, exported, tmp_path: Path) -> None:
    """Another model's manifest.json among the demo's graphs: the hashes differ. External data where
    the manifest says: loaded (ONNX Runtime from the hashed bytes, its data file beside), same tokens."""
    art = tmp_path / "art"
    shutil.copytree(demo_export, art)
    _other_manifest(exported("class_subsample")[1])(art)
    one_error_line(run_cpp(cpp.exe, "--class", 1, "--artifacts", art, "--out", tmp_path / "s.png"), "sha256 differs")
    shutil.rmtree(art)
    shutil.copytree(demo_export, art)
    _external_data("decoder.onnx.data")(art)
    r = run_cpp(cpp.exe, SKETCH, "--artifacts", art, "--seed", 3, "--out", tmp_path / "ext.png")
    assert r.returncode == 0, r.stderr
    assert run_cpp(cpp.exe, SKETCH, "--artifacts", demo_export, "--seed", 3, "--out", tmp_path / "ref.png").returncode == 0
    np.testing.assert_array_equal(pixels(tmp_path / "ext.png"), pixels(tmp_path / "ref.png"))


def test_bad_inputs_and_options_are_one_error_line(cpp: Builds, demo_export: Path, tmp_path: Path) -> None:
    from PIL import Image

    Image.new("L", (32, 32), 255).save(tmp_path / "small.png")
    (tmp_path / "text.png").write_text("not an image")
    (tmp_path / "truncated.png").write_bytes(SKETCH.read_bytes()[:200])
    (tmp_path / "scene.json").write_text('{"objects": []}')
    cases = {
        ("--temperature", "nan"): "--temperature must be a finite number, got nan",
        ("--temperature", "-1"): "--temperature must be >= 0.0, got -1.0",
        ("--top-p", "0"): "--top-p must be > 0.0",
        ("--top-k", "0"): "--top-k must be in 1..2147483647",
        ("--seed", str(2**63)): "--seed must be in 0..9223372036854775807",
        ("--num-samples", "0"): "--num-samples must be in 1..4096",
        ("--class", "1"): "--class is for class-conditional models",
        ("--cfg-scale", "2"): "--cfg-scale: this model (image condition) has no null condition",
        ("--size", "128"): "samples the trained size 64x64 only",
        ("--backend", "torch"): "the torch backend is Python's",
        ("--backend", "tensorrt", "--device", "cpu"): "tensorrt",
        ("--top-k", "many"): "is not a valid integer",
        ("--no-such-option",): "No such option: --no-such-option",
    }
    for args, needle in cases.items():
        one_error_line(run_cpp(cpp.exe, SKETCH, "--artifacts", demo_export, *args, "--out", tmp_path / "o.png"), needle)
    inputs = {tmp_path / "small.png": "trained size 64x64", tmp_path / "text.png": "not a PNG image",
              tmp_path / "truncated.png": "corrupt image", tmp_path / "missing.png": "input image not found",
              tmp_path / "scene.json": "a scene file is for models conditioned on an object layout"}
    for path, needle in inputs.items():
        one_error_line(run_cpp(cpp.exe, path, "--artifacts", demo_export, "--out", tmp_path / "o.png"), needle)
    one_error_line(run_cpp(cpp.exe, "--artifacts", demo_export, "--out", tmp_path / "o.png"), "pass INPUT")
    (tmp_path / "dir.png").mkdir()
    one_error_line(run_cpp(cpp.exe, SKETCH, "--artifacts", demo_export, "--out", tmp_path / "dir.png"), "is a directory")
    assert not (tmp_path / "o.png").exists()


# --- sanitizers, TensorRT, the installed package -------------------------------------------------------------
def test_sanitizer_build_runs_the_demo_clean(cpp: Builds, demo_export: Path, tmp_path: Path) -> None:
    """AddressSanitizer + UndefinedBehaviorSanitizer (leak checks on): the host and the graph sampler,
    exit 0, no report, the normal build's tokens."""
    for sampler in ("host", "graph"):
        args = [SKETCH, "--artifacts", demo_export, "--seed", 7, "--num-samples", 2, "--sampler", sampler,
                "--top-p", "0.9"]
        r = run_cpp(cpp.asan_exe, *args, "--out", tmp_path / "a.png", "--tokens-out", tmp_path / "a.json")
        assert r.returncode == 0, r.stderr[-4000:]
        assert "Sanitizer" not in r.stderr and "runtime error" not in r.stderr, r.stderr[-4000:]
        assert json.loads((tmp_path / "a.json").read_text())["tokens"] == \
            cpp_tokens(cpp.exe, demo_export, tmp_path, *args).tolist()


def test_tensorrt_backend_compiles_and_links(cpp: Builds, demo_export: Path, tmp_path: Path) -> None:
    """Against the vendored TensorRT 11.1 headers, libnvinfer_lean and libcudart from PyPI; where no GPU
    is, --backend tensorrt is one line (TensorRT is not initialised without a device)."""
    if not cpp.trt_args:
        pytest.skip(cpp.trt_missing)
    lib = cpp.normal / "libvqdeploy_runtime.so"
    ldd = subprocess.run(["ldd", str(lib)], capture_output=True, text=True).stdout
    assert "libnvinfer_lean.so.11 => /" in ldd and "libcudart.so.13 => /" in ldd, ldd
    symbols = subprocess.run(["nm", "-DC", str(lib)], capture_output=True, text=True).stdout
    assert "vqdeploy::open_tensorrt" in symbols
    r = run_cpp(cpp.exe, SKETCH, "--artifacts", demo_export, "--backend", "tensorrt", "--out", tmp_path / "t.png")
    if r.returncode != 0:
        one_error_line(r, "tensorrt")


def test_tensorrt_engines_give_pythons_tokens(cpp: Builds, demo_export: Path, tmp_path: Path) -> None:
    """On a GPU with datacenter TensorRT: engines from `vqdeploy build-trt`, the C++ TensorRT backend (with
    and without CUDA graphs) against Python's TensorRT backend."""
    if not cpp.trt_args:
        pytest.skip(cpp.trt_missing)
    if importlib.util.find_spec("tensorrt") is None or not shutil.which("nvidia-smi"):
        pytest.skip("no GPU with datacenter TensorRT here (vqdeploy build-trt needs one to build the engines)")
    art = tmp_path / "art"
    shutil.copytree(demo_export, art)
    r = subprocess.run([sys.executable, "-m", "vqdeploy", "build-trt", "--artifacts", str(art)], capture_output=True,
                       text=True, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    import vqdeploy

    theirs = vqdeploy.Pipeline.from_artifacts(art, backend="tensorrt")(
        str(SKETCH), num_samples=2, seed=3, params=vqdeploy.SamplingParams()).tokens
    for extra in ([], ["--cuda-graphs"], ["--sampler", "graph"]):
        out = tmp_path / f"trt{len(extra)}"
        r = run_cpp(cpp.exe, SKETCH, "--artifacts", art, "--backend", "tensorrt", "--seed", 3, "--num-samples", 2,
                    "--out", out / "s.png", "--tokens-out", out / "t.json", *extra)
        assert r.returncode == 0, r.stderr
        np.testing.assert_array_equal(np.array(json.loads((out / "t.json").read_text())["tokens"]), theirs)


def _readme_blocks() -> dict[str, str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Embedding in C++", 1)[1].split("\n## ", 1)[0]
    blocks: dict[str, str] = {}
    for chunk in section.split("```")[1::2]:
        lang, _, body = chunk.partition("\n")
        blocks.setdefault(lang.strip(), body)
    return blocks


def test_readme_example_app_builds_against_the_installed_package(cpp: Builds, demo_export: Path, tmp_path: Path) -> None:
    """`cmake --install` -> find_package(vqdeploy_runtime) -> the README's sample.cpp, built and run: its
    images are vqdeploy-cpp's (and so vqdeploy run's) for seed 0."""
    r = subprocess.run(["cmake", "--install", str(cpp.normal), "--prefix", str(cpp.prefix)], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (cpp.prefix / "include" / "vqdeploy" / "pipeline.hpp").exists()
    # beside the SONAME link, links to the wheel's execution providers: ONNX Runtime loads them from the directory
    # of the file it was loaded from, the link's (the CUDA provider in the gpu Docker image)
    import onnxruntime

    providers = sorted((Path(onnxruntime.__file__).parent / "capi").glob("libonnxruntime_providers_*.so"))
    assert providers, "the onnxruntime wheel has no libonnxruntime_providers_*.so"
    for provider in providers:
        (link,) = cpp.prefix.glob(f"lib*/{provider.name}")
        assert link.is_symlink() and link.resolve() == provider.resolve(), link
    blocks = _readme_blocks()
    app = tmp_path / "app"
    app.mkdir()
    (app / "sample.cpp").write_text(blocks["cpp"])
    (app / "CMakeLists.txt").write_text(blocks["cmake"])
    for cmd in (["cmake", "-S", str(app), "-B", str(app / "build"), f"-DCMAKE_PREFIX_PATH={cpp.prefix}",
                 "-DCMAKE_CXX_FLAGS=-Wall -Wextra -Werror"],
                ["cmake", "--build", str(app / "build"), "-j2"]):
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    r = subprocess.run([str(app / "build" / "sample"), str(demo_export), str(SKETCH), str(tmp_path / "app-out")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    ref = run_cpp(cpp.exe, SKETCH, "--artifacts", demo_export, "--seed", 0, "--num-samples", 2, "--out",
                  tmp_path / "ref.png")
    assert ref.returncode == 0, ref.stderr
    for i in range(2):
        np.testing.assert_array_equal(pixels(tmp_path / f"app-out-{i}.png"), pixels(tmp_path / f"ref-{i}.png"))
    bad = subprocess.run([str(app / "build" / "sample"), str(tmp_path), str(SKETCH), str(tmp_path / "x")],
                         capture_output=True, text=True, timeout=60)
    one_error_line(bad, "no manifest.json")
