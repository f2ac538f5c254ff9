"""ONNX graph -> strongly typed TensorRT network.

Strongly typed: every tensor keeps the type the ONNX graph gives it, so an fp16 export builds an
fp16 engine and an fp32 export an fp32 one (TensorRT-RTX only supports this mode; TensorRT 10
does too). The NearestCode custom node carries an ONNX function body that the parser inlines.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vqdeploy.errors import ArtifactError
from vqdeploy.trt.shim import trt

# TensorRT DataType member -> the dtype names the manifest uses
DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT64": "int64", "INT32": "int32",
          "INT8": "int8", "UINT8": "uint8", "BOOL": "bool"}


def dtype_name(dt: trt.DataType) -> str:
    return DTYPES.get(dt.name, dt.name.lower())


def parser_error_line(parser: trt.OnnxParser, file: str) -> str:
    """The first parser error as one line: node index, name and op (and the function it sits in)."""
    e = parser.get_error(0)
    desc = e.desc().strip()
    if "Plugin not found" in desc:
        desc = "TensorRT has no importer or plugin for this op"
    where = ""
    if e.node() >= 0:
        where = f" at node {e.node()} '{e.node_name()}' (op {e.node_operator()})"
        stack = list(e.local_function_stack())
        if stack:
            where += f" inside function {' > '.join(stack)}"
    more = f" (+{parser.num_errors - 1} more, see build.log)" if parser.num_errors > 1 else ""
    return f"{file}: TensorRT cannot parse the graph{where}: {desc} [{e.code().name}]{more}"


def parse(builder: trt.Builder, parser_logger: trt.ILogger, path: Path) -> tuple[trt.INetworkDefinition, trt.OnnxParser]:
    """A strongly typed network from ``path``; ArtifactError naming the failing node otherwise.

    The parser is returned with the network: the network refers to weights the parser owns.
    """
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, parser_logger)
    ok = parser.parse_from_file(str(path))
    if not ok or parser.num_errors:
        if parser.num_errors:
            raise ArtifactError(parser_error_line(parser, path.name))
        raise ArtifactError(f"{path.name}: TensorRT cannot parse the graph (no parser error given)")
    return network, parser


def dims(d: trt.Dims) -> tuple[int, ...]:
    return tuple(d[i] for i in range(len(d)))


def io(network: trt.INetworkDefinition) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Inputs and outputs of the network: name, dtype, shape (-1 where dynamic)."""
    def desc(t: trt.ITensor) -> dict[str, Any]:
        return {"name": t.name, "dtype": dtype_name(t.dtype), "shape": list(dims(t.shape))}

    return ([desc(network.get_input(i)) for i in range(network.num_inputs)],
            [desc(network.get_output(i)) for i in range(network.num_outputs)])


def check_io(name: str, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]], graph: Mapping[str, Any]) -> None:
    """The parsed network has the tensors (names, dtypes, ranks) the manifest promises."""
    for kind, got in (("inputs", inputs), ("outputs", outputs)):
        want = {t["name"]: t for t in graph[kind]}
        have = {t["name"]: t for t in got}
        if set(want) != set(have):
            raise ArtifactError(f"{name}: the network's {kind} {sorted(have)} differ from the manifest's {sorted(want)}; re-export")
        for n, t in want.items():
            if have[n]["dtype"] != t["dtype"] or len(have[n]["shape"]) != len(t["shape"]):
                raise ArtifactError(f"{name}: {kind[:-1]} '{n}' is {have[n]['dtype']} of rank {len(have[n]['shape'])} in the "
                                    f"network but {t['dtype']} of rank {len(t['shape'])} in the manifest; re-export")
