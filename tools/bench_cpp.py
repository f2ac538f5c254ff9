"""vqdeploy-cpp against `vqdeploy run --backend onnxruntime`, one run, one table (issue 21's measurements).

- process start -> PNG written, on the demo (4 samples): the median of ``--repeats`` runs of each, run
  alternately; the Python side in a venv without PyTorch (created here, like tests/test_no_torch_venv.py:
  the runtime's dependencies at this environment's versions, the repository on PYTHONPATH), unless
  ``--python`` names an interpreter;
- per-token time of both loops on the same ONNX Runtime library (the wheel's; both report their sampling
  time with ``--json``): sampling seconds / tokens per sample, for the batch of 4;
- binary sizes, and the peak RSS (``ru_maxrss`` of the child, what ``/usr/bin/time -v`` reports) of both on
  the demo and, with ``--sflckr``, on an S-FLCKR-sized export (tools/make_random_model.py --preset sflckr,
  then vqdeploy export), one sample.

    python tools/bench_cpp.py --sflckr artifacts/sflckr          # builds build/cpp-bench first (Release, ONNX Runtime)
"""

from __future__ import annotations

import argparse
import glob
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SKETCH = ROOT / "models" / "demo" / "sketches" / "07_house-square-circle_horizon.png"
VENDOR = next((p for p in (ROOT.parent / "shared" / "vendor", Path("/work/shared/vendor")) if p.is_dir()), None)
RUNTIME = ("numpy", "onnx", "onnxruntime", "click", "pillow", "protobuf", "ml_dtypes", "typing_extensions",
           "flatbuffers", "packaging")


def run(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, int, subprocess.CompletedProcess]:
    """(wall seconds, peak RSS in KiB, result) of one child process."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        result = subprocess.CompletedProcess(cmd, proc.returncode, out.read().decode(), err.read().decode())
    if result.returncode:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{result.stderr[-2000:]}")
    return wall, usage.ru_maxrss, result


def build_cpp(build: Path) -> Path:
    import onnxruntime

    lib = sorted(glob.glob(str(Path(onnxruntime.__file__).parent / "capi" / "libonnxruntime.so.1.*")))[-1]
    subprocess.run(["cmake", "-S", str(ROOT / "cpp"), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
                    "-DVQDEPLOY_WITH_TENSORRT=OFF", f"-DONNXRUNTIME_LIBRARY={lib}",
                    f"-DONNXRUNTIME_INCLUDE_DIR={VENDOR / 'onnxruntime-1.23.2' / 'include'}"], check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", str(build), "-j2"], check=True, stdout=subprocess.DEVNULL)
    return build / "vqdeploy-cpp"


def torch_free_python(root: Path) -> tuple[str, dict[str, str], str]:
    """(interpreter, environment, description) of a fresh venv with the runtime's dependencies only."""
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    pins = [f"{n}=={importlib.metadata.version(n)}" for n in RUNTIME]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", *pins], check=True, env=env,
                   stderr=subprocess.DEVNULL)
    probe = subprocess.run([py, "-c", "import torch"], capture_output=True, env={**env, "PYTHONPATH": str(ROOT)})
    assert probe.returncode != 0, "the venv must not have torch"
    return py, {**env, "PYTHONPATH": str(ROOT)}, "a venv without PyTorch"


def per_token_ms(summary: dict) -> float:
    return 1000 * summary["timings_s"]["sampling"] / summary["tokens_per_sample"]


def label_map(path: Path, side: int, classes: int) -> None:
    import numpy as np
    from PIL import Image

    cells = np.random.default_rng(0).integers(0, classes, (8, 8))
    Image.fromarray(np.kron(cells, np.ones((side // 8, side // 8), int)).astype(np.uint8), mode="L").save(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cpp", type=Path, help="vqdeploy-cpp to measure (default: build build/cpp-bench)")
    ap.add_argument("--demo", type=Path, default=ROOT / "artifacts" / "demo", help="the demo's artifacts")
    ap.add_argument("--sflckr", type=Path, help="artifacts of an S-FLCKR-sized export (optional)")
    ap.add_argument("--python", help="interpreter for `vqdeploy run` (default: a fresh venv without PyTorch)")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    load_before = os.getloadavg()
    exe = args.cpp or build_cpp(ROOT / "build" / "cpp-bench")
    tmp = Path(tempfile.mkdtemp(prefix="bench-cpp-"))
    if args.python:
        py, env, where = args.python, {**os.environ, "PYTHONPATH": str(ROOT)}, f"{args.python}"
    else:
        py, env, where = torch_free_python(tmp)

    common = [str(SKETCH), "--artifacts", str(args.demo), "--num-samples", "4", "--seed", "0", "--json"]
    cpp_cmd = [str(exe), "run", *common, "--device", "cpu", "--out", str(tmp / "c" / "s.png")]
    py_cmd = [py, "-m", "vqdeploy", "run", *common, "--backend", "onnxruntime", "--out", str(tmp / "p" / "s.png")]
    run(cpp_cmd), run(py_cmd, env)  # warm the page cache
    walls: dict[str, list[float]] = {"cpp": [], "py": []}
    rss: dict[str, int] = {"cpp": 0, "py": 0}
    tokens: dict[str, list[float]] = {"cpp": [], "py": []}
    for _ in range(args.repeats):
        for key, cmd, e in (("cpp", cpp_cmd, None), ("py", py_cmd, env)):
            wall, peak, r = run(cmd, e)
            walls[key].append(wall)
            rss[key] = max(rss[key], peak)
            tokens[key].append(per_token_ms(json.loads(r.stdout)))
    from PIL import Image

    same = all((Image.open(tmp / "c" / f"s-{i}.png").tobytes() == Image.open(tmp / "p" / f"s-{i}.png").tobytes())
               for i in range(4))

    rows = [("process start -> 4 PNGs written, demo (median of %d)" % args.repeats,
             f"{statistics.median(walls['cpp']):.3f} s", f"{statistics.median(walls['py']):.3f} s"),
            ("per token, batch 4 (median sampling time / 64 steps)",
             f"{statistics.median(tokens['cpp']):.2f} ms", f"{statistics.median(tokens['py']):.2f} ms"),
            ("peak RSS, demo", f"{rss['cpp'] / 1024:.0f} MiB", f"{rss['py'] / 1024:.0f} MiB")]
    if args.sflckr:
        cond = json.loads((args.sflckr / "manifest.json").read_text())["model"]["conditioning"]
        label_map(tmp / "labels.png", cond["resolution"], cond["preprocessing"]["num_classes"])
        s_common = [str(tmp / "labels.png"), "--artifacts", str(args.sflckr), "--seed", "0", "--json"]
        c_wall, c_rss, c_r = run([str(exe), "run", *s_common, "--device", "cpu", "--out", str(tmp / "sc.png")])
        p_wall, p_rss, p_r = run([py, "-m", "vqdeploy", "run", *s_common, "--backend", "onnxruntime", "--out",
                                  str(tmp / "sp.png")], env)
        rows += [("S-FLCKR-sized: start -> PNG, 1 sample (256 tokens)", f"{c_wall:.1f} s", f"{p_wall:.1f} s"),
                 ("S-FLCKR-sized: per token, batch 1",
                  f"{per_token_ms(json.loads(c_r.stdout)):.1f} ms", f"{per_token_ms(json.loads(p_r.stdout)):.1f} ms"),
                 ("S-FLCKR-sized: peak RSS", f"{c_rss / 1024:.0f} MiB", f"{p_rss / 1024:.0f} MiB")]
        same = same and Image.open(tmp / "sc.png").tobytes() == Image.open(tmp / "sp.png").tobytes()
    lib = Path(exe).resolve().parent / "libvqdeploy_runtime.so"
    import onnxruntime

    ort = sorted(glob.glob(str(Path(onnxruntime.__file__).parent / "capi" / "libonnxruntime.so.1.*")))[-1]
    rows.append(("binaries: vqdeploy-cpp + libvqdeploy_runtime.so (Release, not stripped)",
                 f"{(Path(exe).stat().st_size + lib.resolve().stat().st_size) / 1e6:.2f} MB", ""))
    stripped = 0
    for f in (Path(exe), lib.resolve()):
        subprocess.run(["strip", "-o", str(tmp / "stripped"), str(f)], check=True)
        stripped += (tmp / "stripped").stat().st_size
    rows.append(("  the same, stripped", f"{stripped / 1e6:.2f} MB", ""))
    rows.append(("  the ONNX Runtime library both load", f"{Path(ort).stat().st_size / 1e6:.1f} MB",
                 f"{Path(ort).stat().st_size / 1e6:.1f} MB"))

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    print(f"machine: {cpu}, {os.cpu_count()} cores visible; load average {load_before[0]:.2f} before, "
          f"{os.getloadavg()[0]:.2f} after; onnxruntime {onnxruntime.__version__}; Python side: {where}")
    width = max(len(r[0]) for r in rows)
    print(f"{'':{width}}  {'vqdeploy-cpp':>14}  {'vqdeploy run':>14}")
    for name, a, b in rows:
        print(f"{name:{width}}  {a:>14}  {b:>14}")
    print(f"same images from both: {same}")


if __name__ == "__main__":
    main()
