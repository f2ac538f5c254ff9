"""Reading weights from untrusted checkpoint files without running any of their code.

Lightning checkpoints are pickles that, besides tensors, reference classes of the training
framework (``ModelCheckpoint`` callbacks keyed by class, ``AttributeDict`` hyper-parameters,
OmegaConf containers). We list every global a pickle references *before* loading it
(``torch.serialization.get_unsafe_globals_in_checkpoint`` reads opcodes, it executes nothing),
refuse anything outside a short allowlist of framework namespaces, and let torch's weights-only
unpickler rebuild the allowed ones as inert placeholders: the real classes are never imported,
so no code from the checkpoint or its framework can run.

The pickle is unpickled with ``map_location="meta"``: every tensor comes back without data. Which
zip record holds a storage comes from a skeleton of the archive (``_zip_records``: the small records,
and an empty record per tensor data record), and where that record's bytes start from its local file
header in the real file: a checkpoint re-zipped with Python's ``zipfile`` (other alignment, extra
fields, deflated records) reads like one torch wrote.
Only the model's tensors are then copied into private memory with positioned reads
(``stable_read``): a 4 GB ``last.ckpt`` that is mostly optimizer state costs the model weights
in RAM, once, and a checkpoint that a training job truncates or rewrites while we read it is
reported as such instead of killing the process with SIGBUS (which reading through a memory map
does). Each record read is checked against the zip's CRC-32.

Measured (CPU, warm page cache; 1.05 GB checkpoint = 200 MiB of weights + 800 MiB of optimizer
state; VmHWM of a process whose ``import torch`` alone is 218 MB): this reader peaks at 422 MB
right after loading and 424 MB after touching every weight; torch's memory map (the previous
reader) is at 219 MB after loading and 422 MB once every weight has been touched (the mapped pages
count then). The optimizer state is never read by either. Loading takes 0.2-0.4 s (copy + CRC)
instead of 0.05 s.

Fallback: on a torch without meta-device storage offsets (checked once, ``_meta_offsets``), the
weights are memory-mapped as before and copied through the map (the touched mapped pages count in
RSS until the map is dropped, and no CRC is checked), with the same before/after file identity
check; a truncation *during* that copy can still raise SIGBUS there.

Every exception from parsing the file (torch's unpickler and zip reader, ``zipfile``, ``json``)
becomes ``CheckpointError("... corrupt or truncated ...")``; the code around them is ours and
its exceptions stay bugs.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import re
import struct
import sys
import warnings
import zipfile
import zlib
from collections.abc import Callable, Container
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeGuard

import torch

from vqdeploy.errors import CheckpointError, VQDeployError, shown
from vqdeploy.loading import stable_read

# Namespaces whose objects may appear *beside* the weights in a training checkpoint. They are
# replaced by placeholders (never imported), so even a malicious reference into them is inert.
INERT_NAMESPACES = (
    "pytorch_lightning.",
    "lightning.",
    "lightning_fabric.",
    "omegaconf.",
    "argparse.Namespace",
    "pathlib.",
    "numpy.",
    "collections.defaultdict",
)
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # the first object torch.save pickled before the zip format (torch < 1.6)
MAX_SAFETENSORS_HEADER = 100_000_000  # as the safetensors library
_ZIP_LOCAL = b"PK\x03\x04"
_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
    **{name: getattr(torch, attr) for name, attr in (
        ("U16", "uint16"), ("U32", "uint32"), ("U64", "uint64"), ("F8_E4M3", "float8_e4m3fn"),
        ("F8_E5M2", "float8_e5m2")) if hasattr(torch, attr)},
}

Skip = Callable[[str], Any]


class Inert:
    """Stand-in for a non-tensor object of a training framework. Stores its state, runs nothing."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.args = args

    def __setstate__(self, state: object) -> None:
        self.state = state


def _placeholder(name: str) -> type:
    return type(name.rsplit(".", 1)[-1], (Inert,), {"__qualname__": name, "__module__": "vqdeploy.inert"})


def _is_inert(name: str) -> bool:
    return any(name == ns or name.startswith(ns) for ns in INERT_NAMESPACES)


SHORT_REASON = 200  # characters of a library's reason kept in a one-line error


def _short(e: BaseException) -> str:
    text = str(e)
    m = re.search(r"WeightsUnpickler error: (.*)", text)  # torch wraps the reason in a long how-to
    lines = (m.group(1) if m else text).strip().splitlines()
    return f"{type(e).__name__}: {_whole_sentences(lines[0])}" if lines else type(e).__name__


def _whole_sentences(text: str, limit: int = SHORT_REASON) -> str:
    """The first sentences of ``text`` that fit in ``limit`` characters (never one cut in the middle: torch's
    zip reader appends three sentences of advice to the reason); a first sentence longer than that is cut at
    a word and marked with "..."."""
    if len(text) <= limit:
        return text
    kept = ""
    for sentence in re.split(r"(?<=[.!?])\s+", text):
        if len(kept) + len(sentence) + 1 > limit:
            break
        kept = f"{kept} {sentence}".strip()
    return kept or text[: limit - 4].rsplit(" ", 1)[0] + " ..."


def corrupt(path: Path, e: BaseException | str) -> CheckpointError:
    why = e if isinstance(e, str) else _short(e)
    return CheckpointError(f"{path}: corrupt or truncated checkpoint ({why})")


# --- formats -----------------------------------------------------------------------------------
def is_legacy(head: bytes) -> bool:
    """The pickle of torch's pre-1.6 format: PROTO n, [FRAME], LONG1 of 10 bytes = LEGACY_MAGIC."""
    if len(head) < 2 or head[0] != 0x80:
        return False
    i = 11 if head[2:3] == b"\x95" else 2  # protocol 4+ frames the stream
    return head[i : i + 2] == b"\x8a\x0a" and int.from_bytes(head[i + 2 : i + 12], "little") == LEGACY_MAGIC


def check_format(path: Path) -> None:
    """Refuse a file that is none of the formats we read (a torch zip, a legacy torch pickle, safetensors)
    before anything else looks for its config: "not a checkpoint" says more than "no config"."""
    f, _ = stable_read.open_regular(path)  # without blocking (a FIFO fails at once), a regular file only
    with f:
        try:
            head = f.read(32)
        except OSError as e:
            raise CheckpointError(f"cannot read checkpoint {shown(path)}: {e.strerror or e}") from None
    if not head:
        raise CheckpointError(f"{path}: empty checkpoint file")
    safetensors = len(head) >= 9 and head[8:9] == b"{"  # 8-byte little-endian header length, then JSON
    pickle_ = head[0] == 0x80  # a bare pickle: torch's reader says what is wrong with it
    if head.startswith(b"PK\x03\x04") or pickle_ or safetensors or path.suffix == ".safetensors":
        return
    raise CheckpointError(f"{path}: not a checkpoint (expected a Lightning .ckpt, a torch state_dict file or "
                          ".safetensors)")


def _legacy_error(path: Path) -> CheckpointError:
    return CheckpointError(
        f"{path}: legacy (pre-1.6) torch format, which vqdeploy does not read: re-save it with torch >= 1.6, e.g. "
        f"python -c \"import torch; torch.save(torch.load('old.ckpt', weights_only=False), 'new.ckpt')\" "
        "in a trusted environment (weights_only=False runs the file's pickle: only for files you trust)")


# --- the torch zip format ----------------------------------------------------------------------
def _check_globals(f: BinaryIO, path: Path) -> list[tuple[type, str]]:
    f.seek(0)
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(f)
    except Exception as e:  # noqa: BLE001 - torch's zip reader and opcode scanner on arbitrary bytes
        raise corrupt(path, e) from None
    refused = [n for n in names if not _is_inert(n)]
    if refused:
        raise CheckpointError(
            f"{path}: refused to load: the checkpoint's pickle references {', '.join(sorted(refused))}, "
            "which could run code; only tensors and training-framework metadata are accepted"
        )
    return [(_placeholder(n), n) for n in names]


@dataclass(frozen=True)
class Record:
    """A tensor data record of the zip: where its bytes start (read from its local file header), how it is
    stored, its sizes and CRC-32."""

    name: str
    offset: int  # of the (stored or compressed) data: local header offset + 30 + name + extra field
    size: int  # uncompressed
    compressed: int
    compress_type: int
    crc: int


_DATA_RECORD = re.compile(r"[^/]+/data/[^/]+")
MAX_DEFLATE_RATIO = 1100  # deflate expands at most ~1032x: a record claiming more is not deflate data
MAX_METADATA_BYTES = 1 << 30  # the records beside the tensors' data (the pickle, byteorder, version ...)


def _zip_records(f: BinaryIO, path: Path) -> tuple[dict[str, Record], io.BytesIO, dict[int, str], bytes | None]:
    """The tensor data records by name, with their real data offsets from their local headers (a zip need not
    be laid out as torch writes it: re-zipped with Python's ``zipfile``, with other alignment or extra fields,
    or deflated); a skeleton of the archive for the unpickler, and the ``byteorder`` record.

    The skeleton holds every record except the tensors' data, which become empty records of the same names,
    and no ``.format_version``: torch then reads each storage's offset from its record's local header (instead
    of computing it, assuming torch's own layout), so ``_checkpoint_offset`` of a meta storage is the offset of
    its empty record in the skeleton, mapped back to the record's name here. Nothing but the small records is
    copied."""
    records: dict[str, Record] = {}
    names: dict[int, str] = {}
    skeleton = io.BytesIO()
    byteorder = None
    copied = 0
    try:
        f.seek(0)
        with zipfile.ZipFile(f) as z, zipfile.ZipFile(skeleton, "w", zipfile.ZIP_STORED) as out:
            for zi in z.infolist():
                name = zi.filename
                if _DATA_RECORD.fullmatch(name):
                    if zi.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                        raise corrupt(path, f"record {name[:80]} uses zip compression {zi.compress_type}, which torch "
                                            "does not read")
                    if zi.compress_type == zipfile.ZIP_DEFLATED and \
                            zi.file_size > MAX_DEFLATE_RATIO * zi.compress_size + (1 << 20):
                        raise corrupt(path, f"record {name[:80]} claims {zi.file_size} bytes from {zi.compress_size}")
                    f.seek(zi.header_offset)
                    head = f.read(30)
                    if len(head) < 30 or head[:4] != _ZIP_LOCAL:
                        raise corrupt(path, f"bad zip header for {name[:80]}")
                    name_len, extra_len = struct.unpack("<HH", head[26:30])
                    records[name] = Record(name, zi.header_offset + 30 + name_len + extra_len, zi.file_size,
                                           zi.compress_size, zi.compress_type, zi.CRC)
                    stub = zipfile.ZipInfo(name, zi.date_time)
                    out.writestr(stub, b"")
                    names[stub.header_offset + 30 + len(stub.filename.encode()) + len(stub.extra)] = name
                    continue
                if name.rsplit("/", 1)[-1] == ".format_version":
                    continue
                copied += zi.file_size
                if copied > MAX_METADATA_BYTES:
                    raise corrupt(path, f"over {MAX_METADATA_BYTES >> 20} MiB of records beside the tensors' data")
                data = z.read(zi)
                if name.rsplit("/", 1)[-1] == "byteorder" and len(data) <= 16:
                    byteorder = data
                out.writestr(zipfile.ZipInfo(name, zi.date_time), data)
    except VQDeployError:
        raise
    except Exception as e:  # noqa: BLE001 - zipfile on arbitrary bytes: BadZipFile, ValueError, struct.error, zlib
        raise corrupt(path, e) from None
    return records, skeleton, names, byteorder


@functools.cache
def _meta_offsets() -> bool:
    """Whether this torch loads onto the meta device with each storage's file offset (torch >= 2.6-ish)."""
    buf = io.BytesIO()
    torch.save({"t": torch.zeros(2)}, buf)
    buf.seek(0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t = torch.load(buf, map_location="meta", weights_only=True)["t"]
    except Exception:  # noqa: BLE001 - any failure means: not supported here
        return False
    return t.is_meta and isinstance(getattr(t.untyped_storage(), "_checkpoint_offset", None), int)


def _unpickle(f: BinaryIO | str, path: Path, allowed: list[tuple[type, str]], **kwargs: Any) -> Any:
    if not isinstance(f, str):
        f.seek(0)
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(allowed):  # type: ignore[arg-type]
            warnings.simplefilter("ignore")
            return torch.load(f, weights_only=True, **kwargs)
    except NotImplementedError as e:  # e.g. a quantized or nested tensor, which has no meta form
        raise CheckpointError(f"{path}: unsupported tensor type in the checkpoint ({_short(e)})") from None
    except Exception as e:  # noqa: BLE001 - the weights-only unpickler and zip reader on arbitrary bytes
        raise corrupt(path, e) from None


def _state_dict(obj: Any, path: Path, containers: tuple[str, ...] = ("state_dict",)) -> dict[str, torch.Tensor]:
    for key in containers:  # the first that holds a dict: Lightning's "state_dict"; LlamaGen's "model", "module"
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]  # optimizer states and the rest stay unread on disk
            break
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path}: no state_dict found (expected a Lightning checkpoint or a dict of tensors)")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: the state_dict holds non-tensor entries (e.g. {bad[0]!r})")
    return obj


def _record_bytes(f: BinaryIO, z: zipfile.ZipFile | None, rec: Record, path: Path) -> torch.Tensor:
    """A record's data in private memory, checked against its CRC-32: a stored record by positioned reads, a
    deflated one through ``zipfile`` (which checks the CRC at its end)."""
    if rec.compress_type == zipfile.ZIP_STORED:
        data = stable_read.read_tensor_bytes(f, rec.offset, rec.size, path)
        if zlib.crc32(data.numpy().data) != rec.crc:
            raise corrupt(path, f"CRC mismatch in record {rec.name[:80]}")
        return data
    assert z is not None
    data = torch.empty(rec.size, dtype=torch.uint8)
    view = data.numpy().data.cast("B")
    try:
        with z.open(rec.name) as member:
            got = 0
            while got < rec.size and (k := member.readinto(view[got:])):  # type: ignore[attr-defined]
                got += k
            if got != rec.size or member.read(1):
                raise corrupt(path, f"record {rec.name[:80]} does not hold its {rec.size} bytes")
    except VQDeployError:
        raise
    except Exception as e:  # noqa: BLE001 - zipfile and zlib on arbitrary bytes: BadZipFile (CRC), zlib.error, EOFError
        raise corrupt(path, e) from None
    return data


def _materialize(f: BinaryIO, sd: dict[str, torch.Tensor], records: dict[str, Record], names: dict[int, str],
                 path: Path, skip: Skip) -> dict[str, torch.Tensor]:
    """Meta tensors -> tensors in private memory, each storage read once from its zip record and
    checked against the record's CRC-32 (flipped bits in the weights are an error, not garbage)."""
    storages: dict[str, torch.UntypedStorage] = {}
    out: dict[str, torch.Tensor] = {}
    deflated = any(r.compress_type != zipfile.ZIP_STORED for r in records.values())
    f.seek(0)
    with zipfile.ZipFile(f) if deflated else contextlib.nullcontext() as z:
        for key, t in sd.items():
            if skip(key):
                continue
            if t.layout != torch.strided or t.is_quantized or not t.is_meta:
                raise CheckpointError(f"{path}: unsupported tensor '{key}' ({t.layout}, {t.dtype})")
            offset = getattr(t.untyped_storage(), "_checkpoint_offset", None)
            rec = records.get(names.get(offset, "")) if isinstance(offset, int) else None
            size = rec.size if rec is not None else -1
            need = stable_read.needed_bytes(tuple(t.shape), tuple(t.stride()), int(t.storage_offset()),
                                            t.element_size())
            if rec is None or need < 0 or need > size:
                raise corrupt(path, f"tensor '{key[:80]}' does not match the archive's records")
            if rec.name not in storages:
                storages[rec.name] = _record_bytes(f, z, rec, path).untyped_storage()
            out[key] = torch.empty(0, dtype=t.dtype).set_(storages[rec.name], t.storage_offset(), t.shape, t.stride())
    return out


def _load_zip(f: BinaryIO, path: Path, skip: Skip, containers: tuple[str, ...]) -> dict[str, torch.Tensor]:
    allowed = _check_globals(f, path)
    records, skeleton, names, byteorder = _zip_records(f, path)
    if byteorder not in (None, b"little", b"big"):
        raise corrupt(path, f"unknown byte order {byteorder[:16]!r}")
    if byteorder is not None and byteorder.decode() != sys.byteorder:
        # torch would byteswap every storage (a meta one crashes it); such files are written on
        # big-endian machines, which no taming training ran on
        raise CheckpointError(f"{path}: the checkpoint was written on a {byteorder.decode()}-endian machine; "
                              "re-save it on this one's byte order")
    if not _meta_offsets():
        sd = _state_dict(_unpickle(str(path), path, allowed, map_location="cpu", mmap=True), path, containers)
        try:
            return {k: v.clone() for k, v in sd.items() if not skip(k)}
        except RuntimeError as e:
            raise corrupt(path, e) from None
    sd = _state_dict(_unpickle(skeleton, path, allowed, map_location="meta"), path, containers)
    return _materialize(f, sd, records, names, path, skip)


# --- safetensors -------------------------------------------------------------------------------
def _load_safetensors(f: BinaryIO, path: Path, size: int, skip: Skip) -> dict[str, torch.Tensor]:
    """A .safetensors file read with positioned reads (no memory map): header, then each tensor."""
    if sys.byteorder != "little":
        raise CheckpointError(f"{path}: safetensors files are little-endian; this machine is not")
    head = f.read(8)
    n = int.from_bytes(head, "little") if len(head) == 8 else -1
    if not 0 < n <= min(MAX_SAFETENSORS_HEADER, size - 8):
        raise CheckpointError(f"{path}: corrupt safetensors file (header size {n} of a {size}-byte file)")
    try:
        header = json.loads(f.read(n))
    except (ValueError, RecursionError) as e:
        raise CheckpointError(f"{path}: corrupt safetensors file (header: {_short(e)})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors file (header is not a mapping)")
    base, out = 8 + n, {}
    for name, info in header.items():
        if name == "__metadata__" or skip(name):
            continue
        out[name] = _safetensors_tensor(f, path, name, info, base, size)
    return out


def _naturals(v: Any, lengths: Container[int]) -> TypeGuard[list[int]]:
    return isinstance(v, list) and len(v) in lengths and all(
        isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v)


def _safetensors_tensor(f: BinaryIO, path: Path, name: str, info: Any, base: int, size: int) -> torch.Tensor:
    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"{path}: corrupt safetensors file (tensor '{name[:80]}': {why})")

    if not isinstance(info, dict):
        raise bad("not a mapping")
    dtype = _SAFETENSORS_DTYPES.get(info.get("dtype"))  # type: ignore[arg-type]
    shape, offsets = info.get("shape"), info.get("data_offsets")
    if dtype is None:
        raise bad(f"unsupported dtype {str(info.get('dtype'))[:20]!r}")
    if not _naturals(shape, range(65)) or not _naturals(offsets, (2,)):
        raise bad("shape or data_offsets are not lists of non-negative integers")
    numel = 1
    for s in shape:
        numel *= s
    begin, end = offsets
    if end - begin != numel * dtype.itemsize or base + end > size:
        raise bad(f"data_offsets {offsets} do not hold {shape} {dtype} in a {size}-byte file")
    return stable_read.read_tensor_bytes(f, base + begin, end - begin, path).view(dtype).reshape(shape)


# --- entry point -------------------------------------------------------------------------------
def _load(f: BinaryIO, path: Path, size: int, skip: Skip, containers: tuple[str, ...]) -> dict[str, torch.Tensor]:
    head = f.read(32)
    if path.suffix == ".safetensors":
        f.seek(0)
        return _load_safetensors(f, path, size, skip)
    if head.startswith(_ZIP_LOCAL):
        return _load_zip(f, path, skip, containers)
    if is_legacy(head):
        raise _legacy_error(path)
    raise corrupt(path, "not a torch zip archive")


def read_state_dict(path: str | Path, skip: Skip = lambda key: False,
                    containers: tuple[str, ...] = ("state_dict",)) -> dict[str, torch.Tensor]:
    """The model weights of a Lightning ``.ckpt``, a plain state_dict file or ``.safetensors``, in
    private memory; entries whose key ``skip`` accepts are never read (e.g. training-only weights).
    ``containers``: the keys under which a checkpoint dict may hold the state_dict, tried in order (taming:
    Lightning's ``state_dict``; LlamaGen: ``model``, ``module``, ``state_dict``); else the dict itself."""
    path = Path(path)
    f, before = stable_read.open_regular(path)
    with f:
        if before.size == 0:
            raise CheckpointError(f"{path}: empty checkpoint file")
        try:
            sd = _load(f, path, before.size, skip, containers)
        except CheckpointError:
            stable_read.check_unchanged(f, path, before)  # a file that changed explains any error best
            raise
        stable_read.check_unchanged(f, path, before)
    if not sd:
        raise CheckpointError(f"{path}: no weights in the checkpoint")
    return sd

