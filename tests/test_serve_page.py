"""The sketch pad page in a real browser (Debian's chromium driven by Playwright): draw strokes with the
mouse and a finger, use the keyboard, generate, see the progress and the images arrive."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("starlette")
sync_api = pytest.importorskip("playwright.sync_api")

from serve_support import running  # noqa: E402

from vqdeploy.runtime.pipeline import Pipeline  # noqa: E402
from vqdeploy.serve.app import create_app  # noqa: E402

CHROMIUM = os.environ.get("VQDEPLOY_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None,
                                reason="no chromium: apt-get install chromium (or set VQDEPLOY_CHROMIUM)")


@pytest.fixture(scope="module")
def browser():
    """One chromium for the module (Playwright's sync API runs one instance per thread)."""
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def page(browser, demo_export: Path):
    with running(create_app(Pipeline.from_artifacts(demo_export, "onnxruntime"))) as base:
        context = browser.new_context(viewport={"width": 900, "height": 720}, has_touch=True)
        page = context.new_page()
        page.goto(base + "/")
        page.wait_for_selector("body[data-ready=true]", timeout=30_000)
        yield page
        context.close()


def dark_pixels(page) -> int:
    return page.evaluate("""() => { const c = document.getElementById('pad');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
        for (let i = 0; i < d.length; i += 4) if (d[i] < 128) n++; return n; }""")


def test_draw_generate_and_see_images(page):
    pad = page.get_by_test_id("pad")
    box = pad.bounding_box()
    assert box["width"] > 100 and dark_pixels(page) == 0
    x0, y0 = box["x"], box["y"]
    page.mouse.move(x0 + 40, y0 + 220)  # a horizon and a house
    page.mouse.down()
    page.mouse.move(x0 + 280, y0 + 220, steps=12)
    page.mouse.up()
    for (ax, ay), (bx, by) in [((100, 220), (100, 140)), ((100, 140), (180, 140)), ((180, 140), (180, 220))]:
        page.mouse.move(x0 + ax, y0 + ay)
        page.mouse.down()
        page.mouse.move(x0 + bx, y0 + by, steps=8)
        page.mouse.up()
    drawn = dark_pixels(page)
    assert drawn > 500
    page.touchscreen.tap(x0 + 260, y0 + 60)  # a finger makes a dot too
    assert dark_pixels(page) > drawn
    page.fill("#num_samples", "3")
    page.fill("#seed", "12")
    page.get_by_test_id("generate").click()
    result = page.get_by_test_id("result").first
    result.wait_for(timeout=60_000)
    images = result.locator("img")
    assert images.count() == 3
    page.wait_for_function("() => [...document.querySelectorAll('[data-testid=result] img')].every("
                           "i => i.complete && i.naturalWidth === 64)", timeout=10_000)
    assert page.eval_on_selector("#progress", "p => p.value === p.max && p.max === 3 * 64")
    assert "seed 12" in result.inner_text()
    shot = os.environ.get("VQDEPLOY_SCREENSHOT")
    if shot:
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=shot, type="png", full_page=True)


def test_four_samples_are_laid_out_two_by_two(page):
    """As `vqdeploy run --grid` lays them out (issue 26 item 12: they came as a row of 3 and one below)."""
    before = page.get_by_test_id("result").count()
    page.fill("#num_samples", "4")
    page.get_by_test_id("generate").click()
    page.wait_for_function(f"() => document.querySelectorAll('[data-testid=result]').length > {before}",
                           timeout=60_000)
    boxes = [img.bounding_box() for img in page.get_by_test_id("result").last.locator("img").all()]
    assert len(boxes) == 4
    columns = sorted({round(b["x"]) for b in boxes})
    rows = sorted({round(b["y"]) for b in boxes})
    assert len(columns) == 2 and len(rows) == 2, boxes


def test_the_page_has_an_icon_and_no_request_fails(browser, demo_export: Path):
    """Every request a page load makes succeeds: /favicon.ico included (it was a 404)."""
    with running(create_app(Pipeline.from_artifacts(demo_export, "onnxruntime"))) as base:
        page = browser.new_page()
        statuses: list[tuple[str, int]] = []
        page.on("response", lambda r: statuses.append((r.url, r.status)))
        page.goto(base + "/")
        page.wait_for_selector("body[data-ready=true]", timeout=30_000)
        icon = page.request.get(base + "/favicon.ico")
        assert icon.status == 200 and icon.headers["content-type"].startswith("image/svg+xml")
        assert b"<svg" in icon.body()
        page.wait_for_timeout(500)  # the browser asks for the icon after the load
        assert [s for s in statuses if s[1] >= 400] == [], statuses
        page.close()


def test_keyboard_tools_and_generate(page):
    page.get_by_test_id("pad").focus()
    page.keyboard.press("e")
    assert page.get_attribute("#eraser", "aria-pressed") == "true"
    page.keyboard.press("b")
    assert page.get_attribute("#brush", "aria-pressed") == "true"
    page.keyboard.press("c")
    assert dark_pixels(page) == 0
    before = page.get_by_test_id("result").count()
    page.focus("#seed")
    page.keyboard.press("Control+Enter")
    page.wait_for_function(f"() => document.querySelectorAll('[data-testid=result]').length > {before}",
                           timeout=60_000)


def test_bad_input_is_shown_and_the_page_keeps_working(page):
    page.fill("#seed", str(2**63))  # past the server's limit (the browser checks only min=0)
    page.get_by_test_id("generate").click()
    page.wait_for_function("() => document.getElementById('status').classList.contains('error')", timeout=30_000)
    assert page.inner_text("#status").startswith("seed:")
    page.fill("#seed", "1")
    page.fill("#top_k", "100000")  # over the vocabulary: the browser refuses the form, the page says why
    page.get_by_test_id("generate").click()
    page.wait_for_function("() => document.getElementById('status').textContent.startsWith('top_k:')",
                           timeout=10_000)
    page.fill("#top_k", "100")
    page.get_by_test_id("generate").click()
    page.wait_for_function("() => document.getElementById('status').textContent.startsWith('done')", timeout=60_000)


@pytest.mark.parametrize("variant", ["class_subsample", "seg"])
def test_class_picker_and_label_map_upload(browser, exported, variant, tmp_path):
    import numpy as np
    from PIL import Image

    _, out, manifest = exported(variant)
    with running(create_app(Pipeline.from_artifacts(out, "onnxruntime"))) as base:
        page = browser.new_page()
        page.goto(base + "/")
        page.wait_for_selector("body[data-ready=true]", timeout=30_000)
        assert not page.is_visible("#pad")
        assert not page.is_visible("#sketch-keys")  # no brush, eraser or clear without a sketch pad
        assert "generate" in page.inner_text("#keys") and "brush" not in page.inner_text("#keys")
        cond = manifest.raw["model"]["conditioning"]
        if variant == "class_subsample":
            assert page.is_visible("#class_id")
            page.fill("#class_id", str(int(cond["n_classes"]) - 1))
        else:
            assert page.is_visible("#label-file")
            res = int(cond["resolution"])
            Image.fromarray(np.full((res, res), 1, np.uint8), "L").save(tmp_path / "labels.png")
            page.set_input_files("#label-file", str(tmp_path / "labels.png"))
        page.fill("#num_samples", "2")
        page.get_by_test_id("generate").click()
        page.wait_for_function("() => document.querySelector('[data-testid=result]') || "
                               "document.getElementById('status').classList.contains('error')", timeout=60_000)
        assert page.get_by_test_id("result").count() == 1, page.inner_text("#status")
        assert page.get_by_test_id("result").first.locator("img").count() == 2
        page.close()
