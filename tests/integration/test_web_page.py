"""The classifier page end to end: headless Chromium uploads a demo image to the real server.

Needs Debian's chromium (`make browser`) and the `playwright` Python package, which drives it
through `executable_path` (no `playwright install`, no download), and axe-core from npm
(`make npm`) for the accessibility checks. Network: loopback only.
"""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline import synthetic
from pipeline.ood_sets import ood_set
from pipeline.serving.app import create_app
from pipeline.serving.classifier import Classifier, load_classifier
from pipeline.serving.uploads import decode_upload
from tests.factories import CLASSES
from tests.ood_releases import make_ood_release
from tests.servers import free_port

AXE = Path(__file__).resolve().parents[2] / "node_modules" / "axe-core" / "axe.min.js"

pytestmark = pytest.mark.slow


def demo_scan() -> np.ndarray:
    """A synthetic malignant-looking scan, 160 x 200 (not square: the overlay must still fit)."""
    image, _mask = synthetic.render_case("malignant", synthetic.case_rng(7, "malignant", 0), 200)
    return image[20:180]


def screenshot() -> np.ndarray:
    """A rendered text-and-buttons screenshot (pipeline.ood_sets' text_ui family)."""
    return ood_set("text_ui", 1, 96, seed=0)[0]


@pytest.fixture(scope="module")
def classifier(tiny_model, tmp_path_factory) -> Classifier:
    """A release with an OOD check (threshold 0.3, version 7) whose OOD threshold lies between
    the demo scan's score and a screenshot's: the untrained 32 px test model cannot tell them
    apart on its own statistics, and the page, not the model, is under test here."""
    import keras

    model = keras.models.load_model(tiny_model[0] / "model.keras")  # a copy: others share it
    dense = model.get_layer("predictions")
    kernel, bias = dense.get_weights()
    # Non-negative class weights on the backbone's non-negative (post-ReLU) features: the heat
    # map of the answered class has evidence to draw. With the untrained kernel as drawn, its
    # one 1 x 1 cell could be negative, the map all zero and the overlay transparent (one CI run).
    dense.set_weights([np.abs(kernel), bias])
    folder = make_ood_release(tmp_path_factory.mktemp("page") / "selected", model)
    scores = [
        load_classifier(folder).predict(x)["decision"]["ood_score"]
        for x in (demo_scan(), screenshot())
    ]
    assert scores[0] < scores[1], scores  # else no threshold separates them
    record = json.loads((folder / "release.json").read_text())
    record["rule"]["ood_threshold"] = float(np.mean(scores))
    record["provenance"]["synthetic_data"] = True  # the page says so
    (folder / "release.json").write_text(json.dumps(record))
    return load_classifier(folder)


@pytest.fixture(scope="module")
def server(classifier):
    """The real uvicorn server on a free loopback port, in a thread; yields its base URL."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(
        create_app(classifier), host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start within 30 s")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def demo_image(tmp_path) -> Path:
    path = tmp_path / "demo scan.png"
    Image.fromarray(demo_scan()).save(path)
    return path


def axe_violations(page) -> list[tuple[str, str, int]]:
    """(rule, impact, elements) of every axe-core violation on the page as it stands."""
    if not AXE.is_file():
        pytest.skip(f"{AXE} missing: run `make npm` (npm ci; make test does)")
    page.evaluate(AXE.read_text(encoding="utf-8"))  # evaluated by the driver: the CSP allows it
    found = page.evaluate("async () => (await axe.run(document)).violations")
    return [(v["id"], v["impact"], len(v["nodes"])) for v in found]


def test_a_dropped_demo_image_is_classified_with_a_heat_map(
    server, browser, demo_image, classifier, tmp_path
):
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1100, "height": 800})
    requested = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(server + "/", wait_until="load", timeout=30_000)
    # a locator assertion, not wait_for_function: its string predicate is polled with eval, which
    # the page's Content-Security-Policy (script-src 'self') refuses whenever it must poll
    expect(page.locator("#model-info")).to_contain_text("version 7", timeout=30_000)
    assert page.locator("#notice").is_visible()
    assert "Research use only" in page.inner_text("#notice")
    assert page.locator("#synthetic-note").is_visible()

    page.set_input_files("#file", str(demo_image))
    page.wait_for_selector("#result[data-state='done']", timeout=60_000)

    expected = classifier.predict(decode_upload(demo_image.read_bytes()))
    assert page.inner_text("#predicted-class") == expected["class"]  # one answer, the rule's
    top = f"{100 * expected['probabilities'][expected['class']]:.1f}%"
    assert page.inner_text("#class-probability") == f"(p = {top})"
    flag = "yes" if expected["decision"]["refer"] else "no"
    refer = page.inner_text("#refer")
    assert refer.startswith(f"Refer: {flag}. "), refer
    assert "p(malignant) = " in refer
    meaning = page.inner_text("#meaning")  # calibration and the operating point, in words
    assert "the model's own outputs" in meaning  # this release has no temperature
    assert "operating point chosen on validation" in meaning
    assert "30.0%" in meaning  # the threshold
    rule = page.locator("#rule-text")
    assert not rule.is_visible()  # the rule's own text waits behind a toggle
    page.click("#rule-details summary")
    assert "out_of_scope when the OOD score >" in rule.inner_text()
    assert "p(malignant) >= 0.3000" in rule.inner_text()
    assert page.locator("#bars li").count() == len(CLASSES)
    for name, p in expected["probabilities"].items():
        shown = page.inner_text(f"#bars li[data-class='{name}'] .value")
        assert shown == f"{100 * p:.1f}%"
    assert "version 7" in page.inner_text("#model-info")

    heat = page.locator("#heatmap")
    assert heat.evaluate("img => img.complete && img.naturalWidth > 0")  # decoded, paintable
    assert not heat.is_visible()  # off by default: the scan comes first
    assert page.locator("#heat-controls .ramp").is_visible()  # with its colour scale
    # the 32 px test model's features are one cell: the page says the map is coarse
    assert "1 × 1" in page.inner_text("#heat-warning")
    page.check("#show-heatmap")
    assert heat.is_visible()
    assert heat.get_attribute("src").startswith("data:image/png;base64,")
    page.fill("#heat-opacity", "40")
    page.dispatch_event("#heat-opacity", "input")
    assert heat.evaluate("img => getComputedStyle(img).opacity") == "0.4"
    page.fill("#heat-opacity", "100")
    page.dispatch_event("#heat-opacity", "input")
    preview_box, heat_box = page.locator("#preview").bounding_box(), heat.bounding_box()
    assert preview_box["width"] > 0
    assert abs(heat_box["width"] - preview_box["width"]) < 2
    assert abs(heat_box["height"] - preview_box["height"]) < 2

    with_heat = page.locator("#stack").screenshot()
    page.uncheck("#show-heatmap")
    assert not heat.is_visible()
    without_heat = page.locator("#stack").screenshot()
    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)

    shot = np.asarray(Image.open(io.BytesIO(with_heat)).convert("RGB"), dtype=np.int16)
    plain = np.asarray(Image.open(io.BytesIO(without_heat)).convert("RGB"), dtype=np.int16)
    assert shot.shape == plain.shape
    assert shot.shape[0] > 100
    assert shot.std() > 5  # an image was drawn, not a blank box
    # the overlay is visible when on: coloured (R != B somewhere), while the grey scan alone is not
    assert (
        np.abs(shot[..., 0] - shot[..., 2]).mean()
        > np.abs(plain[..., 0] - plain[..., 2]).mean() + 1
    )
    assert (tmp_path / "page.png").stat().st_size > 10_000

    assert all(url.startswith((server, "data:", "blob:")) for url in requested), requested
    page.close()


def test_a_bad_upload_shows_the_reason_and_resets_the_page(server, browser, demo_image, tmp_path):
    page = browser.new_page()
    page.goto(server + "/", wait_until="load", timeout=30_000)
    page.set_input_files("#file", str(demo_image))
    page.wait_for_selector("#result[data-state='done']", timeout=60_000)
    fake = tmp_path / "report.png"
    fake.write_text("not an image at all")
    page.set_input_files("#file", str(fake))
    page.wait_for_selector("#result[data-state='error']", timeout=30_000)
    message = page.inner_text("#error")
    assert "415" in message
    assert "not a supported image" in message
    for leftover in ("#preview", "#heatmap", "#heat-controls", "#answer"):
        assert not page.locator(leftover).is_visible(), leftover
    page.close()


def test_an_image_out_of_scope_gets_the_refusal_and_why_and_no_class(server, browser, tmp_path):
    path = tmp_path / "screenshot.png"
    Image.fromarray(screenshot()).save(path)
    page = browser.new_page()
    page.goto(server + "/", wait_until="load", timeout=30_000)
    page.set_input_files("#file", str(path))
    page.wait_for_selector("#result[data-state='done']", timeout=60_000)
    assert page.inner_text("#predicted-class") == "no class given"
    refusal = page.inner_text("#refer")
    assert refusal.startswith("Refer to a radiologist.")
    assert "no class and no referral flag" in refusal
    assert "above the threshold of" in refusal  # and why
    assert page.locator("#bars li").count() == 0  # no class bars, not even hidden ones
    for absent in ("#bars", "#meaning", "#heat-controls", "#class-probability"):
        assert not page.locator(absent).is_visible(), absent
    for name in CLASSES:
        assert name not in page.inner_text("#answer").split("How this answer")[0], name
    page.click("#rule-details summary")
    assert axe_violations(page) == []  # the refusal and its open details, checked too
    page.close()


def test_the_favicon_is_served(server, browser):
    page = browser.new_page()
    response = page.request.get(server + "/favicon.ico")
    assert response.status == 200
    assert response.headers["content-type"] == "image/x-icon"
    assert Image.open(io.BytesIO(response.body())).size >= (16, 16)
    page.close()


def test_keyboard_users_open_the_file_chooser_and_axe_finds_no_violation(
    server, browser, demo_image
):
    page = browser.new_page()
    # file choosers are intercepted from the start, not only once expect_file_chooser asks: a
    # chooser that opened before the interception reached the browser was missed under load
    page.on("filechooser", lambda _: None)
    page.goto(server + "/", wait_until="load", timeout=30_000)
    assert axe_violations(page) == []  # before any image
    page.keyboard.press("Tab")  # the first stop is the file input (shown as its button)
    assert page.evaluate("document.activeElement.id") == "file"
    with page.expect_file_chooser(timeout=30_000) as chooser:
        page.keyboard.press("Enter")
    chooser.value.set_files(str(demo_image))
    page.wait_for_selector("#result[data-state='done']", timeout=60_000)
    page.keyboard.press("Tab")  # then the heat-map controls
    assert page.evaluate("document.activeElement.id") == "show-heatmap"
    page.keyboard.press("Space")
    assert page.locator("#heatmap").is_visible()
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "heat-opacity"
    page.keyboard.press("Tab")  # then the rule's details toggle
    page.keyboard.press("Enter")
    assert page.locator("#rule-text").is_visible()
    assert axe_violations(page) == []  # of any impact, minor included
    page.close()


def test_the_api_docs_load_offline_from_the_app(server, browser):
    page = browser.new_page()
    requested = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(server + "/docs", wait_until="load", timeout=30_000)
    page.wait_for_selector("text=/predict", timeout=30_000)
    assert all(url.startswith((server, "data:", "blob:")) for url in requested), requested
    page.close()
