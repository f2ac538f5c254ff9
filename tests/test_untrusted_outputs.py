"""Where vqdeploy writes (issue 25): one rule for every output path, OS errors as one line, names escaped.

- The write rule: only a new name or a regular file is replaced. A device node, a FIFO, a socket or a symlink
  at ``run --out``, ``bench --out``, a parity report file or ``engines/engines.json`` is refused with one line
  before any work, and is the same node afterwards (a character device made with ``mknod c 1 3``, what
  ``/dev/null`` is, stands in for it where the test runs as root; the real ``/dev`` is never a target).
- ``--out -`` writes to stdout: ``run`` one PNG (the image ``--out FILE`` gets), ``bench`` the JSON.
- OS errors are one ``error:`` line naming the path and the reason, exit 1: a full and a nearly full file
  system and a read-only one (small tmpfs mounts, where the test may mount: root), a name too long, and
  ENOSPC/EROFS/ENAMETOOLONG/EACCES/EMFILE/EDQUOT raised at the write in-process (everywhere).
- A newline in a file name cannot print a second line: names are escaped in messages.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import shutil
import socket
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import DEMO_CKPT, copy_artifacts
from PIL import Image

from vqdeploy.cli import main

DEMO = Path(__file__).resolve().parent.parent / "models" / "demo"
SKETCH = sorted((DEMO / "sketches").glob("*.png"))[0]
ROOT = os.geteuid() == 0


def cli(*args: str) -> tuple[int, bytes, str]:
    """The command in-process (as the console script runs it, without an interpreter start per case)."""
    res = CliRunner().invoke(main, list(args))
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    return res.exit_code, res.stdout_bytes, res.stderr


def one_error(rc: int, stderr: str, *needles: str) -> str:
    """Exit 1, exactly one ``error:`` line (the last), no traceback, not an internal error."""
    assert rc == 1, stderr
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and stderr.strip().splitlines()[-1] == errors[0], stderr
    assert "internal error" not in errors[0]
    for n in needles:
        assert n in errors[0], errors[0]
    return errors[0]


def identity(path: Path) -> tuple[int, int, int, str]:
    """What a node is: its type, inode, device number and (a symlink) target."""
    st = os.lstat(path)
    return stat.S_IFMT(st.st_mode), st.st_ino, st.st_rdev, os.readlink(path) if stat.S_ISLNK(st.st_mode) else ""


KINDS = {"fifo": "a FIFO", "chardev": "a character device", "socket": "a socket", "symlink": "a symlink"}


def make_node(kind: str, path: Path) -> None:
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "chardev":
        if not ROOT:
            pytest.skip("mknod needs root (the FIFO case holds the same rule)")
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # what /dev/null is
    elif kind == "socket":
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(str(path))
    else:
        sentinel = path.parent / "sentinel.txt"
        sentinel.write_text("sentinel\n")
        path.symlink_to(sentinel)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path (a unix socket's path is at most 108 bytes)."""
    d = Path(tempfile.mkdtemp(prefix="vqo", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.rglob("*.tmp")]


# --- the write rule ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_run_out_never_replaces_a_node(demo_export: Path, short_dir: Path, kind: str) -> None:
    target = short_dir / "s.png"
    make_node(kind, target)
    before = identity(target)
    rc, _, err = cli("run", str(SKETCH), "--artifacts", str(demo_export), "--out", str(target))
    one_error(rc, err, "--out: refused to write", f"it is {KINDS[kind]}", "regular file or a new name")
    assert "sampling" not in err  # refused before any work
    assert identity(target) == before
    if kind == "symlink":
        assert (short_dir / "sentinel.txt").read_text() == "sentinel\n"
    assert not leftovers(short_dir)


@pytest.mark.parametrize("kind", ["fifo", "chardev"])
def test_bench_and_parity_outputs_never_replace_a_node(demo_export: Path, tmp_path: Path, kind: str) -> None:
    make_node(kind, tmp_path / "b.json")
    before = identity(tmp_path / "b.json")
    rc, _, err = cli("bench", "--artifacts", str(demo_export), "--backends", "onnxruntime", "--no-reference",
                     "--out", str(tmp_path / "b.json"))
    one_error(rc, err, "bench --out: refused to write", f"it is {KINDS[kind]}", "(--out - writes the JSON")
    assert "bench: " not in err and identity(tmp_path / "b.json") == before
    (tmp_path / "p").mkdir()
    make_node(kind, tmp_path / "p" / "report.json")
    before = identity(tmp_path / "p" / "report.json")
    rc, _, err = cli("parity", "--artifacts", str(demo_export), "--backends", "onnxruntime", "--out",
                     str(tmp_path / "p"))
    one_error(rc, err, "parity --out: refused to write", f"it is {KINDS[kind]}")
    assert "parity: " not in err and identity(tmp_path / "p" / "report.json") == before
    assert not leftovers(tmp_path)


@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_build_trt_checks_every_write_target_before_building(demo_export: Path, tmp_path: Path, kind: str) -> None:
    """engines/engines.json a directory (or a FIFO): refused before any engine is built (issue 25, item 9)."""
    pytest.importorskip("tensorrt_rtx_bindings")
    art = copy_artifacts(demo_export, tmp_path / "art")
    (art / "engines").mkdir()
    if kind == "directory":
        (art / "engines" / "engines.json").mkdir()
    else:
        os.mkfifo(art / "engines" / "engines.json")
    rc, _, err = cli("build-trt", "--artifacts", str(art), "--target-cc", "8.6", "--graph", "sampler")
    one_error(rc, err, "engines.json", "it is a directory" if kind == "directory" else "it is a FIFO")
    assert "building" not in err
    assert sorted(p.name for p in (art / "engines").iterdir()) == ["engines.json"]


# --- --out - -------------------------------------------------------------------------------------
def test_run_out_dash_writes_the_png_to_stdout(demo_export: Path, tmp_path: Path) -> None:
    rc, out, err = cli("run", str(SKETCH), "--artifacts", str(demo_export), "--seed", "3", "--num-samples", "2",
                       "--grid", "--out", "-")
    assert rc == 0, err
    assert "wrote the image to stdout" in err and not list(tmp_path.iterdir())
    rc, _, err = cli("run", str(SKETCH), "--artifacts", str(demo_export), "--seed", "3", "--num-samples", "2",
                     "--grid", "--out", str(tmp_path / "g.png"))
    assert rc == 0, err
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(out))), np.asarray(Image.open(tmp_path / "g.png")))
    rc, _, err = cli("run", str(SKETCH), "--artifacts", str(demo_export), "--num-samples", "2", "--out", "-")
    one_error(rc, err, "--out - writes one image to stdout")
    rc, _, err = cli("run", str(SKETCH), "--artifacts", str(demo_export), "--json", "--out", "-")
    one_error(rc, err, "--json and --out - both write to stdout")


def test_bench_out_dash_writes_the_json_to_stdout(demo_export: Path) -> None:
    rc, out, err = cli("bench", "--artifacts", str(demo_export), "--backends", "onnxruntime", "--no-reference",
                       "--repeats", "1", "--out", "-")
    assert rc == 0, err
    result = json.loads(out)
    assert result["num_samples"] == 1 and result["backends"]
    assert not (demo_export / "-").exists() and not (Path.cwd() / "-").exists()


# --- names in messages ---------------------------------------------------------------------------
def test_a_newline_in_a_name_cannot_print_a_second_line(demo_export: Path, tmp_path: Path) -> None:
    fake = tmp_path / "x\nerror: fake.png"
    os.mkfifo(fake)
    rc, _, err = cli("run", str(SKETCH), "--artifacts", str(demo_export), "--out", str(fake))
    line = one_error(rc, err, "refused to write", "\\nerror: fake.png")
    assert len(err.strip().splitlines()) == 1 and line.startswith("error: --out: refused")
    good = tmp_path / "y\nerror: fake.png"
    rc, _, err = cli("run", str(SKETCH), "--artifacts", str(demo_export), "--out", str(good))
    assert rc == 0 and good.is_file(), err
    assert not any(line.startswith("error") for line in err.splitlines()), err
    assert "\\nerror: fake.png" in err  # the "wrote" line names it escaped


# --- OS errors -----------------------------------------------------------------------------------
@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A small tmpfs at ``path`` (skips where it cannot be mounted)."""
    path.mkdir(parents=True, exist_ok=True)
    if not ROOT or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                                  capture_output=True, check=False).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root); the in-process cases hold the same rule")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill_up(fs: Path, leave: int = 0) -> None:
    """Take every block of ``fs`` but ``leave`` bytes."""
    fd = os.open(fs / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        free = os.statvfs(fs).f_bavail * os.statvfs(fs).f_frsize - leave
        with contextlib.suppress(OSError):
            while free > 0:
                free -= os.write(fd, b"\0" * min(free, 65536))
    finally:
        os.close(fd)


@pytest.mark.parametrize("command", ["run", "bench", "parity", "export", "build-trt"])
def test_a_full_disk_is_one_line_before_the_work(demo_export: Path, tmp_path: Path, command: str) -> None:
    """No space left where a command writes: one line naming the place, exit 1, before any work."""
    with tmpfs(tmp_path / "fs", "512k") as fs:
        if command == "build-trt":  # the manifest is all build-trt reads before it checks where it writes
            pytest.importorskip("tensorrt_rtx_bindings")
            (fs / "art").mkdir()
            shutil.copy(demo_export / "manifest.json", fs / "art")
        fill_up(fs)
        assert os.statvfs(fs).f_bavail == 0
        args = {"run": ["run", str(SKETCH), "--artifacts", str(demo_export), "--out", str(fs / "s.png")],
                "bench": ["bench", "--artifacts", str(demo_export), "--backends", "onnxruntime", "--no-reference",
                          "--out", str(fs / "b.json")],
                "parity": ["parity", "--artifacts", str(demo_export), "--backends", "onnxruntime", "--out",
                           str(fs / "p")],
                "export": ["export", "--ckpt", str(DEMO_CKPT), "--out", str(fs / "a"), "--no-parity"],
                "build-trt": ["build-trt", "--artifacts", str(fs / "art"), "--target-cc", "8.6"]}[command]
        rc, _, err = cli(*args)
        one_error(rc, err, str(fs), "No space left on device")
        assert not any(w in err for w in ("sampling", "bench: ", "parity: ", "exporting", "building"))


def test_a_disk_that_fills_during_the_write_is_one_line_and_leaves_the_old_file(demo_export: Path,
                                                                                  tmp_path: Path) -> None:
    with tmpfs(tmp_path / "fs", "256k") as fs:
        (fs / "s.png").write_bytes(b"old")  # a regular file: it may be replaced, and stays if the write fails
        fill_up(fs, leave=4096)  # one block: the check before the work passes, the image (~30 KB) does not fit
        assert os.statvfs(fs).f_bavail == 1
        rc, _, err = cli("run", str(SKETCH), "--artifacts", str(demo_export), "--num-samples", "4", "--grid",
                         "--out", str(fs / "s.png"))
        one_error(rc, err, f"cannot write {fs / 's.png'}: No space left on device")
        assert "sampling" in err  # the disk filled during the write, after the work
        assert (fs / "s.png").read_bytes() == b"old" and not leftovers(fs)


def test_a_read_only_file_system_is_one_line(demo_export: Path, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "fs", "32m") as fs:
        shutil.copytree(demo_export, fs / "art")
        subprocess.run(["mount", "-o", "remount,ro", str(fs)], check=True)
        rc, _, err = cli("run", str(SKETCH), "--artifacts", str(fs / "art"), "--out", str(fs / "s.png"))
        one_error(rc, err, f"--out: cannot write to {fs}", "Read-only file system")
        pytest.importorskip("tensorrt_rtx_bindings")
        rc, _, err = cli("build-trt", "--artifacts", str(fs / "art"), "--target-cc", "8.6")
        one_error(rc, err, f"cannot create {fs / 'art' / 'engines'}: Read-only file system")


def test_a_name_too_long_is_one_line(demo_export: Path, tmp_path: Path) -> None:
    long = "x" * 300
    rc, _, err = cli("run", str(tmp_path / f"{long}.png"), "--artifacts", str(demo_export), "--out",
                     str(tmp_path / "s.png"))
    one_error(rc, err, "cannot read input image", "File name too long")
    rc, _, err = cli("run", str(SKETCH), "--artifacts", str(demo_export), "--out", str(tmp_path / f"{long}.png"))
    one_error(rc, err, f"cannot write {tmp_path / long}", "File name too long")
    assert "sampling" not in err
    rc, _, err = cli("inspect", str(tmp_path / long))
    one_error(rc, err, "File name too long")


ERRNOS = [errno.ENOSPC, errno.EROFS, errno.ENAMETOOLONG, errno.EACCES, errno.EMFILE, errno.EDQUOT]


def test_os_errors_at_the_write_are_one_line(demo_export: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Each errno raised where the image is written (fsync): one line naming the file and the reason, exit 1;
    no temp file is left and the old file stays."""
    fsync = os.fsync
    for code in ERRNOS:
        def fail(fd: int, code: int = code) -> None:
            raise OSError(code, os.strerror(code))

        monkeypatch.setattr(os, "fsync", fail)
        out = tmp_path / f"{code}.png"
        out.write_bytes(b"old")
        res = CliRunner().invoke(main, ["run", str(SKETCH), "--artifacts", str(demo_export), "--out", str(out)])
        monkeypatch.setattr(os, "fsync", fsync)
        assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output
        errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and errors[0].startswith(f"error: cannot write {out}: {os.strerror(code)}"), errors
        assert res.stderr.strip().splitlines()[-1] == errors[0]
        assert out.read_bytes() == b"old" and not leftovers(tmp_path)


def test_an_os_error_anywhere_is_one_line_not_an_internal_error(demo_export: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Too many open files while a backend opens (where no code of ours names the file): still one line, exit 1."""
    import vqdeploy.runtime.run as run_module

    def fail(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE), "/usr/lib/libsomething.so")

    monkeypatch.setattr(run_module, "open_backend", fail)
    res = CliRunner().invoke(main, ["run", str(SKETCH), "--artifacts", str(demo_export), "--out", "/tmp/never.png"])
    assert res.exit_code == 1, res.output
    assert res.stderr.strip().splitlines() == [
        "error: cannot use /usr/lib/libsomething.so: Too many open files (raise the limit (ulimit -n) or close "
        "other programs' files)"]
