"""The classifier page end to end: headless Chromium uploads a demo image to the real server.

Needs Debian's chromium (`make browser`) and the `playwright` Python package, which drives it
through `executable_path` (no `playwright install`, no download). Network: loopback only.
"""

from __future__ import annotations

import io
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline import synthetic
from pipeline.serving.app import create_app
from pipeline.serving.classifier import Classifier, load_classifier
from pipeline.serving.uploads import decode_upload
from tests.factories import CLASSES, make_release
from tests.servers import free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def classifier(tiny_model, tmp_path_factory) -> Classifier:
    folder = tmp_path_factory.mktemp("page") / "selected"
    return load_classifier(make_release(folder, tiny_model[1], 0.4, version="5"))


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


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(
            f"chromium not installed at {CHROMIUM}: run `make browser` (apt-get install chromium)"
        )
    playwright = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[dev]'")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def demo_image(tmp_path) -> Path:
    """A synthetic malignant-looking scan, 160 x 200 (not square: the overlay must still fit)."""
    image, _mask = synthetic.render_case("malignant", synthetic.case_rng(7, "malignant", 0), 200)
    path = tmp_path / "demo scan.png"
    Image.fromarray(image[20:180]).save(path)
    return path


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
    expect(page.locator("#model-info")).to_contain_text("version 5", timeout=30_000)
    assert page.locator("#notice").is_visible()
    assert "Research use only" in page.inner_text("#notice")
    assert page.locator("#synthetic-note").is_visible()

    page.set_input_files("#file", str(demo_image))
    page.wait_for_selector("#result[data-state='done']", timeout=60_000)

    expected = classifier.predict(decode_upload(demo_image.read_bytes()))
    assert page.inner_text("#predicted-class") == expected["class"]  # one answer, the rule's
    decision = page.inner_text("#decision")
    flag = "yes" if expected["decision"]["refer"] else "no"
    assert f"Refer (malignant suspected): {flag}" in decision
    assert "0.4000" in decision
    assert page.locator("#bars li").count() == len(CLASSES)
    for name, p in expected["probabilities"].items():
        shown = page.inner_text(f"#bars li[data-class='{name}'] .value")
        assert shown == f"{100 * p:.1f}%"
    assert "version 5" in page.inner_text("#model-info")

    heat = page.locator("#heatmap")
    assert heat.evaluate("img => img.complete && img.naturalWidth > 0")  # decoded, paintable
    assert not heat.is_visible()  # off by default: the scan comes first
    assert page.locator("#heat-controls .ramp").is_visible()  # with its colour scale
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


def test_keyboard_users_open_the_file_chooser_and_axe_finds_no_serious_violation(
    server, browser, demo_image
):
    from axe_playwright_python.sync_playwright import Axe

    page = browser.new_page()
    # file choosers are intercepted from the start, not only once expect_file_chooser asks: a
    # chooser that opened before the interception reached the browser was missed under load
    page.on("filechooser", lambda _: None)
    page.goto(server + "/", wait_until="load", timeout=30_000)
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
    violations = Axe().run(page).response["violations"]
    serious = [(v["id"], v["impact"]) for v in violations if v["impact"] in ("serious", "critical")]
    assert serious == [], serious
    page.close()


def test_the_api_docs_load_offline_from_the_app(server, browser):
    page = browser.new_page()
    requested = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(server + "/docs", wait_until="load", timeout=30_000)
    page.wait_for_selector("text=/predict", timeout=30_000)
    assert all(url.startswith((server, "data:", "blob:")) for url in requested), requested
    page.close()
