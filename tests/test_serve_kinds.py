"""`vqdeploy serve` for every kind of conditioning (tiny upstream taming runs): label maps, unconditional
with a permuted token order, class-conditional, coordinates; each answer is what the pipeline gives alone."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("starlette")
httpx = pytest.importorskip("httpx")

from PIL import Image  # noqa: E402
from serve_support import decode_png, running  # noqa: E402

from vqdeploy.images import to_uint8  # noqa: E402
from vqdeploy.runtime.pipeline import Pipeline  # noqa: E402
from vqdeploy.serve.app import create_app  # noqa: E402


@pytest.fixture(scope="module")
def served(exported):
    """``served(variant)``: (base URL, pipeline of the same artifacts for reference), one server per variant."""
    stack = {}

    def get(name: str):
        if name not in stack:
            _, out, _ = exported(name)
            ctx = running(create_app(Pipeline.from_artifacts(out, "onnxruntime")))
            stack[name] = (ctx, ctx.__enter__(), Pipeline.from_artifacts(out, "onnxruntime"))
        return stack[name][1], stack[name][2]

    yield get
    for ctx, _, _ in stack.values():
        ctx.__exit__(None, None, None)


def label_png(pipe: Pipeline, seed: int = 0) -> bytes:
    cond = pipe.cond
    n, res = int(cond.preprocessing["num_classes"]), int(cond.resolution)
    labels = np.random.default_rng(seed).integers(0, n, (res // 8, res // 8)).repeat(8, 0).repeat(8, 1)
    buf = io.BytesIO()
    Image.fromarray(labels.astype(np.uint8), "L").save(buf, "PNG")
    return buf.getvalue()


def same(body: dict, alone) -> None:
    assert np.array_equal(np.array(body["tokens"]), alone.tokens)
    assert np.array_equal(np.stack([decode_png(b) for b in body["images"]]), to_uint8(alone.images)[..., 0]
                          if alone.images.shape[1] == 1 else to_uint8(alone.images))


def test_label_map_model(served, tmp_path: Path):
    url, pipe = served("seg")
    data = label_png(pipe)
    r = httpx.post(f"{url}/v1/generate", files={"condition": ("l.png", data, "image/png")},
                   data={"seed": "4", "num_samples": "2"}, timeout=120)
    assert r.status_code == 200, r.text
    (tmp_path / "l.png").write_bytes(data)
    same(r.json(), pipe(tmp_path / "l.png", num_samples=2, seed=4))
    rgb = io.BytesIO()
    Image.new("RGB", (32, 32)).save(rgb, "PNG")
    bad = httpx.post(f"{url}/v1/generate", files={"condition": ("c.png", rgb.getvalue(), "image/png")}, timeout=60)
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "condition"
    assert "label" in bad.json()["error"]["message"]
    n = int(pipe.cond.preprocessing["num_classes"])
    out_of_range = io.BytesIO()
    Image.new("L", (32, 32), n).save(out_of_range, "PNG")
    bad = httpx.post(f"{url}/v1/generate", files={"condition": ("c.png", out_of_range.getvalue(), "image/png")})
    assert bad.status_code == 400 and "class ids" in bad.json()["error"]["message"]


def test_unconditional_model_with_a_permuted_order(served):
    url, pipe = served("sos_zcurve")
    assert httpx.get(f"{url}/v1/model").json()["model"]["permuter"]["name"] != "Identity"
    r = httpx.post(f"{url}/v1/generate", json={"seed": 6, "num_samples": 3, "top_k": 5}, timeout=120)
    assert r.status_code == 200, r.text
    from vqdeploy.runtime.sampling import SamplingParams

    same(r.json(), pipe(None, num_samples=3, seed=6, params=SamplingParams(top_k=5)))
    bad = httpx.post(f"{url}/v1/generate", files={"condition": ("c.png", b"x", "image/png")}, timeout=60)
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "condition"
    # partial decodes are for raster-order models only: the stream still reports progress and the result
    with httpx.stream("POST", f"{url}/v1/generate/stream", json={"partial_every": 1}, timeout=120) as s:
        text = s.read().decode()
    assert "event: partial" not in text and "event: progress" in text and "event: result" in text


def test_class_model(served):
    url, pipe = served("class_subsample")
    n = int(pipe.cond.n_classes)
    r = httpx.post(f"{url}/v1/generate", data={"class_id": str(n - 1), "seed": "2"}, timeout=120)
    assert r.status_code == 200, r.text
    same(r.json(), pipe(None, class_id=n - 1, seed=2))
    for fields, field in (({}, "class_id"), ({"class_id": str(n)}, "class_id"), ({"class_id": "-1"}, "class_id")):
        bad = httpx.post(f"{url}/v1/generate", data=fields or {"seed": "1"}, timeout=60)
        assert bad.status_code == 400 and bad.json()["error"]["field"] == field, bad.text


def test_coordinate_model(served):
    url, pipe = served("coord_identity")
    r = httpx.post(f"{url}/v1/generate", data={"seed": "1"}, timeout=120)
    assert r.status_code == 200, r.text
    from vqdeploy.conditions.coordinates import coord_map

    res = int(pipe.cond.resolution)
    same(r.json(), pipe(coord_map(res, res), seed=1))
