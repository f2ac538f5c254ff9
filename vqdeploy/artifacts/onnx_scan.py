"""The external-data references of an ``.onnx`` file, read from its protobuf wire format without ``onnx``.

Importing ``onnx`` to check one field cost ``vqdeploy run`` 1.25 s of its 4 s start on the medium model (issue
24); this reader walks only the messages that can hold a tensor (model -> graph / functions / training info ->
nodes -> attributes -> tensors, sparse tensors, subgraphs) and skips everything else, weights included, by
their length prefix, over a memory map of the file (nothing is copied). Field numbers are ONNX's
(``onnx.proto``); ``tests/test_untrusted_artifacts.py`` checks them against the installed ``onnx`` and this
reader against ``onnx.load`` on crafted graphs.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from pathlib import Path

# message kinds, and for each the length-delimited fields that lead to tensors: field number -> kind
MODEL, GRAPH, NODE, ATTRIBUTE, TENSOR, SPARSE, FUNCTION, TRAINING, ENTRY = range(9)
_CHILDREN: dict[int, dict[int, int]] = {
    MODEL: {7: GRAPH, 25: FUNCTION, 20: TRAINING},
    GRAPH: {1: NODE, 5: TENSOR, 15: SPARSE},
    NODE: {5: ATTRIBUTE},
    ATTRIBUTE: {5: TENSOR, 6: GRAPH, 10: TENSOR, 11: GRAPH, 22: SPARSE, 23: SPARSE},
    SPARSE: {1: TENSOR, 2: TENSOR},
    FUNCTION: {7: NODE},
    TRAINING: {1: GRAPH, 2: GRAPH},
}
_TENSOR_NAME, _TENSOR_EXTERNAL, _TENSOR_LOCATION = 8, 13, 14  # TensorProto
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL
MAX_DEPTH = 64  # graphs nested in attributes; deeper is not a graph anyone exports


class MalformedOnnx(ValueError):
    """Not a protobuf this reader can walk (a loader would refuse it too)."""


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise MalformedOnnx("truncated or overlong varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7


def _fields(buf: memoryview, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, value or payload start, payload end) of each field of a message."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos, end)
            yield number, wire, value, pos
        elif wire == 1:
            pos += 8
            yield number, wire, pos - 8, pos
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            if pos + length > end:
                raise MalformedOnnx("a field runs past its message")
            yield number, wire, pos, pos + length
            pos += length
        elif wire == 5:
            pos += 4
            yield number, wire, pos - 4, pos
        else:
            raise MalformedOnnx(f"wire type {wire}")
    if pos != end:
        raise MalformedOnnx("a field runs past its message")


def _tensor(buf: memoryview, start: int, end: int) -> tuple[str, bool, str | None]:
    """(name, stored outside, its ``location``) of a TensorProto."""
    name, external, location = "", False, None
    for number, wire, a, b in _fields(buf, start, end):
        if number == _TENSOR_NAME and wire == 2:
            name = bytes(buf[a:b]).decode("utf-8", "replace")
        elif number == _TENSOR_LOCATION and wire == 0:
            external = external or a == _EXTERNAL
        elif number == _TENSOR_EXTERNAL and wire == 2:
            external = True
            key = value = None
            for n, w, x, y in _fields(buf, a, b):
                if w == 2 and n in (1, 2):
                    text = bytes(buf[x:y]).decode("utf-8", "replace")
                    key, value = (text, value) if n == 1 else (key, text)
            if key == "location":
                location = value
    return name, external, location


def external_tensors(path: Path) -> list[tuple[str, str | None]]:
    """(tensor name, location) of every tensor of ``path`` stored outside the protobuf; MalformedOnnx when the
    file is not a protobuf this reader can walk."""
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        if size == 0:
            raise MalformedOnnx("empty file")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            buf = memoryview(m)
            try:
                return _walk(buf, size)
            finally:
                buf.release()


def _walk(buf: memoryview, size: int) -> list[tuple[str, str | None]]:
    out: list[tuple[str, str | None]] = []
    pending = [(MODEL, 0, size, 0)]
    while pending:
        kind, start, end, depth = pending.pop()
        if kind == TENSOR:
            name, external, location = _tensor(buf, start, end)
            if external:
                out.append((name, location))
            continue
        if depth > MAX_DEPTH:
            raise MalformedOnnx("nested too deeply")
        children = _CHILDREN[kind]
        for number, wire, a, b in _fields(buf, start, end):
            child = children.get(number)
            if child is not None and wire == 2:
                pending.append((child, a, b, depth + 1))
    return out
