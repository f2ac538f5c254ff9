"""``export --quantize int8|int4``: the weight-only quantized transformer graph (blocked
DequantizeLinear -> MatMul), its parity against fp32, the refusal below the quality threshold, ONNX
Runtime's MatMulNBits fusion, the TensorRT-RTX build, and the manifest/bench plumbing."""

from __future__ import annotations

import collections
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from vqdeploy.artifacts import Artifacts, read_manifest
from vqdeploy.cli import main
from vqdeploy.errors import ArtifactError, ConfigError, InputError, ParityError
from vqdeploy.export import quantize as qz
from vqdeploy.export.exporter import export
from vqdeploy.export.manifest import write_manifest
from vqdeploy.files import sha256_file
from vqdeploy.parity import quantized as quantized_parity

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "models" / "demo" / "checkpoints" / "last.ckpt"
QUIET = {"log": lambda m: None}


@pytest.fixture(scope="module")
def demo_q(tmp_path_factory: pytest.TempPathFactory):
    """``demo_q(scheme)``: the demo model exported with ``--quantize scheme`` (parity on), cached."""
    root = tmp_path_factory.mktemp("demo_q")
    cache: dict[str, tuple[Path, dict]] = {}

    def get(scheme: str) -> tuple[Path, dict]:
        if scheme not in cache:
            out = root / scheme
            # int8 without ONNX Runtime's valid-length twin (export --no-valid-length), int4 with it: both kinds
            cache[scheme] = (out, export(DEMO, out, quantize=scheme, valid_length=scheme == "int4", **QUIET))
        return cache[scheme]

    return get


def _stages(manifest: dict) -> dict[str, dict]:
    return {s["stage"]: s for s in manifest.raw["parity"]["stages"]}


# --- the quantizer itself --------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [8, 4])
def test_blocked_round_trip_is_within_half_a_step(bits: int) -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((256, 96)).astype(np.float32) * rng.uniform(0.01, 1, size=(1, 96)).astype(np.float32)
    codes, scales = qz.quantize_blocks(w, bits, 32, clip_search=False)
    assert codes.dtype == np.int8 and scales.shape == (8, 96)
    assert codes.min() >= -(2 ** (bits - 1)) and codes.max() <= 2 ** (bits - 1) - 1
    err = np.abs(qz.dequantize_blocks(codes, scales) - w)
    assert (err <= np.repeat(scales, 32, axis=0) / 2 + 1e-7).all()
    # the clipping search never does worse than max-abs scaling, block by block
    c2, s2 = qz.quantize_blocks(w, bits, 32)
    sq = lambda c, s: ((qz.dequantize_blocks(c, s) - w) ** 2).reshape(8, 32, 96).sum(1)  # noqa: E731
    assert (sq(c2, s2) <= sq(codes, scales) + 1e-9).all()


def test_block_for_falls_back_to_a_divisor_or_skips() -> None:
    assert qz.block_for(1024, 128) == 128
    assert qz.block_for(192, 128) == 64  # the demo's width
    assert qz.block_for(32, 128) == 32
    assert qz.block_for(24, 128) is None  # no power of two >= 16 divides it: left unquantized


# --- export --------------------------------------------------------------------------------------
@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_quantized_export_of_the_demo(demo_q, scheme: str) -> None:
    out, manifest = demo_q(scheme)
    assert manifest.raw == read_manifest(out).raw
    q = manifest.raw["quantization"]
    assert q["scheme"] == scheme and q["block_size"] == qz.DEFAULT_BLOCK[scheme]
    if scheme == "int4":  # ONNX Runtime's twin, quantized alike
        assert q["graphs"] == ["transformer", "transformer_valid_length"]
    else:
        assert q["graphs"] == ["transformer"] and "transformer_valid_length" not in manifest.raw["graphs"]
    assert q["layers"] == 4 * 4 + 1  # per block qkv (packed: families/taming/fused_gpt.py), proj, fc1, fc2; the head
    assert manifest.raw["parity"]["passed"], manifest.raw["parity"]
    stages = _stages(manifest)
    tq = stages["transformer_quantized"]["metrics"]
    assert tq["kl_mean"] <= quantized_parity.QUANTIZED_TOLERANCES[scheme]["kl_mean"]
    assert tq["top1_agreement"] > (0.9 if scheme == "int8" else 0.8)
    assert 0 < stages["greedy_tokens"]["metrics"]["agreement"] <= 1
    assert {"encoder", "decoder", "cond_encoder", "transformer_kv_steps", "sampler_graph"} <= set(stages)
    twin = {"valid_length/transformer_quantized", "valid_length/transformer_kv_steps"}
    assert twin <= set(stages) if scheme == "int4" else not twin & set(stages)

    model = onnx.load(str(out / "transformer.onnx"))
    inits = {i.name: i for i in model.graph.initializer}
    dqs = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert len(dqs) == q["layers"]
    code_type = onnx.TensorProto.INT4 if scheme == "int4" else onnx.TensorProto.INT8
    for n in dqs:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        assert attrs["axis"] == 0 and attrs["block_size"] in (32, 64, 128)
        assert len(n.input) == 2  # symmetric: no zero point (TensorRT takes only zero offsets)
        assert inits[n.input[0]].data_type == code_type
        assert inits[n.input[1]].data_type == onnx.TensorProto.FLOAT  # activations stay fp32
    # no float weight is left on any MatMul; the embeddings (Gather) keep their fp32 tables
    for n in model.graph.node:
        if n.op_type == "MatMul" and n.input[1] in inits:
            pytest.fail(f"MatMul {n.name} still has a constant float weight")
    assert inits["gpt.tok_emb.weight"].data_type == onnx.TensorProto.FLOAT


def test_vqgan_graphs_are_unchanged_and_the_transformer_shrinks(demo_q, exported_demo_fp32) -> None:
    fp32_out, fp32 = exported_demo_fp32
    for scheme in ("int8", "int4"):
        out, manifest = demo_q(scheme)
        for name in ("encoder", "cond_encoder", "decoder", "sampler"):
            assert manifest.raw["graphs"][name]["sha256"] == fp32.raw["graphs"][name]["sha256"], name
        ratio = manifest.raw["graphs"]["transformer"]["bytes"] / fp32.raw["graphs"]["transformer"]["bytes"]
        assert ratio < (0.45 if scheme == "int8" else 0.3), ratio


@pytest.fixture(scope="module")
def exported_demo_fp32(demo_export: Path):
    return demo_export, read_manifest(demo_export)


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_onnxruntime_fuses_every_quantized_matmul(demo_q, scheme: str, tmp_path: Path) -> None:
    """ONNX Runtime's QDQ fusion turns DequantizeLinear -> MatMul into MatMulNBits (the fast kernel);
    without it each step would dequantize the whole weight first."""
    import onnxruntime as ort

    out, manifest = demo_q(scheme)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(out / "transformer.onnx"), opts, providers=["CPUExecutionProvider"])
    ops = collections.Counter(n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node)
    assert ops["MatMulNBits"] == manifest.raw["quantization"]["layers"]
    assert ops["DequantizeLinear"] == 0


def test_fp16_activations_with_int8_weights(runs, tmp_path: Path) -> None:
    run = runs("seg")
    manifest = export(run.ckpt, tmp_path / "seg", precision="fp16", quantize="int8", **QUIET)
    assert manifest.raw["parity"]["passed"], manifest.raw["parity"]
    model = onnx.load(str(tmp_path / "seg" / "transformer.onnx"))
    inits = {i.name: i for i in model.graph.initializer}
    scales = [inits[n.input[1]] for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert scales and all(s.data_type == onnx.TensorProto.FLOAT16 for s in scales)


# --- refusal ---------------------------------------------------------------------------------------
def test_export_refuses_below_the_quality_threshold(runs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = runs("seg")
    monkeypatch.setitem(quantized_parity.QUANTIZED_TOLERANCES, "int4", {"kl_mean": 0.0})
    out = tmp_path / "seg-int4"
    with pytest.raises(ParityError, match="--quantize int4"):
        export(run.ckpt, out, quantize="int4", valid_length=False, **QUIET)
    assert not out.exists()  # nothing installed
    report = json.loads((tmp_path / "seg-int4.parity-failed.json").read_text())
    failed = [s["stage"] for s in report["stages"] if not s["passed"]]
    assert failed == ["transformer_quantized"]


def test_wrong_scales_fail_the_quality_check(demo_q, tmp_path: Path) -> None:
    """A quantized graph whose weights are off (every scale 1.5x: a plausible packing or scale bug)
    fails the threshold, so the check can tell a broken graph from quantization noise."""
    from vqdeploy.families import load_reference
    from vqdeploy.parity.checks import check_backend
    from vqdeploy.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
    from vqdeploy.runtime.backends.torch_backend import TorchBackend

    src, manifest = demo_q("int8")
    art = tmp_path / "broken"
    shutil.copytree(src, art)
    model = onnx.load(str(art / "transformer.onnx"))
    scales = {n.input[1] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    for init in model.graph.initializer:
        if init.name in scales:
            init.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(init) * 1.5, init.name))
    onnx.save(model, str(art / "transformer.onnx"))
    data = json.loads(json.dumps(manifest.raw))
    data["graphs"]["transformer"]["sha256"] = sha256_file(art / "transformer.onnx")
    write_manifest(art, data)
    manifest = read_manifest(art)
    reference = TorchBackend(load_reference(manifest, None), manifest, "cpu")
    reports = {r.stage: r for r in check_backend(reference, OnnxRuntimeBackend(Artifacts(art, manifest)), manifest.model,
                                                 "fp32", greedy_steps=4, quantization="int8")}
    assert not reports["transformer_quantized"].passed, reports["transformer_quantized"].metrics


def test_quantize_block_is_the_graphs_and_the_manifests(runs, tmp_path: Path) -> None:
    """--quantize-block reaches every DequantizeLinear (a layer it does not divide takes the largest power of two
    below that does) and the manifest; without parity: the plumbing is under test, the quality gate above."""
    manifest = export(runs("class_subsample").ckpt, tmp_path / "q", quantize="int4", quantize_block=16, parity=False,
                      valid_length=False, **QUIET)
    assert manifest.raw["quantization"]["block_size"] == 16 and manifest.raw["quantization"]["block_sizes"] == [16]
    model = onnx.load(str(tmp_path / "q" / "transformer.onnx"))
    blocks = {a.i for n in model.graph.node if n.op_type == "DequantizeLinear" for a in n.attribute
              if a.name == "block_size"}
    assert blocks == {16}


# --- bad input -------------------------------------------------------------------------------------
def test_bad_quantize_values_are_one_line(runs, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["export", "--ckpt", str(DEMO), "--out", str(tmp_path / "x"), "--quantize", "int3"])
    assert result.exit_code != 0 and result.output.startswith("error:") and len(result.output.strip().splitlines()) == 1
    with pytest.raises(ConfigError, match="int3"):
        export(DEMO, tmp_path / "y", quantize="int3", **QUIET)
    with pytest.raises(ConfigError, match="VQGAN"):
        export(runs("vq_remap").ckpt, tmp_path / "z", quantize="int8", **QUIET)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists() and not (tmp_path / "z").exists()
    power = "--quantize-block 100: expected a power of two from 16 to 1024"
    for args, message in ((["--quantize", "int4", "--quantize-block", "100"], power),
                          (["--quantize", "int8", "--quantize-block", "2048"], "--quantize-block 2048"),
                          (["--quantize-block", "64"], "--quantize-block needs --quantize int8|int4")):
        result = CliRunner().invoke(main, ["export", "--ckpt", str(DEMO), "--out", str(tmp_path / "b"), *args])
        assert result.exit_code != 0 and result.output.startswith(f"error: {message}"), result.output
        assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "b").exists()


@pytest.mark.parametrize("bad", [{"scheme": "int2"}, {"block_size": 3}, {"graphs": ["decoder"]}, {"weight_bytes": -1}])
def test_manifest_quantization_is_validated(demo_q, tmp_path: Path, bad: dict) -> None:
    src, manifest = demo_q("int4")
    art = tmp_path / "art"
    shutil.copytree(src, art)
    m = json.loads(json.dumps(manifest.raw))
    m["quantization"].update(bad)
    write_manifest(art, m)
    with pytest.raises(ArtifactError, match="quantization"):
        read_manifest(art)


# --- TensorRT-RTX ----------------------------------------------------------------------------------
@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_quantized_transformer_builds_with_tensorrt_rtx(demo_q, scheme: str, tmp_path: Path) -> None:
    """The same graph builds ahead of time with the real TensorRT-RTX builder (no GPU needed)."""
    pytest.importorskip("tensorrt_rtx_bindings")
    from vqdeploy.trt.engines import BuildOptions, build_engines

    src, _ = demo_q(scheme)
    art = tmp_path / "art"
    shutil.copytree(src, art)
    data = build_engines(art, BuildOptions(target_cc=["8.6"], graphs=["transformer"]), echo=lambda m: None)
    engine = art / "engines" / data["engines"]["transformer"]["file"]
    assert engine.stat().st_size > 0


# --- bench -----------------------------------------------------------------------------------------
def test_bench_compares_quantized_exports_side_by_side(demo_q, tmp_path: Path) -> None:
    from vqdeploy.bench.benchmark import run_bench

    int8, m8 = demo_q("int8")
    int4, m4 = demo_q("int4")
    result = run_bench(int8, "onnxruntime", None, 1, 1, False, tmp_path / "bench.json", None, log=lambda m: None,
                       compare=[int4])
    rows = result["backends"]
    # --backends onnxruntime: the deployment's rows only (no torch row, no checkpoint needed)
    assert set(rows) == {"onnxruntime-cpu int8", "onnxruntime-cpu int8, sampler graph",
                         "onnxruntime-cpu int4", "onnxruntime-cpu int4, sampler graph"}
    assert result["transformer_weight_bytes"] == m8.raw["quantization"]["weight_bytes"]
    assert rows["onnxruntime-cpu int4"]["floor_ms"] < rows["onnxruntime-cpu int8"]["floor_ms"]
    assert all(r["tokens_per_s"] > 0 for r in rows.values())
    # another model's artifacts are refused before anything runs
    other = tmp_path / "other"
    shutil.copytree(int4, other)
    m = json.loads(json.dumps(m4.raw))
    m["model_fingerprint"] = "0" * 64
    write_manifest(other, m)
    with pytest.raises(InputError, match="another model"):
        run_bench(int8, "onnxruntime", None, 1, 1, False, tmp_path / "b2.json", None, log=lambda m: None,
                  compare=[other])


def test_bench_rows_of_exports_that_share_a_variant_are_told_apart() -> None:
    """``bench --compare`` of int4 exports with other --quantize-block: a row each (they overwrote each other)."""
    from types import SimpleNamespace as NS

    from vqdeploy.bench.benchmark import variant_names

    def export_(path: str, precision: str = "fp32", block: int | None = None) -> NS:
        q = None if block is None else NS(scheme="int4", block_size=block)
        return NS(path=Path(path), manifest=NS(precision=precision, quantization=q))

    assert variant_names([export_("a"), export_("b", block=32), export_("c", block=128), export_("d", "fp16")]) == \
        ["fp32", "int4 block 32", "int4 block 128", "fp16"]
    assert variant_names([export_("a"), export_("b", block=32)]) == ["fp32", "int4"]  # nothing shared: as before
    assert variant_names([export_("x/a", block=32), export_("y/b", block=32), export_("z/c")]) == \
        ["int4 block 32 (a)", "int4 block 32 (b)", "fp32"]


def test_torch_backend_on_quantized_artifacts_says_it_runs_fp32_weights(demo_q, tmp_path: Path) -> None:
    """`run --backend torch` on int8 artifacts runs the checkpoint (fp32): it says so; ONNX Runtime, which runs
    the int8 graph, has nothing to say (issue 26 item 8)."""
    out, _ = demo_q("int8")
    sketch = str(ROOT / "models" / "demo" / "sketches" / "04_circle_horizon.png")
    note = ("note: the torch backend runs the checkpoint's fp32 weights, not these artifacts' int8 graphs: its images "
            "are the fp32 model's (--backend onnxruntime or tensorrt runs the int8 graphs)")
    for backend, said in (("torch", True), ("onnxruntime", False)):
        r = CliRunner().invoke(main, ["run", sketch, "--artifacts", str(out), "--backend", backend, "--out",
                                      str(tmp_path / f"{backend}.png")])
        assert r.exit_code == 0, r.output
        assert (note in r.stderr) == said, r.stderr
