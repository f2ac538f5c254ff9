"""The bundled demo model: a real taming run that loads, exports, passes parity, builds with
TensorRT-RTX and samples the same tokens on torch and ONNX Runtime."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import copy_artifacts
from PIL import Image

import vqdeploy
from vqdeploy.cli import main
from vqdeploy.families.taming.describe import describe

DEMO = Path(__file__).resolve().parent.parent / "models" / "demo"
SKETCHES = sorted((DEMO / "sketches").glob("*.png"))


def test_demo_is_a_small_taming_run() -> None:
    size = sum(p.stat().st_size for p in DEMO.rglob("*") if p.is_file())
    assert size <= 25 * 2**20
    assert (DEMO / "checkpoints" / "last.ckpt").is_file() and list((DEMO / "configs").glob("*-project.yaml"))
    assert len(SKETCHES) >= 5
    info = describe(vqdeploy.load_model(DEMO / "checkpoints" / "last.ckpt"))
    assert info["kind"] == "net2net" and info["conditioning"]["kind"] == "image"
    assert info["conditioning"]["preprocessing"]["kind"] == "grey"
    assert info["tokens"] == {"cond": 64, "image": 64, "steps": 64}


@pytest.fixture(scope="module")
def demo_artifacts(demo_export: Path, tmp_path_factory) -> dict[str, Path]:
    """The session's fp32 demo export (its parity passed) and an fp16 one, parity checked at export."""
    from vqdeploy.artifacts import read_manifest
    from vqdeploy.export.exporter import export

    fp16 = tmp_path_factory.mktemp("demo") / "fp16"
    manifest = export(DEMO / "checkpoints" / "last.ckpt", fp16, precision="fp16", log=lambda m: None)
    assert manifest.raw["parity"]["passed"], manifest.raw["parity"]
    assert read_manifest(demo_export).raw["parity"]["passed"]
    fp32 = copy_artifacts(demo_export, tmp_path_factory.mktemp("demo") / "fp32")  # engines are built into it
    return {"fp32": fp32, "fp16": fp16}


def test_demo_run_same_tokens_on_torch_and_onnxruntime(demo_artifacts, tmp_path: Path) -> None:
    images = {}
    for backend in ("torch", "onnxruntime"):
        out = tmp_path / backend / "s.png"
        r = CliRunner().invoke(main, ["run", str(SKETCHES[0]), "--artifacts", str(demo_artifacts["fp32"]), "--backend",
                                      backend, "--num-samples", "3", "--seed", "7", "--out", str(out), "--json"])
        assert r.exit_code == 0, r.output
        paths = json.loads(r.stdout)["outputs"]
        images[backend] = np.stack([np.asarray(Image.open(p), dtype=int) for p in paths])
    assert images["torch"].shape == (3, 64, 64, 3)
    # identical tokens -> the same decoder input; the decoders differ by float rounding only
    assert np.abs(images["torch"] - images["onnxruntime"]).max() <= 1
    assert len({im.tobytes() for im in images["onnxruntime"]}) == 3


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_demo_graphs_build_with_tensorrt_rtx(demo_artifacts, precision: str) -> None:
    pytest.importorskip("tensorrt_rtx_bindings")
    from vqdeploy.trt.engines import BuildOptions, build_engines

    data = build_engines(demo_artifacts[precision], BuildOptions(target_cc=("8.6",)), echo=lambda m: None)
    assert set(data["engines"]) == {"encoder", "cond_encoder", "transformer", "sampler", "decoder"}
    assert {e["precision"] for e in data["engines"].values()} == {precision}
