"""Type stubs for ``tensorrt_rtx_bindings``, generated from the installed wheel (none ship with it).

pybind11-stubgen reads the signatures pybind11 writes into the docstrings. It replaces what is
not valid Python (raw C++ types such as ``nvonnxparser::IParserError``, enum defaults printed as
``<DataType.FLOAT: 0>``) by ``...``. Fixed here so that mypy reads the stubs as intended: ``...``
used as a type (-> ``typing.Any``, and ``ParserError`` for ``OnnxParser.get_error``), ``bool``
(the module defines ``trt.bool``, a DataType, which shadows the builtin), parameters named ``in``
(a keyword) and parameters without a default after one with a default. The stubs are ~500 KB,
hence generated (in about a second) rather than committed.

    python tests/trt_stubs.py typings     # write them for an editor or a manual mypy run
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

MODULE = "tensorrt_rtx_bindings"
_DEF = re.compile(r"^(\s*def \w+\()(.*)(\) -> .*:)$")


def _split_params(params: str) -> list[str]:
    out, depth, cur = [], 0, ""
    for ch in params:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    return out + ([cur] if cur.strip() else [])


def _fix_def(line: str) -> str:
    m = _DEF.match(line)
    if not m:
        return line
    params, seen_default = [], False
    for p in _split_params(m.group(2)):
        p = re.sub(r"^(\s*)in:", r"\1in_:", p)  # a parameter named after a keyword
        if "=" in p:
            seen_default = True
        elif seen_default and not p.strip().startswith("*"):
            p += " = ..."  # pybind11 lists a required parameter after optional ones
        params.append(p)
    return m.group(1) + ",".join(params) + m.group(3)


def _fix_line(line: str) -> str:
    line = _fix_def(line)
    if re.match(r"\s*def get_error\(self, index: typing.SupportsInt\) -> \.\.\.:", line):
        return line.replace("-> ...:", "-> ParserError:")
    line = re.sub(r"-> \.\.\.:$", "-> typing.Any:", line)
    line = re.sub(r"(\w): \.\.\.(?=[,)= ]|$)", r"\1: typing.Any", line)
    if re.match(r"\s*(def |\w+: )", line):
        line = re.sub(r"(?<=[:>\[] )bool\b|(?<=[\[])bool\b", "builtins.bool", line)
    return line


def generate(out: Path) -> Path:
    """Write the stubs under ``out``/tensorrt_rtx_bindings; returns ``out`` (for MYPYPATH)."""
    subprocess.run([sys.executable, "-m", "pybind11_stubgen", MODULE, "-o", str(out)],
                   check=True, capture_output=True, text=True)
    for pyi in (out / MODULE).glob("*.pyi"):
        lines = [_fix_line(line) for line in pyi.read_text().splitlines()]
        at = 1 if lines and lines[0].startswith("from __future__") else 0
        pyi.write_text("\n".join(lines[:at] + ["import builtins"] + lines[at:]) + "\n")
    return out


if __name__ == "__main__":
    print(generate(Path(sys.argv[1] if len(sys.argv) > 1 else "typings")))
