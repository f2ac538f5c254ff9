"""What vqdeploy reads from a user or from an artifacts directory (issue 25).

- Every file is opened without blocking and read only when ``fstat`` says it is a regular file: a FIFO as a
  checkpoint, a config, an input image or a scene file (also the checkpoint an untrusted manifest names, for
  ``parity``, ``bench`` and ``run --backend torch``) fails within a second with one line naming what it is;
  a directory or ``/dev/zero`` as the input image says so (not "not found").
- A checkpoint whose zip is not laid out as torch writes it (re-zipped with Python's ``zipfile``, stored or
  deflated) loads, with the same weights as ``torch.load``: record offsets come from the local headers.
"""

from __future__ import annotations

import json
import os
import struct
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import DEMO_CKPT, copy_artifacts

from vqdeploy.errors import CheckpointError, ConfigError, InputError, VQDeployError

SKETCH = sorted((DEMO_CKPT.parent.parent / "sketches").glob("*.png"))[0]


class Ran:
    def __init__(self, returncode: int, stderr: str) -> None:
        self.returncode, self.stderr = returncode, stderr


def cli(*args: str, timeout: float = 60) -> Ran:
    """The command in-process, in a thread: a blocking open fails the test instead of hanging it."""
    from click.testing import CliRunner

    from vqdeploy.cli import main

    done: list[Any] = []
    thread = threading.Thread(target=lambda: done.append(CliRunner().invoke(main, list(args))), daemon=True)
    thread.start()
    thread.join(timeout)
    assert done, f"vqdeploy {' '.join(args)} blocked"
    res = done[0]
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    return Ran(res.exit_code, res.stderr)


def one_error(proc: Ran, *needles: str) -> str:
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and proc.stderr.strip().splitlines()[-1] == errors[0], proc.stderr
    for n in needles:
        assert n in errors[0], errors[0]
    return errors[0]


def within(seconds: float, fn: Callable[[], Any]) -> BaseException | None:
    """Run ``fn`` in a thread (a blocking open must not hang the test); its exception, checked to come in time."""
    caught: list[BaseException | None] = [None]

    def go() -> None:
        try:
            fn()
        except BaseException as e:  # noqa: BLE001
            caught[0] = e

    t0 = time.perf_counter()
    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "the read blocked"
    assert time.perf_counter() - t0 < seconds, f"took {time.perf_counter() - t0:.2f} s"
    return caught[0]


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "pipe.ckpt"
    os.mkfifo(path)
    return path


def _readers() -> dict[str, tuple[Callable[[Path], Any], type, str]]:
    from vqdeploy.conditions.objects import read_scene_json
    from vqdeploy.images import read_input_file
    from vqdeploy.loading.checkpoint import check_format, read_state_dict
    from vqdeploy.loading.config import read_run_config

    return {
        "check_format": (check_format, CheckpointError, "is a FIFO, not a checkpoint file"),
        "read_state_dict": (read_state_dict, CheckpointError, "is a FIFO, not a checkpoint file"),
        "config": (read_run_config, ConfigError, "is a FIFO, not a config file"),
        "image": (lambda p: read_input_file(p, "input image"), InputError, "is a FIFO, not an input image file"),
        "scene": (read_scene_json, InputError, "is a FIFO, not a scene file"),
    }


@pytest.mark.parametrize("reader", ["check_format", "read_state_dict", "config", "image", "scene"])
def test_a_fifo_fails_within_a_second_saying_what_it_is(fifo: Path, reader: str) -> None:
    fn, error, message = _readers()[reader]
    e = within(1.0, lambda: fn(fifo))
    assert isinstance(e, error) and message in str(e), e


@pytest.mark.parametrize("case", ["inspect", "export_ckpt", "export_config", "run_fifo", "run_dir", "run_dev_zero"])
def test_the_cli_names_what_a_non_file_input_is(demo_export: Path, tmp_path: Path, fifo: Path, case: str) -> None:
    args, expect = {
        "inspect": (["inspect", str(fifo)], "is a FIFO, not a checkpoint file"),
        "export_ckpt": (["export", "--ckpt", str(fifo), "--out", str(tmp_path / "a")], "is a FIFO, not a checkpoint"),
        "export_config": (["export", "--ckpt", str(DEMO_CKPT), "--config", str(fifo), "--out", str(tmp_path / "a")],
                          "is a FIFO, not a config file"),
        "run_fifo": (["run", str(fifo), "--artifacts", str(demo_export)], "is a FIFO, not an input image file"),
        "run_dir": (["run", str(tmp_path), "--artifacts", str(demo_export)], "is a directory, not an input image"),
        "run_dev_zero": (["run", "/dev/zero", "--artifacts", str(demo_export)],
                         "/dev/zero is a character device, not an input image file"),
    }[case]
    if args[0] == "run":
        args += ["--out", str(tmp_path / "s.png")]
    proc = cli(*args, timeout=60)  # a blocking open would run into the timeout
    err = one_error(proc, expect)
    assert "not found" not in err and not (tmp_path / "a").exists() and not (tmp_path / "s.png").exists()


@pytest.mark.parametrize("command", ["parity", "bench", "run_torch"])
def test_a_manifest_naming_a_fifo_checkpoint_fails_at_once(demo_export: Path, tmp_path: Path, fifo: Path,
                                                          command: str) -> None:
    """``source.checkpoint`` of an untrusted manifest is a FIFO: parity, bench's reference and the torch backend
    fail with one line instead of hanging in the open."""
    art = copy_artifacts(demo_export, tmp_path / "art")
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["source"]["checkpoint"] = str(fifo)
    (art / "manifest.json").write_text(json.dumps(manifest))
    args = {"parity": ["parity", "--artifacts", str(art), "--backends", "onnxruntime"],
            "bench": ["bench", "--artifacts", str(art), "--backends", "onnxruntime,torch", "--repeats", "1"],
            "run_torch": ["run", str(SKETCH), "--artifacts", str(art), "--backend", "torch", "--out",
                          str(tmp_path / "s.png")]}[command]
    one_error(cli(*args, timeout=60), f"{fifo} is a FIFO, not a checkpoint file")


# --- the zip layout ------------------------------------------------------------------------------
def _rezip(src: Path, dst: Path, compression: int) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", compression=compression) as zout:
        for zi in zin.infolist():
            zout.writestr(zi.filename, zin.read(zi))


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED], ids=["stored", "deflated"])
def test_a_checkpoint_rezipped_by_python_loads_the_same_weights(tmp_path: Path, compression: int) -> None:
    from vqdeploy.loading.checkpoint import read_state_dict

    ckpt = tmp_path / "last.ckpt"
    _rezip(DEMO_CKPT, ckpt, compression)
    reference = torch.load(ckpt, weights_only=True, map_location="cpu")["state_dict"]
    ours = read_state_dict(ckpt)
    assert sorted(ours) == sorted(reference)
    assert all(torch.equal(ours[k], reference[k]) for k in ours)
    with zipfile.ZipFile(DEMO_CKPT) as z:  # torch's own layout differs: the offsets really moved
        torch_offsets = {zi.filename: zi.header_offset for zi in z.infolist()}
    with zipfile.ZipFile(ckpt) as z:
        assert any(zi.header_offset != torch_offsets[zi.filename] for zi in z.infolist())


def _patch_central_size(path: Path, name: str, size: int) -> None:
    """Set the uncompressed size that the central directory records for ``name``."""
    data = bytearray(path.read_bytes())
    i = 0
    while True:  # the central directory entry of ``name``: signature, ..., size at +24, name length at +28
        i = data.index(b"PK\x01\x02", i)
        n = struct.unpack("<H", data[i + 28:i + 30])[0]
        if data[i + 46:i + 46 + n].decode() == name:
            break
        i += 4
    data[i + 24:i + 28] = struct.pack("<I", size)
    path.write_bytes(bytes(data))


def test_a_deflated_record_claiming_too_much_or_corrupt_is_refused(tmp_path: Path) -> None:
    from vqdeploy.loading.checkpoint import read_state_dict

    ckpt = tmp_path / "last.ckpt"
    _rezip(DEMO_CKPT, ckpt, zipfile.ZIP_DEFLATED)
    with zipfile.ZipFile(ckpt) as z:
        name = max((zi for zi in z.infolist() if "/data/" in zi.filename), key=lambda zi: zi.compress_size).filename
        zi = z.getinfo(name)
    bomb = tmp_path / "bomb.ckpt"
    bomb.write_bytes(ckpt.read_bytes())
    _patch_central_size(bomb, name, 0xFFFF0000)
    with pytest.raises(CheckpointError, match=r"corrupt or truncated checkpoint \(record .* claims 4294901760 bytes"):
        read_state_dict(bomb)
    flipped = tmp_path / "flipped.ckpt"
    data = bytearray(ckpt.read_bytes())
    start = zi.header_offset + 30 + len(zi.filename.encode()) + len(zi.extra)
    data[start + zi.compress_size // 2] ^= 0xFF
    flipped.write_bytes(bytes(data))
    with pytest.raises(VQDeployError, match="corrupt or truncated checkpoint"):
        read_state_dict(flipped)
