"""Reading JSON that an artifacts directory supplies (manifest.json, engines.json), and a small
typed schema to check it with.

Such files are downloaded, shared or written by other tools, so reading one must not be able to
cost unbounded memory or time (a size cap; deep nesting, NaN/Infinity and 5000-digit numbers are
refused), and the code that indexes them afterwards must not meet a missing key or a wrong type.
A schema is data: ``obj({"vocab_size": integer(1, 2**20), ...})``. A rule checks a value and raises
one ``ArtifactError`` line naming the entry (``manifest.json: model.kind: expected one of ...``).
Keys a schema does not name are allowed (newer writers may add fields) and never inspected.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NoReturn

from vqdeploy.errors import ArtifactError

MAX_JSON_BYTES = 16 << 20

# a rule: (value, where) -> None, or ArtifactError naming ``where`` (e.g. "manifest.json: graphs.decoder.file")
Rule = Callable[[Any, str], None]
_SHA256 = re.compile(r"[0-9a-f]{64}")


def read_json(path: Path, label: str, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """The parsed content of ``path`` (a regular file: the caller resolved it with ``artifact_file``);
    ArtifactError naming ``label`` when it is too large or is not strict JSON."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise ArtifactError(f"{label}: cannot read it ({e.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise ArtifactError(f"{label}: not a regular file")
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ArtifactError(f"{label}: over {max_bytes >> 20} MiB; not a vqdeploy file")
    return parse_json(data, label)


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a JSON number")


def parse_json(data: bytes, label: str) -> Any:
    try:
        return json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except RecursionError:
        raise ArtifactError(f"{label}: unreadable JSON (nested too deeply)") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, NaN/Infinity, an integer over 4300 digits
        raise ArtifactError(f"{label}: unreadable JSON ({str(e).splitlines()[0][:120]})") from None


def fail(where: str, expected: str, value: Any) -> NoReturn:
    raise ArtifactError(f"{where.rstrip(':')}: expected {expected}, got {describe(value)}")


def describe(value: Any) -> str:
    """``value`` in a message: short, whatever it is."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def at(where: str, key: str | int) -> str:
    """``where`` one level down: "manifest.json: model" + "kind" -> "manifest.json: model.kind"; the
    root is the file's label with a colon ("manifest.json:")."""
    if isinstance(key, int):
        return f"{where}[{key}]"
    return f"{where} {key}" if where.endswith(":") else f"{where}.{key}"


# --- rules -----------------------------------------------------------------------------------
def integer(lo: int, hi: int) -> Rule:
    def rule(v: Any, where: str) -> None:
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            what = "a positive integer" if lo == 1 else f"an integer in {lo}..{hi}"
            fail(where, what + (f" (at most {hi})" if lo == 1 else ""), v)

    return rule


def number(lo: float, hi: float) -> Rule:
    def rule(v: Any, where: str) -> None:
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or not lo <= v <= hi:
            fail(where, f"a number in {lo:g}..{hi:g}", v)

    return rule


def string(max_len: int = 256, pattern: str | None = None, what: str | None = None) -> Rule:
    compiled = re.compile(pattern) if pattern else None
    what = what or (f"a string matching {pattern}" if pattern else f"a string of at most {max_len} characters")

    def rule(v: Any, where: str) -> None:
        if not isinstance(v, str) or len(v) > max_len or (compiled and not compiled.fullmatch(v)):
            fail(where, what, v)

    return rule


def one_of(*values: Any) -> Rule:
    def rule(v: Any, where: str) -> None:
        if isinstance(v, bool) or v not in values:
            fail(where, "one of " + ", ".join(json.dumps(x) for x in values), v)

    return rule


def sha256(v: Any, where: str) -> None:
    if not isinstance(v, str) or not _SHA256.fullmatch(v):
        fail(where, "a sha256 (64 lowercase hex digits)", v)


def nullable(inner: Rule) -> Rule:
    def rule(v: Any, where: str) -> None:
        if v is not None:
            inner(v, where)

    return rule


def list_of(item: Rule, lo: int = 0, hi: int = 1024) -> Rule:
    def rule(v: Any, where: str) -> None:
        if not isinstance(v, list) or not lo <= len(v) <= hi:
            fail(where, f"a list of {lo}..{hi} items", v)
        for i, x in enumerate(v):
            item(x, at(where, i))

    return rule


IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def identifier(v: Any, where: str) -> None:
    """A plain identifier (a graph, engine or dim name: it may become part of a file name)."""
    if not isinstance(v, str) or not IDENTIFIER.fullmatch(v):
        raise ArtifactError(f"{where}: refused name {v!r}: expected a plain identifier (letters, digits, _)")


def mapping(value: Rule, key: Rule = identifier, lo: int = 0, hi: int = 64) -> Rule:
    """An object used as a dictionary: every key checked by ``key``, every value by ``value``."""
    def rule(v: Any, where: str) -> None:
        if not isinstance(v, dict) or not lo <= len(v) <= hi:
            fail(where, f"an object of {lo}..{hi} entries", v)
        for k, x in v.items():
            key(k, where)
            value(x, at(where, k))

    return rule


def obj(required: Mapping[str, Rule], optional: Mapping[str, Rule] | None = None) -> Rule:
    """An object with these keys (others are allowed and ignored)."""
    def rule(v: Any, where: str) -> None:
        if not isinstance(v, dict):
            fail(where, "an object", v)
        for k, r in required.items():
            if k not in v:
                raise ArtifactError(f"{at(where, k)}: missing (re-export)")
            r(v[k], at(where, k))
        for k, r in (optional or {}).items():
            if k in v:
                r(v[k], at(where, k))

    return rule


def tagged(key: str, variants: Mapping[str, Rule]) -> Rule:
    """An object whose ``key`` picks the rule for the rest (``conditioning.kind``)."""
    pick = one_of(*variants)

    def rule(v: Any, where: str) -> None:
        obj({key: pick})(v, where)
        variants[v[key]](v, where)

    return rule


def all_of(*rules: Rule) -> Rule:
    def rule(v: Any, where: str) -> None:
        for r in rules:
            r(v, where)

    return rule
