"""The external-data scanner (``artifacts/onnx_scan.py``) reads what ``onnx`` reads, without importing it: the
field numbers are the installed onnx's, and on graphs that keep tensors outside in every place a tensor can be
(initializers, sparse initializers, node attributes, subgraphs, functions) it finds exactly the tensors and
locations that ``onnx.load`` shows. ``run`` imports no onnx to check them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import set_external_data

from vqdeploy.artifacts import onnx_scan


def test_field_numbers_are_onnxs() -> None:
    f = lambda message, name: message.DESCRIPTOR.fields_by_name[name].number  # noqa: E731
    assert onnx_scan._CHILDREN[onnx_scan.MODEL] == {f(onnx.ModelProto, "graph"): onnx_scan.GRAPH,
                                                  f(onnx.ModelProto, "functions"): onnx_scan.FUNCTION,
                                                  f(onnx.ModelProto, "training_info"): onnx_scan.TRAINING}
    assert onnx_scan._CHILDREN[onnx_scan.GRAPH] == {f(onnx.GraphProto, "node"): onnx_scan.NODE,
                                                  f(onnx.GraphProto, "initializer"): onnx_scan.TENSOR,
                                                  f(onnx.GraphProto, "sparse_initializer"): onnx_scan.SPARSE}
    a = onnx.AttributeProto
    assert onnx_scan._CHILDREN[onnx_scan.ATTRIBUTE] == {
        f(a, "t"): onnx_scan.TENSOR, f(a, "g"): onnx_scan.GRAPH, f(a, "tensors"): onnx_scan.TENSOR,
        f(a, "graphs"): onnx_scan.GRAPH, f(a, "sparse_tensor"): onnx_scan.SPARSE, f(a, "sparse_tensors"): onnx_scan.SPARSE}
    assert onnx_scan._CHILDREN[onnx_scan.NODE] == {f(onnx.NodeProto, "attribute"): onnx_scan.ATTRIBUTE}
    assert onnx_scan._CHILDREN[onnx_scan.FUNCTION] == {f(onnx.FunctionProto, "node"): onnx_scan.NODE}
    assert onnx_scan._CHILDREN[onnx_scan.SPARSE] == {f(onnx.SparseTensorProto, "values"): onnx_scan.TENSOR,
                                                   f(onnx.SparseTensorProto, "indices"): onnx_scan.TENSOR}
    assert onnx_scan._CHILDREN[onnx_scan.TRAINING] == {f(onnx.TrainingInfoProto, "initialization"): onnx_scan.GRAPH,
                                                     f(onnx.TrainingInfoProto, "algorithm"): onnx_scan.GRAPH}
    t = TensorProto
    assert (onnx_scan._TENSOR_NAME, onnx_scan._TENSOR_EXTERNAL, onnx_scan._TENSOR_LOCATION) == (
        f(t, "name"), f(t, "external_data"), f(t, "data_location"))
    assert onnx_scan._EXTERNAL == TensorProto.EXTERNAL


def _outside(name: str, location: str) -> TensorProto:
    t = numpy_helper.from_array(np.arange(4, dtype=np.float32), name)
    set_external_data(t, location=location)
    t.ClearField("raw_data")
    return t


def _crafted() -> onnx.ModelProto:
    """A tensor outside in every place one can be, plus ordinary ones (weights inline, a string attribute)."""
    inner = helper.make_graph([helper.make_node("Constant", [], ["c"], value=_outside("in_subgraph", "sub.bin"))],
                              "body", [], [helper.make_tensor_value_info("c", TensorProto.FLOAT, [4])])
    nodes = [helper.make_node("Constant", [], ["k"], value=_outside("in_attribute", "attr.bin")),
             helper.make_node("If", ["cond"], ["y"], then_branch=inner, else_branch=inner),
             helper.make_node("Identity", ["w"], ["z"], doc_string="x" * 300)]
    sparse = helper.make_sparse_tensor(_outside("sparse_values", "sparse.bin"),
                                       numpy_helper.from_array(np.array([0, 2], np.int64), "idx"), [4])
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
                              initializer=[_outside("w", "weights.bin"), numpy_helper.from_array(
                                  np.ones((64, 64), np.float32), "inline")], sparse_initializer=[sparse])
    fn = helper.make_function("custom", "F", ["a"], ["b"], [helper.make_node(
        "Constant", [], ["b"], value=_outside("in_function", "fn.bin"))], [helper.make_opsetid("", 18)])
    return helper.make_model(graph, functions=[fn], opset_imports=[helper.make_opsetid("", 18)])


def _onnx_view(model: onnx.ModelProto) -> set[tuple[str, str | None]]:
    """What onnx's objects say (the walk vqdeploy used before, over onnx.load): every tensor outside."""
    out = set()
    pending = [model.graph, *model.functions]
    while pending:
        g = pending.pop()
        tensors = [*getattr(g, "initializer", ()), *(t for s in getattr(g, "sparse_initializer", ())
                                                     for t in (s.values, s.indices))]
        for node in g.node:
            for a in node.attribute:
                tensors += ([a.t] if a.HasField("t") else []) + list(a.tensors)
                if a.HasField("sparse_tensor"):
                    tensors += [a.sparse_tensor.values, a.sparse_tensor.indices]
                pending += ([a.g] if a.HasField("g") else []) + list(a.graphs)
        for t in tensors:
            if t.data_location == TensorProto.EXTERNAL or len(t.external_data):
                out.add((t.name, next((e.value for e in t.external_data if e.key == "location"), None)))
    return out


def test_finds_what_onnx_finds(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(_crafted(), str(path))
    found = set(onnx_scan.external_tensors(path))
    assert found == {("w", "weights.bin"), ("in_attribute", "attr.bin"), ("in_subgraph", "sub.bin"),
                     ("sparse_values", "sparse.bin"), ("in_function", "fn.bin")}
    assert found == _onnx_view(onnx.load(str(path), load_external_data=False))


def test_real_graphs_and_broken_files(demo_export: Path, tmp_path: Path) -> None:
    for graph in ("encoder", "transformer", "sampler", "decoder"):
        assert onnx_scan.external_tensors(demo_export / f"{graph}.onnx") == []
    data = (demo_export / "decoder.onnx").read_bytes()
    for i, broken in enumerate((b"", data[: len(data) // 2], b"\xff" * 64)):
        (tmp_path / f"b{i}.onnx").write_bytes(broken)
        with pytest.raises(onnx_scan.MalformedOnnx):
            onnx_scan.external_tensors(tmp_path / f"b{i}.onnx")


def test_run_imports_no_onnx(demo_export: Path, tmp_path: Path) -> None:
    """The start of `vqdeploy run` on ONNX Runtime: no onnx (nor torch) module is imported."""
    code = ("import sys; from vqdeploy.cli import main; sys.argv = ['vqdeploy', 'run', sys.argv[1], '--artifacts', "
            "sys.argv[2], '--out', sys.argv[3]]\ntry:\n    main()\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('onnx', 'torch', 'onnxscript')))")
    sketch = Path(__file__).resolve().parent.parent / "models" / "demo" / "sketches" / "07_house-square-circle_horizon.png"
    r = subprocess.run([sys.executable, "-c", code, str(sketch), str(demo_export), str(tmp_path / "s.png")],
                       capture_output=True, text=True, timeout=300)
    assert (tmp_path / "s.png").is_file(), r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]", r.stdout + r.stderr
