"""``vqdeploy run`` / ``parity`` / ``bench`` on the exported upstream-parity models: identical tokens
on every backend for the same seed, greedy samples equal upstream's, and bad input handling."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from vqdeploy.artifacts import Artifacts, read_manifest
from vqdeploy.cli import main
from vqdeploy.conditions.coordinates import coord_map
from vqdeploy.families import load_reference
from vqdeploy.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
from vqdeploy.runtime.backends.torch_backend import TorchBackend
from vqdeploy.runtime.pipeline import Pipeline
from vqdeploy.runtime.sampling import SamplingParams

NET2NET = ("seg", "first_stage", "sos_zcurve", "class_subsample", "coord_identity")


def condition(run, name: str) -> tuple[np.ndarray | None, int | None]:
    """Our pipeline's condition input for a variant, and the class id."""
    if name == "seg":
        return run.c[:1].argmax(1).numpy(), None  # one-hot -> label map
    if name == "first_stage":
        return run.c[:1].numpy(), None
    if name == "coord_identity":
        return coord_map(16, 16), None
    if name == "class_subsample":
        return None, 3
    return None, None


def backends(out: Path, manifest: dict) -> tuple[TorchBackend, OnnxRuntimeBackend]:
    return TorchBackend(load_reference(manifest), manifest), OnnxRuntimeBackend(Artifacts(out, manifest))


@pytest.mark.parametrize("name", NET2NET)
def test_same_seed_same_tokens_on_torch_and_onnxruntime(exported, name: str) -> None:
    run, out, manifest = exported(name)
    cond, class_id = condition(run, name)
    params = SamplingParams(temperature=1.0, top_k=8)
    results = [Pipeline(be, manifest)(cond, num_samples=3, params=params, seed=11, class_id=class_id)
               for be in backends(out, manifest)]
    np.testing.assert_array_equal(results[0].tokens, results[1].tokens)
    assert len({r.tobytes() for r in results[0].tokens}) > 1  # the samples differ from each other
    np.testing.assert_allclose(results[0].images, results[1].images, atol=1e-3)
    other = Pipeline(backends(out, manifest)[1], manifest)(cond, num_samples=3, params=params, seed=12, class_id=class_id)
    assert not np.array_equal(other.tokens, results[0].tokens)  # and the seed matters


@pytest.mark.parametrize("name", NET2NET)
def test_greedy_samples_equal_upstream(exported, name: str) -> None:
    run, out, manifest = exported(name)
    cond, class_id = condition(run, name)
    up = run.model
    with torch.no_grad():
        if name == "class_subsample":
            c_idx = up.encode_to_c(torch.tensor([class_id]))[1]
        elif name == "coord_identity":
            c_idx = up.encode_to_c(torch.from_numpy(cond))[1]
        elif name == "sos_zcurve":
            c_idx = up.encode_to_c(run.x[:1])[1]
        else:
            c_idx = up.encode_to_c(run.c[:1])[1]
        steps = manifest.raw["model"]["tokens"]["image"]
        seq = up.sample(torch.zeros((1, 0), dtype=torch.long), c_idx, steps, sample=False)
        raster = up.permuter(seq, reverse=True).reshape(1, 4, 4).numpy()
    greedy = SamplingParams(top_k=1)
    for be in backends(out, manifest):
        res = Pipeline(be, manifest)(cond, num_samples=1, params=greedy, seed=0, class_id=class_id)
        np.testing.assert_array_equal(res.tokens, raster)


def test_sliding_window_for_larger_grids(exported) -> None:
    _run, out, manifest = exported("coord_identity")
    params = SamplingParams(top_k=8)
    results = [Pipeline(be, manifest)(coord_map(32, 32), num_samples=2, params=params, seed=3)
               for be in backends(out, manifest)]
    assert results[0].sliding_window and results[0].tokens.shape == (2, 8, 8)
    assert results[0].images.shape == (2, 3, 32, 32)
    np.testing.assert_array_equal(results[0].tokens, results[1].tokens)


def test_sliding_window_needs_raster_order(exported) -> None:
    _, out, manifest = exported("sos_zcurve")
    from vqdeploy.errors import InputError

    with pytest.raises(InputError, match="raster-order"):
        Pipeline(backends(out, manifest)[1], manifest)(None, size=(32, 32))


def _cli(*args: str):
    return CliRunner().invoke(main, list(args))


def test_cli_run_writes_images_and_json(exported, tmp_path: Path) -> None:
    run, out, _ = exported("seg")
    label = tmp_path / "seg.png"
    Image.fromarray(run.c[0].argmax(0).numpy().astype(np.uint8), mode="L").save(label)
    r = _cli("run", str(label), "--artifacts", str(out), "--backend", "onnxruntime", "--num-samples", "2",
             "--seed", "4", "--out", str(tmp_path / "s" / "x.png"), "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["backend"] == "onnxruntime" and summary["seed"] == 4 and summary["tokens_per_sample"] == 16
    assert set(summary["timings_s"]) >= {"cond_encoder", "sampling", "decoder"}
    for p in summary["outputs"]:
        assert Image.open(p).size == (16, 16)
    r = _cli("run", str(label), "--artifacts", str(out), "--backend", "torch", "--num-samples", "2", "--seed", "4",
             "--out", str(tmp_path / "t" / "x.png"), "--json")
    assert r.exit_code == 0, r.output
    for a, b in zip(summary["outputs"], json.loads(r.stdout)["outputs"]):
        assert np.abs(np.asarray(Image.open(a), dtype=int) - np.asarray(Image.open(b), dtype=int)).max() <= 1
    r = _cli("run", str(label), "--artifacts", str(out), "--backend", "onnxruntime", "--num-samples", "3", "--grid",
             "--out", str(tmp_path / "g.png"))
    assert r.exit_code == 0 and Image.open(tmp_path / "g.png").size == (32, 32)


def _bomb(path: Path) -> None:
    Image.new("1", (12000, 12000)).save(path)  # 144 MP, a few KB on disk


@pytest.mark.parametrize("case", ["no_artifacts", "rgb_segmentation", "label_range", "bomb", "not_image",
                                  "bad_size", "missing_input", "input_for_class", "class_range", "class_for_segmentation",
                                  "size_not_multiple", "tensorrt_cpu"])
def test_cli_run_bad_input(exported, tmp_path: Path, case: str) -> None:
    _, seg, _ = exported("seg")
    _, cls, _ = exported("class_subsample")
    img = tmp_path / "in.png"
    Image.fromarray(np.zeros((16, 16), np.uint8), mode="L").save(img)
    args = {
        "no_artifacts": [str(img), "--artifacts", str(tmp_path / "nowhere")],
        "rgb_segmentation": [str(_save(tmp_path / "rgb.png", np.zeros((16, 16, 3), np.uint8))), "--artifacts", str(seg)],
        "label_range": [str(_save(tmp_path / "l.png", np.full((16, 16), 9, np.uint8))), "--artifacts", str(seg)],
        "bomb": [str(tmp_path / "bomb.png"), "--artifacts", str(seg)],
        "not_image": [str(tmp_path / "x.png"), "--artifacts", str(seg)],
        "bad_size": [str(img), "--artifacts", str(seg), "--size", "16by16"],
        "missing_input": ["--artifacts", str(seg)],
        "input_for_class": [str(img), "--artifacts", str(cls), "--class", "1"],
        "class_range": ["--artifacts", str(cls), "--class", "10"],
        "class_for_segmentation": [str(img), "--artifacts", str(seg), "--class", "1"],
        "size_not_multiple": [str(img), "--artifacts", str(seg), "--size", "18x18"],
        "tensorrt_cpu": [str(img), "--artifacts", str(seg), "--backend", "tensorrt", "--device", "cpu"],
    }[case]
    if case == "bomb":
        _bomb(tmp_path / "bomb.png")
    if case == "not_image":
        (tmp_path / "x.png").write_bytes(b"\x89PNG garbage")
    out = tmp_path / "out" / "s.png"
    r = _cli("run", *args, "--out", str(out))
    assert r.exit_code != 0
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "internal error" not in errors[0], r.stderr
    assert "Traceback" not in r.output
    assert not out.parent.exists()


def _save(path: Path, arr: np.ndarray) -> Path:
    Image.fromarray(arr).save(path)
    return path


def test_cli_parity_writes_json_and_html(exported, tmp_path: Path) -> None:
    _, out, _ = exported("first_stage")
    r = _cli("parity", "--artifacts", str(out), "--out", str(tmp_path / "p"))
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "p" / "report.json").read_text())
    assert report["passed"]
    rows = {row["backend"]: row for row in report["backends"]}
    assert rows["onnxruntime-cpu"]["sampled_first_diverging_token"] is None
    assert {s["stage"] for s in rows["onnxruntime-cpu"]["stages"]} >= {"encoder", "decoder", "greedy_tokens"}
    html = (tmp_path / "p" / "report.html").read_text()
    for row in report["backends"]:
        for name in row["images"]:
            assert name in html and (tmp_path / "p" / name).is_file()


def test_cli_bench_table_and_json(exported, tmp_path: Path) -> None:
    _, out, _ = exported("class_subsample")
    r = _cli("bench", "--artifacts", str(out), "--repeats", "1", "--out", str(tmp_path / "b.json"))
    assert r.exit_code == 0, r.output
    result = json.loads((tmp_path / "b.json").read_text())
    assert set(result["backends"]) == {"torch-cpu fp32 KV cache", "onnxruntime-cpu fp32",
                                       "onnxruntime-cpu fp32, sampler graph", "upstream sampler, torch-cpu fp32 (no cache)"}
    for row in result["backends"].values():
        assert row["tokens_per_s"] > 0
    # both strategies of the one token loop are timed, each per position in the sequence
    rows = result["backends"]
    assert rows["onnxruntime-cpu fp32"]["sampler"] == "host"
    assert rows["onnxruntime-cpu fp32, sampler graph"]["sampler"] == "graph"
    assert len(rows["onnxruntime-cpu fp32"]["step_ms_at_position"]) >= 2
    # every ratio says what it is relative to
    assert "x upstream: tokens/s over upstream's sampler" in r.stderr and "x torch: over PyTorch eager fp32" in r.stderr
    assert "tokens/s" in r.stderr and result["host_memory_bandwidth_GBps"] > 0
    assert read_manifest(out)  # bench does not touch the artifacts
