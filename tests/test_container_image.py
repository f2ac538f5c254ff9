"""The CPU image, built and run (issue 27; docs/docker.md): `docker/build-local.sh --mode local` builds the
Dockerfile's `cpu` target with buildah on a stand-in base image made here (Debian minbase with the machine's
Python 3 by mmdebstrap), once per session, into a private overlay storage in /tmp that is removed afterwards
(the build log stays in pytest's tmp directory). podman then runs the image as its non-root user, without a
network: `--help`, `export` of the demo run (parity checks included) and `run`, whose images must equal, pixel
for pixel, what `vqdeploy run` writes on the host for the same seed, on the host's export and on the container's;
and the C++ runtime the image holds (compiled in the Dockerfile's cpp-cpu stage): `vqdeploy-cpp run` in the
container must write the images `vqdeploy run` writes in the container for the same seed, pixel for pixel.

It skips, with the reason, where buildah/podman cannot run as it needs: not root, buildah, podman,
mmdebstrap or runc missing (`.ci/run` installs them), no kernel overlay mounts; VQDEPLOY_OFFLINE=1 skips it
too (the build installs from the package index). Its marker, ``container``, keeps it out of the README's `pytest
-q` (it alone is 3-4 minutes of the two cores); `.ci/run` runs it after the suite, `pytest -m container`. Measured: 8 min 46 s on 2 cores shared with other work (load
6-8), the build 6 min 46 s of it; about 2 minutes of the build are the C++ stage (apt for g++ and CMake, one
Release build with -j2), 4.5 s of the tests its checks. Before the C++ runtime: 6 min 15 s, the build 4 min."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = [pytest.mark.slow, pytest.mark.container]  # not in `pytest -q`: `pytest -m container` (.ci/run)

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "models" / "demo"
SKETCH = "07_house-square-circle_horizon.png"
UID = 10001  # the image's user (Dockerfile, docs/docker.md)
TAG = "localhost/vqdeploy:cpu-test"
TOOLS = ("buildah", "podman", "mmdebstrap", "runc")
CPP_PREFIX = "/opt/vqdeploy-cpp"  # the C++ runtime in the image (Dockerfile, docs/docker.md)
SETTINGS = ["--num-samples", "2", "--seed", "5"]


def _why_not(scratch: Path) -> str | None:
    """Why buildah/podman cannot build and run the image here, or None."""
    if os.environ.get("VQDEPLOY_OFFLINE"):
        return "VQDEPLOY_OFFLINE=1: building the image installs from the package index"
    if os.geteuid() != 0:
        return ("needs root: rootless buildah/podman need subordinate uid/gid ranges and user namespaces, which "
                "this test does not set up")
    missing = [tool for tool in TOOLS if not shutil.which(tool)]
    if missing:
        return f"{', '.join(missing)} not installed (apt-get install buildah podman mmdebstrap runc uidmap)"
    for name in ("lower", "upper", "work", "merged"):
        (scratch / name).mkdir(parents=True)
    probe = subprocess.run(["unshare", "--mount", "mount", "-t", "overlay", "overlay", "-o",
                            f"lowerdir={scratch}/lower,upperdir={scratch}/upper,workdir={scratch}/work",
                            str(scratch / "merged")], capture_output=True, text=True, timeout=60)
    shutil.rmtree(scratch)
    if probe.returncode != 0:
        return f"no kernel overlay mounts in {scratch.parent} (the overlay storage driver): {probe.stderr.strip()}"
    return None


class Podman:
    """podman on the test's private storage, with what runs containers on a machine like CI's: runc (crun
    cannot set the rlimits there), no network, and explicit rlimits within the machine's hard limits (podman
    lowers its own process limit to 32768 at start; the default nofile, 1048576, is above the hard limit)."""

    def __init__(self, storage: Path) -> None:
        self.storage = ["--root", str(storage / "root"), "--runroot", str(storage / "run"),
                        "--storage-driver", "overlay"]
        nofile = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 1048576)
        nproc = min(resource.getrlimit(resource.RLIMIT_NPROC)[1], 32768)
        self.run_opts = ["--rm", "--runtime", "runc", "--network", "none", "--ulimit", f"nofile={nofile}:{nofile}",
                         "--ulimit", f"nproc={nproc}:{nproc}"]

    def __call__(self, *args: str, timeout: int = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["podman", *self.storage, *args], capture_output=True, text=True, timeout=timeout)

    def run(self, *args: str, volumes: dict[Path, str] | None = None,
            timeout: int = 300) -> subprocess.CompletedProcess[str]:
        mounts = [x for src, dst in (volumes or {}).items() for x in ("-v", f"{src}:{dst}")]
        return self("run", *self.run_opts, *mounts, *args, timeout=timeout)


def _ok(res: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert res.returncode == 0, f"{res.args}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


def _writable_by(path: Path, uid: int) -> Path:
    path.mkdir(parents=True)
    os.chown(path, uid, uid)
    return path


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _host_run(artifacts: Path, out: Path, *settings: str) -> None:
    _ok(subprocess.run([sys.executable, "-m", "vqdeploy", "run", str(DEMO / "sketches" / SKETCH), "--artifacts",
                        str(artifacts), *settings, "--out", str(out)], capture_output=True, text=True, timeout=300))


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory):
    """(Podman on the private storage, seconds the build took): the image TAG, built once."""
    top = tmp_path_factory.mktemp("container-image")
    reason = _why_not(top / "overlay-probe")
    if reason:
        pytest.skip(reason)
    storage = Path(tempfile.mkdtemp(prefix="vqdeploy-", dir="/tmp"))  # short: podman's runroot is <= 50 characters
    podman = Podman(storage)
    try:
        t = time.perf_counter()
        build = subprocess.run([str(ROOT / "docker" / "build-local.sh"), "--mode", "local", "--storage", str(storage),
                                "--tag", TAG], capture_output=True, text=True, timeout=1500, cwd=ROOT)
        seconds = time.perf_counter() - t
        (top / "build.log").write_text(build.stdout + build.stderr)
        assert build.returncode == 0, f"docker/build-local.sh failed ({top / 'build.log'}):\n{build.stderr[-4000:]}"
        yield podman, seconds
    finally:
        # the storage goes with the session (nothing is cached across runs): any overlay mount left under it,
        # then its files
        mounted = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
                   if line.split()[1].startswith(f"{storage}/")]
        for point in sorted(mounted, key=len, reverse=True):
            subprocess.run(["umount", "--lazy", point], capture_output=True, timeout=60)
        # in the background: deleting its ~40000 files took 2 minutes here (ext4 mounted with discard)
        subprocess.Popen(["rm", "-rf", str(storage)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)


@pytest.fixture(scope="module")
def container_export(image, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The demo run exported inside the container (parity checks on): (artifacts dir on the host, output)."""
    podman, _ = image
    out = _writable_by(tmp_path_factory.mktemp("container-export") / "out", UID)
    res = _ok(podman.run(TAG, "export", "--ckpt", "/models/demo/checkpoints/last.ckpt", "--out", "/out/demo",
                         volumes={DEMO: "/models/demo:ro", out: "/out"}))
    return out / "demo", res.stdout + res.stderr


def test_image_runs_help_as_its_non_root_user_with_its_labels(image) -> None:
    podman, seconds = image
    (config,) = json.loads(_ok(podman("image", "inspect", TAG)).stdout)
    print(f"image built in {seconds:.0f} s, {config['Size'] / 1e9:.2f} GB")
    cfg = config["Config"]
    assert cfg["User"] == f"{UID}:{UID}" and cfg["Entrypoint"] == ["vqdeploy"] and cfg["Cmd"] == ["--help"]
    assert cfg["WorkingDir"] == "/artifacts"
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    labels = cfg["Labels"]
    assert labels["org.opencontainers.image.version"] == version
    assert labels["org.opencontainers.image.title"] == "vqdeploy-cpu"
    base = labels["org.opencontainers.image.base.name"]  # the stand-in made here, not the Dockerfile's default
    assert base.startswith("localhost/vqdeploy-base:") and podman("image", "exists", base).returncode == 0, base

    help_ = _ok(podman.run(TAG)).stdout  # no arguments: CMD ["--help"]
    assert help_.startswith("Usage: vqdeploy") and all(f"\n  {cmd} " in help_ for cmd in ("export", "run", "bench"))
    assert _ok(podman.run(TAG, "--version")).stdout.strip().endswith(version)
    who = _ok(podman.run("--entrypoint", "id", TAG)).stdout.split()
    assert who[:2] == [f"uid={UID}(vqdeploy)", f"gid={UID}(vqdeploy)"], who
    # CPU torch inside; and nothing of the build machine's pip configuration stayed in the image
    probe = _ok(podman.run("--entrypoint", "python", TAG, "-c", "import torch, sys; print(torch.version.cuda, "
                           "sys.version_info[:2] >= (3, 10))")).stdout.split()
    assert probe == ["None", "True"], probe
    pip_config = _ok(podman.run("--entrypoint", "pip", TAG, "config", "list")).stdout.split()
    assert pip_config == [":env:.no-cache-dir='1'"], pip_config  # the image's own ENV only


def test_export_in_the_container_needs_the_run_folder_and_a_writable_out(image, container_export,
                                                                           tmp_path: Path) -> None:
    podman, _ = image
    artifacts, output = container_export
    # every parity check of the export ran inside the container and passed
    checks = [line.split() for line in output.splitlines() if line.split()[:1] in (["ok"], ["FAIL"])]
    assert len(checks) >= 5 and all(c[0] == "ok" for c in checks), output
    assert "wrote /out/demo/" in output
    files = sorted(p.name for p in artifacts.iterdir())
    assert "manifest.json" in files and {"encoder.onnx", "decoder.onnx", "transformer.onnx"} <= set(files), files
    assert {p.stat().st_uid for p in artifacts.rglob("*")} | {artifacts.stat().st_uid} == {UID}

    # what docs/docker.md tells users, each shown to matter: an out folder its user cannot write ...
    root_owned = tmp_path / "root-owned"
    root_owned.mkdir(mode=0o755)
    res = podman.run(TAG, "export", "--ckpt", "/models/demo/checkpoints/last.ckpt", "--out", "/out/demo",
                     volumes={DEMO: "/models/demo:ro", root_owned: "/out"})
    assert res.returncode != 0 and "error: --out: cannot write to /out (Permission denied)" in res.stderr, res.stderr
    # ... and the checkpoints folder alone, without the run's configs/ beside it
    res = podman.run(TAG, "export", "--ckpt", "/ckpt/last.ckpt", "--out", "/out/demo",
                     volumes={DEMO / "checkpoints": "/ckpt:ro", _writable_by(tmp_path / "out", UID): "/out"})
    assert res.returncode != 0 and "error: no config for /ckpt/last.ckpt" in res.stderr, res.stderr
    assert not (tmp_path / "out" / "demo").exists()


def test_run_in_the_container_gives_the_hosts_images(image, container_export, demo_export: Path,
                                                     tmp_path: Path) -> None:
    podman, _ = image
    host = tmp_path / "host"
    host.mkdir()
    _host_run(demo_export, host / "host.png", *SETTINGS)
    _host_run(container_export[0], host / "host-on-container-export.png", *SETTINGS)
    _host_run(demo_export, host / "other-seed.png", "--num-samples", "2", "--seed", "6")

    out = _writable_by(tmp_path / "container", UID)
    sketches = {DEMO / "sketches": "/sketches:ro"}
    _ok(podman.run(TAG, "run", f"/sketches/{SKETCH}", "--artifacts", "/artifacts", *SETTINGS, "--out", "/out/c.png",
                   volumes={**sketches, out: "/out", demo_export: "/artifacts:ro"}))
    _ok(podman.run(TAG, "run", f"/sketches/{SKETCH}", "--artifacts", "/artifacts", *SETTINGS, "--out",
                   "/out/cc.png", volumes={**sketches, out: "/out", container_export[0]: "/artifacts:ro"}))
    # --user instead of chown: what it writes is that user's
    mine = _writable_by(tmp_path / "as-4242", 4242)
    _ok(podman.run("--user", "4242:4242", TAG, "run", f"/sketches/{SKETCH}", "--artifacts", "/artifacts", *SETTINGS,
                   "--out", "/out/u.png", volumes={**sketches, mine: "/out", demo_export: "/artifacts:ro"}))

    for i in range(2):
        want = _pixels(host / f"host-{i}.png")
        assert want.shape == (64, 64, 3) and want.std() > 10  # a picture, not a blank
        assert not np.array_equal(want, _pixels(host / f"other-seed-{i}.png"))  # the comparison can fail
        assert np.array_equal(_pixels(host / f"host-on-container-export-{i}.png"), want)
        for written in (out / f"c-{i}.png", out / f"cc-{i}.png"):
            assert written.stat().st_uid == UID
            assert np.array_equal(_pixels(written), want), written.name
        assert (mine / f"u-{i}.png").stat().st_uid == 4242
        assert np.array_equal(_pixels(mine / f"u-{i}.png"), want)


def test_vqdeploy_cpp_in_the_container_gives_vqdeploy_runs_images(image, demo_export: Path, tmp_path: Path) -> None:
    """The C++ runtime the cpp-cpu stage built: the install prefix (binary on PATH, library, headers, CMake
    package on CMAKE_PREFIX_PATH), every library it needs found in the final image, which has no compiler; then
    `vqdeploy-cpp run` as the image's user writes what `vqdeploy run` writes in the same image for the same sketch,
    seed and sample count (both ONNX Runtime on the CPU, the same libonnxruntime), and another seed differs."""
    podman, _ = image
    probe = _ok(podman.run("--entrypoint", "bash", TAG, "-c", f"""
        command -v vqdeploy-cpp; echo "CMAKE_PREFIX_PATH=$CMAKE_PREFIX_PATH"
        ls {CPP_PREFIX}/lib/cmake/vqdeploy_runtime {CPP_PREFIX}/include/vqdeploy {CPP_PREFIX}/lib
        readlink -f {CPP_PREFIX}/lib/libonnxruntime.so.1
        ldd {CPP_PREFIX}/bin/vqdeploy-cpp
        echo "packages: $(cat {CPP_PREFIX}/share/vqdeploy_runtime/debian-packages)"
        for tool in c++ g++ gcc cc cmake make; do command -v "$tool" && echo "found a build tool: $tool"; done
        exit 0""")).stdout
    assert f"{CPP_PREFIX}/bin/vqdeploy-cpp\n" in probe and f"CMAKE_PREFIX_PATH={CPP_PREFIX}\n" in probe, probe
    for name in ("vqdeploy_runtimeConfig.cmake", "vqdeploy_runtimeConfigVersion.cmake", "vqdeploy_runtimeTargets.cmake",
                 "pipeline.hpp", "libonnxruntime_providers_shared.so"):
        assert f"\n{name}\n" in probe, (name, probe)
    # the SONAME link leads to the venv's onnxruntime wheel, the library `vqdeploy run` uses
    assert "/opt/vqdeploy/lib/python3." in probe and "/site-packages/onnxruntime/capi/libonnxruntime.so.1." in probe
    assert "not found" not in probe, probe
    found = {parts[0]: os.path.normpath(parts[2]) for parts in (line.split() for line in probe.splitlines())
             if len(parts) >= 3 and parts[1] == "=>"}
    assert found["libvqdeploy_runtime.so.0"] == f"{CPP_PREFIX}/lib/libvqdeploy_runtime.so.0", found
    assert found["libonnxruntime.so.1"] == f"{CPP_PREFIX}/lib/libonnxruntime.so.1", found
    assert "libpng16" in probe.split("packages:")[1], probe  # what the base image lacked
    assert "found a build tool" not in probe, probe

    out = _writable_by(tmp_path / "out", UID)
    volumes = {DEMO / "sketches": "/sketches:ro", out: "/out", demo_export: "/artifacts:ro"}
    run = ["run", f"/sketches/{SKETCH}", "--artifacts", "/artifacts"]
    _ok(podman.run(TAG, *run, *SETTINGS, "--out", "/out/py.png", volumes=volumes))
    t = time.perf_counter()
    _ok(podman.run("--entrypoint", "vqdeploy-cpp", TAG, *run, *SETTINGS, "--out", "/out/cpp.png", volumes=volumes))
    print(f"vqdeploy-cpp run in the container: {time.perf_counter() - t:.1f} s")
    _ok(podman.run("--entrypoint", "vqdeploy-cpp", TAG, *run, "--num-samples", "2", "--seed", "6", "--out",
                   "/out/other.png", volumes=volumes))
    for i in range(2):
        want = _pixels(out / f"py-{i}.png")
        assert want.shape == (64, 64, 3) and want.std() > 10  # a picture, not a blank
        assert (out / f"cpp-{i}.png").stat().st_uid == UID
        assert np.array_equal(_pixels(out / f"cpp-{i}.png"), want), f"cpp-{i}.png"
        assert not np.array_equal(_pixels(out / f"other-{i}.png"), want)  # the comparison can fail
