"""Exporting one ``GraphSpec`` to an ONNX file with torch's dynamo exporter."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import onnx
import onnx_ir as ir
import torch

from vqdeploy.errors import ConfigError
from vqdeploy.export import DEFAULT_OPSET, attention_onnx, kv_cache_onnx
from vqdeploy.export.nearest_code_onnx import attach_function, translate
from vqdeploy.export.quantize import QuantizedLayer, quantize_model
from vqdeploy.families.graph_spec import GraphSpec
from vqdeploy.models.kv_cache import cached_attention_op, kv_write_op
from vqdeploy.models.nearest_code import nearest_code

_EXTERNAL_DATA_BYTES = 1_800_000_000  # protobuf's 2 GB limit, with margin


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter prints its stages and warns about harmless things; keep our progress readable."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lvl in zip(loggers, levels):
            lg.setLevel(lvl)


# metadata that says how the exporting process ran (absolute source paths, line numbers, FX node dumps, symbolic
# shape names numbered in the order torch.export met them): dropped, so that a graph's bytes (its sha256, the
# engines' cache keys) depend on the model and the versions only, not on the process or the install path
_PLACE_METADATA = ("pkg.torch.onnx.stack_trace", "pkg.torch.onnx.fx_node")
_GRAPH_METADATA = ("pkg.torch.export.ExportedProgram.range_constraints",
                   "pkg.torch.export.ExportedProgram.graph_signature")


def _reproducible(model: ir.Model) -> None:
    for key in _GRAPH_METADATA:
        model.graph.metadata_props.pop(key, None)
    for graph in (model.graph, *model.functions.values()):
        for node in ir.traversal.RecursiveGraphIterator(graph):
            for key in _PLACE_METADATA:
                node.metadata_props.pop(key, None)


def export_graph(spec: GraphSpec, path: Path, opset: int = DEFAULT_OPSET,
                 quantize: str | None = None, block: int | None = None) -> list[QuantizedLayer]:
    """Write ``spec`` to ``path`` (plus ``<path>.data`` for graphs over ~1.8 GB) and check it.
    ``quantize`` (int8/int4): its constant-weight MatMuls become weight-only quantized in blocks of ``block``
    input channels (default: the scheme's, ``export/quantize.py``); returns the layers it quantized."""
    if not 18 <= opset <= 23:
        raise ConfigError(f"--opset {opset} is not supported (18..23)")
    args = spec.sample_inputs()
    with _quiet(), torch.no_grad():
        program = torch.onnx.export(
            spec.module,
            args,
            dynamo=True,
            custom_translation_table={nearest_code._opoverload: translate,
                                      kv_write_op._opoverload: kv_cache_onnx.translate,
                                      cached_attention_op._opoverload: attention_onnx.translate},
            dynamic_shapes=spec.torch_dynamic_shapes(),
            input_names=[t.name for t in spec.inputs],
            output_names=[t.name for t in spec.outputs],
            opset_version=opset,
            optimize=True,
            verbose=False,
        )
    if program is None:  # only with dynamo=False
        raise RuntimeError("torch.onnx.export returned no program")
    attach_function(program.model)
    kv_cache_onnx.to_tensor_scatter(program.model)  # the transformer graph: opset 24
    attention_onnx.to_group_query_attention(program.model)  # its ONNX Runtime twin: GroupQueryAttention
    layers = quantize_model(program.model, quantize, block) if quantize else []
    program.model.graph.name = spec.name
    _reproducible(program.model)
    weight_bytes = sum(p.numel() * p.element_size() for p in spec.module.parameters())
    external = weight_bytes > _EXTERNAL_DATA_BYTES
    program.save(str(path), external_data=external)
    onnx.checker.check_model(str(path), full_check=False)
    return layers
