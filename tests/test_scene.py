"""Scene synthesis from object layouts (upstream's DummyCondStage + objects builders) against
``../shared/reference/scene_bbox``: a run made with upstream's own code (GitHub head) and its
outputs (builder tokens, z indices, decoded images, teacher-forced logits, greedy samples)."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import copy_artifacts
import torch
import yaml
from click.testing import CliRunner

from vqdeploy.artifacts import Artifacts
from vqdeploy.cli import main
from vqdeploy.conditions import Reading
from vqdeploy.conditions.layout_builder import LayoutBuilder, LayoutObject
from vqdeploy.conditions.objects import ObjectLayout
from vqdeploy.errors import ArtifactError, ConfigError, InputError

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "scene_bbox"
if not REFERENCE.is_dir():  # a worktree beside main: ../shared is the same folder
    REFERENCE = Path("/work/shared/reference/scene_bbox")
pytestmark = pytest.mark.skipif(not REFERENCE.is_dir(), reason="needs ../shared/reference/scene_bbox")


def _cases() -> dict:
    return json.loads((REFERENCE / "builder_cases.json").read_text())


def _builder() -> LayoutBuilder:
    p = _cases()["params"]
    return LayoutBuilder("objects_bbox", p["no_object_classes"], p["no_max_objects"], p["no_tokens"], p["encode_crop"],
                         p["use_group_parameter"], p["use_additional_parameters"])


def _scene(case: dict) -> dict:
    """A builder case as a scene file."""
    objects = [{"category": o["category_no"], "bbox": o["bbox"],
                **{f: o[f] for f in ("is_group_of", "is_occluded", "is_depiction", "is_inside")}}
               for o in case["objects"]]
    return {"objects": objects, **({"crop": case["crop"]} if case["crop"] else {})}


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    from vqdeploy.loading.checkpoint import read_state_dict  # no unpickling of arbitrary objects

    return read_state_dict(REFERENCE / "reference.pt")


@pytest.fixture(scope="module")
def model():
    from vqdeploy.loading.load import load_model

    return load_model(REFERENCE)


@pytest.fixture(scope="module")
def artifacts(scene_export: Path, tmp_path_factory: pytest.TempPathFactory):
    """A private copy of the session's scene export (some tests build engines into it)."""
    from vqdeploy.artifacts import read_manifest

    out = copy_artifacts(scene_export, tmp_path_factory.mktemp("scene") / "art")
    return out, read_manifest(out)


# --- tokens ------------------------------------------------------------------------------------------
def test_builder_tokens_equal_upstreams_for_every_case() -> None:
    layout = ObjectLayout(_builder())
    cases = _cases()["cases"]
    assert len(cases) == 5
    for i, case in enumerate(cases):
        tokens = layout.read(_scene(case)).tokens
        assert tokens.tolist() == [case["tokens"]], f"case {i}"
    # they cover more objects than the model takes and encoded crops; with encode_crop upstream keeps
    # the boxes in image coordinates and no case's crop misses a box (the centre-points test drops one)
    assert max(len(c["objects"]) for c in cases) > 30 and sum(c["crop"] is not None for c in cases) == 2


def test_center_points_builder_follows_upstreams_rule() -> None:
    b = LayoutBuilder("objects_center_points", no_object_classes=5, no_max_objects=2, no_tokens=16,
                      encode_crop=False, use_group_parameter=True)
    assert b.point(2 / 3, 1 / 3) == 6 and b.point(1, 1) == 15  # upstream's tokenize_coordinates docstring
    # group-of adds no_object_classes; centre (0.75, 0.75) -> round(2.25) = 2 on a 4x4 grid; padding = 15
    assert b.build([LayoutObject(2, (0.5, 0.5, 0.5, 0.5), is_group_of=True)]) == [7, 10, 15, 15]
    # round half to even, as Python's round: x = 0.5 * 3 = 1.5 -> 2, y = 0.1666 * 3 = 0.5 -> 0
    assert b.point(0.5, 1 / 6) == 2
    # without encode_crop the box is rescaled into the crop; a box outside it is dropped
    crop = (0.5, 0.5, 0.5, 0.5)
    assert b.build([LayoutObject(1, (0.0, 0.0, 0.2, 0.2)), LayoutObject(3, (0.5, 0.5, 0.25, 0.25))], crop) == \
        [3, b.point(0.25, 0.25), 15, 15]
    # with encode_crop the boxes stay in image coordinates (rescaled into [0,0,1,1], i.e. clamped), the
    # crop's corners follow; a box that only touches the crop's edge (zero area) is dropped
    e = LayoutBuilder("objects_bbox", 5, 2, 16, encode_crop=True, use_group_parameter=False)
    assert e.build([LayoutObject(4, (0.0, 0.0, 0.5, 0.5)), LayoutObject(1, (0.5, 0.5, 0.5, 0.5), is_group_of=True)],
                   (0.5, 0.5, 0.5, 0.5)) == [1, e.point(0.5, 0.5), e.point(1, 1), 15, 15, 15, e.point(0.5, 0.5), 15]


def test_more_objects_than_the_model_takes_warn_and_keep_the_first() -> None:
    layout = ObjectLayout(_builder())
    case = _cases()["cases"][4]
    lines: list[str] = []
    tokens = layout.read(_scene(case), Reading(log=lines.append)).tokens
    assert tokens.tolist() == [case["tokens"]]
    assert lines == [f"warning: the scene has {len(case['objects'])} objects; this model takes 30: the first 30 are "
                     "kept (as upstream)"]


# --- the model against upstream's outputs ---------------------------------------------------------------
def test_model_matches_upstreams_outputs(model, reference) -> None:
    """Encoder indices, decoded images, condition tokens, teacher-forced logits and greedy samples."""
    layout = model.cond_stage_model.layout
    cases = _cases()["cases"]
    c = torch.from_numpy(np.concatenate([layout.read(_scene(cases[1])).tokens, layout.read(_scene(cases[2])).tokens]))
    assert torch.equal(c, reference["c_indices"])
    with torch.no_grad():
        quant, z = model.encode_to_z(reference["x"])
        assert torch.equal(z, reference["z_indices"])
        x_rec = model.decode_to_img(z, quant.shape)
        # measured 1.5e-6 (135 dB): fp32 kernels of another build/thread count, not another computation
        assert float((x_rec - reference["x_rec"]).abs().max()) <= 1e-5
        logits, _ = model.transformer(torch.cat([c, z], dim=1)[:, :-1])
        first8 = logits[:, c.shape[1] - 1 : c.shape[1] + 7]
        # measured 2.4e-6 against logits up to 5.4 (fp32 summation order)
        assert float((first8 - reference["logits_first8"]).abs().max()) <= 1e-5
        from vqdeploy.runtime.backends.torch_backend import TorchTransformer
        from vqdeploy.runtime.decoding import sample_tokens
        from vqdeploy.runtime.sampling import SamplingParams

        assert torch.equal(model.sample(z[:, :0], c, steps=256, sample=False), reference["greedy"])  # upstream's loop
        greedy = torch.from_numpy(sample_tokens(TorchTransformer(model.transformer, torch.device("cpu")), c.numpy(), 256,
                                                SamplingParams(top_k=1), np.zeros((256, c.shape[0]))))  # the runtime's
        assert torch.equal(greedy, reference["greedy"])
        img = model.decode_to_img(greedy, quant.shape)
        assert float((img - reference["greedy_img"]).abs().max()) <= 1e-5  # measured 2.7e-6


# --- deployed -------------------------------------------------------------------------------------------
def test_export_describes_the_builder_and_passes_parity(artifacts) -> None:
    _, manifest = artifacts
    cond = manifest.raw["model"]["conditioning"]
    assert cond["kind"] == "objects" and cond["tokens"] == 92 and "cond_encoder" not in manifest.raw["graphs"]
    assert cond["builder"] == {**cond["builder"], "name": "objects_bbox", "no_object_classes": 183,
                               "no_max_objects": 30, "no_tokens": 8192, "no_sections": 90, "none_token": 8191,
                               "encode_crop": True, "use_group_parameter": True}
    assert "sampler" in manifest.raw["graphs"]  # vocabulary 8192: the sampler graph sorts in rounds
    parity = manifest.raw["parity"]
    stages = {s["stage"]: s for s in parity["stages"]}
    transformer = {"transformer_teacher_forced", "transformer_kv_steps", "greedy_tokens"}
    assert parity["passed"] and set(stages) == {"encoder", "decoder", "sampler_graph", *transformer,
                                                *(f"valid_length/{s}" for s in transformer)}
    assert stages["greedy_tokens"]["metrics"] == {"steps": 256, "identical": True}
    assert stages["valid_length/greedy_tokens"]["metrics"] == {"steps": 256, "identical": True}
    assert stages["sampler_graph"]["metrics"]["differing"] == 0


def test_onnx_graphs_match_upstreams_outputs(artifacts, reference) -> None:
    """The exported graphs under ONNX Runtime against upstream's numbers directly (not only against our torch)."""
    from vqdeploy.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

    out, manifest = artifacts
    ort = OnnxRuntimeBackend(Artifacts(out, manifest))
    z = ort.encode(reference["x"].numpy())
    assert np.array_equal(z.reshape(2, -1), reference["z_indices"].numpy())
    assert float(np.abs(ort.decode(z) - reference["x_rec"].numpy()).max()) <= 1e-5  # measured 2.8e-6
    seq = np.concatenate([reference["c_indices"].numpy(), reference["z_indices"].numpy()], axis=1)
    runner = ort.transformer()
    runner.reset(2)
    logits = runner.forward(seq[:, :-1])[:, 91:99]
    assert float(np.abs(logits - reference["logits_first8"].numpy()).max()) <= 1e-4  # measured 3.3e-6


def test_the_manifests_rule_alone_builds_upstreams_tokens(artifacts) -> None:
    """What an app without Python does: only manifest.json's builder numbers and the rule it states."""
    _, manifest = artifacts
    cond = manifest.raw["model"]["conditioning"]
    b = cond["builder"]
    assert cond["rule"].startswith("S = floor(sqrt(no_tokens))")
    s = b["no_sections"]

    def point(x: float, y: float) -> int:
        return round(y * (s - 1)) * s + round(x * (s - 1))

    for case in _cases()["cases"]:
        cx, cy, cw, ch = case["crop"] or (0.0, 0.0, 1.0, 1.0)
        tokens: list[int] = []
        for o in case["objects"][: b["no_max_objects"]]:
            x0, y0, w, h = o["bbox"]
            if max(0.0, min(x0 + w, cx + cw) - max(x0, cx)) * max(0.0, min(y0 + h, cy + ch) - max(y0, cy)) <= 0:
                continue
            fx, fy, fw, fh = (0.0, 0.0, 1.0, 1.0) if b["encode_crop"] else (cx, cy, cw, ch)
            x0, y0 = min(max((x0 - fx) / fw, 0.0), 1.0), min(max((y0 - fy) / fh, 0.0), 1.0)
            w, h = min(w / fw, 1 - x0), min(h / fh, 1 - y0)
            m = 1 if b["use_group_parameter"] and o["is_group_of"] else 0
            tokens += [o["category_no"] + b["no_object_classes"] * m, point(x0, y0), point(x0 + w, y0 + h)]
        tokens += [b["none_token"]] * (3 * b["no_max_objects"] - len(tokens))
        tokens += [point(cx, cy), point(cx + cw, cy + ch)] if b["encode_crop"] else []
        assert tokens == case["tokens"]


def test_run_gives_identical_tokens_on_torch_and_onnxruntime_and_upstreams_greedy(artifacts, model, reference,
                                                                                    tmp_path: Path) -> None:
    from vqdeploy.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
    from vqdeploy.runtime.backends.torch_backend import TorchBackend
    from vqdeploy.runtime.pipeline import Pipeline
    from vqdeploy.runtime.sampling import SamplingParams

    out, manifest = artifacts
    scene = tmp_path / "scene.json"
    scene.write_text(json.dumps(_scene(_cases()["cases"][1])))
    ort = OnnxRuntimeBackend(Artifacts(out, manifest))
    torch_be = TorchBackend(model, manifest)
    params = SamplingParams(temperature=1.0, top_k=100)
    a = Pipeline(torch_be, manifest)(scene, num_samples=2, params=params, seed=3)
    b = Pipeline(ort, manifest)(scene, num_samples=2, params=params, seed=3)
    g = Pipeline(ort, manifest, sampler="graph")(scene, num_samples=2, params=params, seed=3)
    assert np.array_equal(a.tokens, b.tokens) and np.array_equal(b.tokens, g.tokens)
    # greedy through the whole deployed pipeline = upstream's sample(..., sample=False) for that scene
    greedy = Pipeline(ort, manifest)(scene, num_samples=1, params=SamplingParams(top_k=1), seed=0)
    assert np.array_equal(greedy.tokens.reshape(1, -1), reference["greedy"][:1].numpy())


def test_cli_run_writes_samples_and_the_layout(artifacts, tmp_path: Path) -> None:
    out, _ = artifacts
    scene = tmp_path / "scene.json"
    scene.write_text(json.dumps({"objects": [{"category": 5, "bbox": [0.1, 0.2, 0.5, 0.4], "is_group_of": True}]}))
    res = CliRunner().invoke(main, ["run", str(scene), "--artifacts", str(out), "--backend", "onnxruntime",
                                    "--out", str(tmp_path / "s.png"), "--save-layout"])
    assert res.exit_code == 0, res.output
    from PIL import Image

    layout = np.asarray(Image.open(tmp_path / "s-layout.png"))
    assert layout.shape == (256, 256, 3) and (layout != 255).any()
    assert Image.open(tmp_path / "s.png").size == (32, 32)


def _error(args: list[str]) -> str:
    res = CliRunner().invoke(main, args)
    lines = res.output.strip().splitlines()
    assert res.exit_code != 0 and len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert "internal error" not in lines[0] and "Traceback" not in res.output
    return lines[0]


@pytest.mark.parametrize("content, message", [
    ("{not json", r"unreadable JSON"),
    ({"crop": [0, 0, 1, 1]}, r"missing key 'objects'"),
    ({"objects": [], "camera": 1}, r"unknown key 'camera'"),
    ({"objects": [{"bbox": [0, 0, 0.5, 0.5]}]}, r"objects\[0\]: missing key 'category'"),
    ({"objects": [{"category": 1, "bbox": [0, 0, 0.5, 0.5], "colour": "red"}]}, r"unknown key 'colour'"),
    ({"objects": [{"category": 1, "bbox": [0.8, 0, 0.5, 0.5]}]}, r"outside \[0, 1\]"),
    ({"objects": [{"category": 1, "bbox": [0.1, 0, -0.1, 0.5]}]}, r"negative size"),
    ({"objects": [{"category": 183, "bbox": [0, 0, 0.5, 0.5]}]}, r"unknown category 183: .* 0\.\.182"),
    ({"objects": [{"category": "unicorn", "bbox": [0, 0, 0.5, 0.5]}]},
     r"unknown category name 'unicorn' \(not one of the 171 coco names"),
    ({"objects": [{"category": 1, "bbox": [0, 0, 0.5, 0.5], "is_group_of": 1}]}, r"is_group_of: expected true"),
    ({"objects": [], "crop": [0, 0, 0, 1]}, r"crop: a crop needs a positive size"),
])
def test_bad_scene_files_are_one_error_line(artifacts, tmp_path: Path, content, message: str) -> None:
    import re

    out, _ = artifacts
    scene = tmp_path / "scene.json"
    scene.write_text(content if isinstance(content, str) else json.dumps(content))
    line = _error(["run", str(scene), "--artifacts", str(out), "--backend", "onnxruntime", "--out",
                   str(tmp_path / "x.png")])
    assert re.search(message, line), line
    assert not (tmp_path / "x.png").exists()


def test_an_image_for_a_layout_model_and_a_scene_for_an_image_model(artifacts, tmp_path: Path) -> None:
    from vqdeploy.conditions.registry import CONDITIONS

    out, manifest = artifacts
    image = tmp_path / "sketch.png"
    image.write_bytes(b"\x89PNG")
    assert "not an image: pass a scene JSON" in _error(["run", str(image), "--artifacts", str(out)])
    assert "pass a scene JSON file as INPUT" in _error(["run", "--artifacts", str(out)])
    scene = tmp_path / "scene.json"
    scene.write_text('{"objects": []}')
    image = {"kind": "image", "in_channels": 3, "resolution": 32, "downsample_factor": 4, "latent_grid": [8, 8],
             "vocab_size": 16, "tokens": 64, "preprocessing": {"kind": "rgb"}}
    for entry, what in ((image, "conditioned on an image"), ({"kind": "class", "n_classes": 10, "tokens": 1},
                                                             "class-conditional"),
                        ({"kind": "sos", "sos_token": 0, "tokens": 1}, "unconditional")):
        cond = CONDITIONS[entry["kind"]].from_manifest(entry, "model.conditioning")
        with pytest.raises(InputError, match=f"a scene file is for models conditioned on an object layout; this model "
                                             f"is {what}"):
            cond.read(scene)
    with pytest.raises(InputError, match="--save-layout is for object-layout"):
        from vqdeploy.artifacts import Artifacts
        from vqdeploy.artifacts.manifest import as_manifest
        from vqdeploy.runtime.run import RunOptions, run_pipeline

        data = copy.deepcopy(dict(manifest.raw))
        data["model"]["conditioning"] = {"kind": "class", "n_classes": 4, "tokens": 1}
        data["model"]["tokens"]["cond"] = 1
        run_pipeline(None, Artifacts(out, as_manifest(data)),
                     RunOptions(backend="onnxruntime", out=tmp_path / "y.png", save_layout=True))


def test_coco_category_names_follow_upstreams_numbering(artifacts) -> None:
    """Upstream numbers COCO's categories in the string order of their ids: "1" person, "10" traffic
    light, "100" cardboard, ...; names and numbers give the same tokens."""
    from vqdeploy.conditions.categories import coco_names
    _, manifest = artifacts
    layout = manifest.model.condition
    names = coco_names()
    assert manifest.raw["model"]["conditioning"]["categories"] == names and len(names) == 171
    ids = sorted(str(i) for i in [*range(1, 12), *range(13, 26), 27, 28, *range(31, 45), *range(46, 66), 67, 70,
                                  *range(72, 83), *range(84, 91), *range(92, 183)])
    assert len(ids) == 171 and [names[ids.index(i)] for i in ("1", "10", "100", "24", "92", "182")] == \
        ["person", "traffic light", "cardboard", "zebra", "banner", "wood"]
    by_name = {"objects": [{"category": "zebra", "bbox": [0.1, 0.1, 0.3, 0.3]},
                           {"category": "Sky-Other", "bbox": [0, 0, 1, 0.4], "is_group_of": True}]}
    by_number = {"objects": [{"category": ids.index("24"), "bbox": [0.1, 0.1, 0.3, 0.3]},
                             {"category": ids.index("157"), "bbox": [0, 0, 1, 0.4], "is_group_of": True}]}
    assert np.array_equal(layout.read(by_name).tokens, layout.read(by_number).tokens)
    assert layout.read(by_name).tokens[0, 0] == 98 and layout.read(by_name).tokens[0, 3] == ids.index("157") + 183


def test_inspect_says_what_a_scene_file_holds() -> None:
    res = CliRunner().invoke(main, ["inspect", str(REFERENCE)])
    assert res.exit_code == 0, res.output
    cond = json.loads(res.output)["conditioning"]
    assert cond["kind"] == "objects" and cond["input"].startswith('scene JSON file: {"objects": [{"category": 0..182')


# --- where no_object_classes comes from ----------------------------------------------------------------------
def _config(tmp_path: Path, **data_params) -> Path:
    cfg = yaml.safe_load(next((REFERENCE / "configs").glob("*.yaml")).read_text())
    params = cfg["data"]["params"]["validation"]["params"]
    for k, v in data_params.items():
        if v is None:
            params.pop(k, None)
        else:
            params[k] = v
    path = tmp_path / f"project-{len(list(tmp_path.glob('project-*')))}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_object_classes_from_config_data_set_or_option(tmp_path: Path) -> None:
    from vqdeploy.families.taming.describe import describe
    from vqdeploy.loading.load import load_model

    ckpt = REFERENCE / "checkpoints" / "last.ckpt"
    coco = _config(tmp_path, no_object_classes=None)
    assert describe(load_model(ckpt, coco))["conditioning"]["builder"]["no_object_classes"] == 171  # COCO's count
    allow_list = "taming.data.open_images_helper.top_300_classes_plus_coco_compatibility"
    open_images = _config(tmp_path, no_object_classes=None, category_allow_list_target=allow_list)
    with pytest.raises(ConfigError, match="number of object classes of this objects_bbox model is unknown: .* "
                                          "pass --object-classes N"):
        load_model(ckpt, open_images)
    assert describe(load_model(ckpt, open_images, object_classes=200))["conditioning"]["builder"]["no_object_classes"] \
        == 200
    oi = load_model(ckpt, open_images, object_classes=200).cond_stage_model.layout
    with pytest.raises(InputError, match="this coco model's category numbering is not known .* give category numbers"):
        oi.category("person", "objects[0].category")
    with pytest.raises(ConfigError, match="--object-classes 100 disagrees with the config's no_object_classes 183"):
        load_model(ckpt, object_classes=100)
    with pytest.raises(ConfigError, match="'encode_crop' must be true or false"):
        load_model(ckpt, _config(tmp_path, encode_crop=None))
    res = CliRunner().invoke(main, ["inspect", str(ckpt), "--config", str(open_images)])
    assert res.exit_code == 1 and res.output.count("error:") == 1 and "--object-classes" in res.output


def test_manifest_builder_is_checked(artifacts, tmp_path: Path) -> None:
    from vqdeploy.artifacts import read_manifest

    out, _ = artifacts
    for path, value, message in ((("no_max_objects",), 31, "tokens: 92 is not the builder's 95"),
                                 (("no_tokens",), 100, "classes with their modifiers need tokens up to 365"),
                                 (("encode_crop",), "yes", "encode_crop: expected true or false")):
        art = tmp_path / f"art-{path[0]}"
        shutil.copytree(out, art)
        m = json.loads((art / "manifest.json").read_text())
        m["model"]["conditioning"]["builder"][path[0]] = value
        (art / "manifest.json").write_text(json.dumps(m))
        with pytest.raises(ArtifactError, match=message):
            read_manifest(art)


def test_tensorrt_rtx_builds_every_graph_of_the_scene_model(artifacts, tmp_path: Path) -> None:
    pytest.importorskip("tensorrt_rtx_bindings")
    from vqdeploy.trt.engines import BuildOptions, build_engines

    out, manifest = artifacts
    art = tmp_path / "art"
    shutil.copytree(out, art)
    data = build_engines(art, BuildOptions(target_cc=("8.6",)), echo=lambda m: None)
    assert set(data["engines"]) == set(manifest.raw["graphs"]) - {"transformer_valid_length"} >= {
        "encoder", "transformer", "sampler", "decoder"}


def test_library_takes_a_scene_mapping_or_its_tokens(artifacts) -> None:
    from vqdeploy.runtime.pipeline import Pipeline
    from vqdeploy.runtime.sampling import SamplingParams

    out, _ = artifacts
    pipe = Pipeline.from_artifacts(out, backend="onnxruntime")
    scene = _scene(_cases()["cases"][2])
    tokens = np.array(_cases()["cases"][2]["tokens"])
    a = pipe(scene, num_samples=2, params=SamplingParams(top_k=20), seed=1)
    b = pipe(tokens, num_samples=2, params=SamplingParams(top_k=20), seed=1)
    assert np.array_equal(a.tokens, b.tokens) and a.images.shape == (2, 3, 32, 32)
    for bad in (np.stack([tokens, tokens]), tokens[:-1], tokens.astype(np.float32), np.full(92, 8192)):
        with pytest.raises(InputError):
            pipe(bad)
    with pytest.raises(InputError, match="an object layout: pass a scene file, a scene mapping or tokens, not Image"):
        from PIL import Image

        pipe(Image.new("RGB", (32, 32)))


def test_scene_run_needs_no_torch(artifacts, tmp_path: Path) -> None:
    """The tokens come from the scene file on the host: `run` on ONNX Runtime imports no torch."""
    import subprocess
    import sys

    out, _ = artifacts
    scene = tmp_path / "scene.json"
    scene.write_text(json.dumps(_scene(_cases()["cases"][1])))
    code = ("import sys; sys.modules['torch'] = None\n"
            "from vqdeploy.cli import main\n"
            f"main(['run', {str(scene)!r}, '--artifacts', {str(out)!r}, '--backend', 'onnxruntime', '--sampler', "
            f"'graph', '--save-layout', '--out', {str(tmp_path / 'x.png')!r}])\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "x.png").is_file() and (tmp_path / "x-layout.png").is_file()


def test_serve_takes_a_scene_as_json_or_as_a_file(artifacts) -> None:
    """`serve` for a layout model: the scene as the JSON request's condition object or as the multipart
    file; the same images as the pipeline; bad scenes and a missing scene are one 400 each."""
    pytest.importorskip("starlette")
    httpx = pytest.importorskip("httpx")
    from serve_support import running

    from vqdeploy.runtime.pipeline import Pipeline
    from vqdeploy.serve.app import create_app

    out, _ = artifacts
    scene = {"objects": [{"category": 3, "bbox": [0.1, 0.2, 0.5, 0.4]}, {"category": 17, "bbox": [0.5, 0.5, 0.3, 0.3]}]}
    alone = Pipeline.from_artifacts(out, "onnxruntime")(scene, seed=4)
    with running(create_app(Pipeline.from_artifacts(out, "onnxruntime"))) as url:
        as_json = httpx.post(f"{url}/v1/generate", json={"condition": scene, "seed": 4}, timeout=300)
        as_file = httpx.post(f"{url}/v1/generate", data={"seed": "4"}, timeout=300,
                             files={"condition": ("scene.json", json.dumps(scene).encode(), "application/json")})
        for r in (as_json, as_file):
            assert r.status_code == 200, r.text
            assert r.json()["tokens"] == alone.tokens.tolist()
        for body, match in (({"condition": {"objects": [{"category": 3, "bbox": [0.5, 0.5, 0.9, 0.1]}]}}, "outside"),
                            ({"condition": {"objects": [], "extra": 1}}, "unknown key 'extra'"),
                            ({"seed": 1}, "send the scene as the 'condition'")):
            bad = httpx.post(f"{url}/v1/generate", json=body, timeout=60)
            assert bad.status_code == 400 and bad.json()["error"]["field"] == "condition", bad.text
            assert match in bad.json()["error"]["message"], bad.text


@pytest.mark.parametrize("stated", [True, False, None])
def test_the_data_configs_use_additional_parameters_is_honoured(stated) -> None:
    """A run trained with use_additional_parameters: true (upstream's builder supports it) gets the occluded /
    depiction / inside modifiers in its condition tokens; false or unstated (upstream's default) does not."""
    params = {"no_tokens": 1024, "max_objects_per_image": 4, "encode_crop": False, "use_group_parameter": True,
              "no_object_classes": 20, **({} if stated is None else {"use_additional_parameters": stated})}
    data = {"params": {"validation": {"target": "taming.data.annotated_objects_coco.AnnotatedObjectsCoco",
                                      "params": params}}}
    layout = ObjectLayout.from_config("objects_bbox", data)
    assert layout.builder.use_additional_parameters is bool(stated)
    assert layout.describe()["builder"]["use_additional_parameters"] is bool(stated)
    scene = {"objects": [{"category": 3, "bbox": [0.1, 0.1, 0.5, 0.5], "is_occluded": True, "is_inside": True}]}
    assert layout.read(scene).tokens[0, 0] == (3 + 20 * (2 + 8) if stated else 3)
    assert ObjectLayout.from_manifest(layout.describe()).builder.use_additional_parameters is bool(stated)
