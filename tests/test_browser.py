"""The demo page at / in headless Chromium, against the real service (`python -m service`) on a loopback port.

Strokes are real input events (mouse through Playwright, touch through the DevTools protocol), so the page's
pointer handling is what is tested. Each view is checked on a desktop and a phone-size viewport, with no
console errors and no sideways scrolling; screenshots land in screenshots/ (gitignored).
"""

from __future__ import annotations

import base64
import io
import math
import os
import re
import shutil
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image

from bench.harness import running_service

from .conftest import REPO
from .service_helpers import ONE_THREAD

CHROMIUM = os.environ.get("LATENT_CNF_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
REQUIRED = os.environ.get("LATENT_CNF_BROWSER_TESTS") == "required"  # set by .ci/run: CI must not skip these
SCREENSHOTS = REPO / "screenshots"
VIEWPORTS = {"desktop": {"width": 1200, "height": 900}, "phone": {"width": 390, "height": 844}}
TIMEOUT_MS = 30_000  # a ceiling for auto-waiting on two shared cores, not a wait

if CHROMIUM is None:
    if REQUIRED:
        raise RuntimeError("browser tests are required but no chromium was found (apt-get install chromium)")
    pytest.skip("no chromium on PATH (apt-get install chromium; or set LATENT_CNF_CHROMIUM)", allow_module_level=True)
if not REQUIRED:
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
from playwright import sync_api  # noqa: E402 - after the checks above, so a plain run can skip instead

expect = sync_api.expect
expect.set_options(timeout=TIMEOUT_MS)
pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def service_url() -> Iterator[str]:
    with running_service(ONE_THREAD, timeout_s=120) as server:  # every shipped checkpoint, as `make serve` serves them
        yield server.url


@pytest.fixture(scope="module")
def browser() -> Iterator:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        yield browser
        browser.close()


@pytest.fixture(params=list(VIEWPORTS))
def viewport(request) -> str:
    return request.param


class Console:
    """Errors the page logged or threw; most tests end by asserting there were none."""

    def __init__(self, page):
        self.errors: list[str] = []
        page.on("console", lambda message: message.type == "error" and self.errors.append(message.text))
        page.on("pageerror", lambda error: self.errors.append(str(error)))


@pytest.fixture
def page(browser, service_url, viewport):
    context = browser.new_context(
        viewport=VIEWPORTS[viewport], has_touch=viewport == "phone", is_mobile=viewport == "phone"
    )
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.console = Console(page)
    page.goto(service_url)
    expect(page.locator("#model option")).not_to_have_count(0)
    yield page
    context.close()


def open_view(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()
    expect(page.get_by_role("tab", name=name)).to_have_attribute("aria-selected", "true")


def strokes(page, viewport: str, lines: list[list[tuple[float, float]]], pad: str = "#pad") -> None:
    """Draw polylines given in canvas fractions on a pad: mouse on the desktop, a finger on the phone."""
    box = page.locator(pad).bounding_box()

    def at(point: tuple[float, float]) -> tuple[float, float]:
        return box["x"] + point[0] * box["width"], box["y"] + point[1] * box["height"]

    if viewport == "phone":
        cdp = page.context.new_cdp_session(page)
        for line in lines:
            points = [at(p) for p in line]
            touch = lambda kind, x, y: cdp.send(  # noqa: E731
                "Input.dispatchTouchEvent",
                {"type": kind, "touchPoints": [{"x": x, "y": y}] if kind != "touchEnd" else []},
            )
            touch("touchStart", *points[0])
            for a, b in zip(points, points[1:], strict=False):
                for i in range(1, 9):
                    touch("touchMove", a[0] + (b[0] - a[0]) * i / 8, a[1] + (b[1] - a[1]) * i / 8)
            touch("touchEnd", 0, 0)
        return
    for line in lines:
        page.mouse.move(*at(line[0]))
        page.mouse.down()
        for point in line[1:]:
            page.mouse.move(*at(point), steps=8)
        page.mouse.up()


def check_layout(page, viewport: str, view: str) -> None:
    """Nothing wider than the screen, and a screenshot of the view for docs/pictures."""
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"{view} scrolls sideways by {overflow} px on the {viewport} viewport"
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=SCREENSHOTS / f"{view}-{viewport}.png", full_page=True)


def pixels(image) -> np.ndarray:
    """The grey levels of an <img> showing a base64 PNG."""
    data = image.get_attribute("src").removeprefix("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))), dtype=np.int16)


def loaded(locator) -> None:
    expect(locator).to_have_js_property("complete", True)
    assert locator.evaluate("img => img.naturalWidth") == 28


def test_drawing_a_one_is_scored_and_ranked_first(page, viewport):
    strokes(page, viewport, [[(0.5, 0.15), (0.5, 0.85)]])
    expect(page.locator("#score")).to_have_attribute("data-scored", "true")
    expect(page.locator("#predicted")).to_have_text("1")
    bars = page.locator("#probs li")
    expect(bars).to_have_count(10)
    expect(page.locator("#probs li.top")).to_have_attribute("data-label", "1")
    probabilities = [float(p) for p in bars.evaluate_all("items => items.map(li => li.dataset.probability)")]
    assert max(range(10), key=probabilities.__getitem__) == 1 and abs(sum(probabilities) - 1) < 1e-6
    assert float(page.locator("#nats").inner_text()) < 0
    assert float(page.locator("#bpd").inner_text()) > 0
    assert 0 <= float(page.locator("#percentile").inner_text()) <= 100
    expect(page.locator("#verdict")).not_to_have_text("-")
    loaded(page.locator("#input-image"))
    loaded(page.locator("#reconstruction-image"))
    latent_map = page.locator("#map-draw")  # the test digits, and the drawing with its spread
    expect(latent_map).to_have_attribute("data-points", "1000")
    expect(latent_map).to_have_attribute("data-encoding", re.compile(r"^-?\d+\.\d{3},-?\d+\.\d{3}$"))
    expect(page.locator("#draw .legend li")).to_have_count(10)
    check_layout(page, viewport, "draw")
    assert page.console.errors == []


def test_the_score_follows_the_drawing(page, viewport):
    """A 7 is read as a 7; strokes added to it are scored again, and Clear empties the results."""
    strokes(page, viewport, [[(0.25, 0.22), (0.75, 0.22), (0.45, 0.85)]])
    expect(page.locator("#predicted")).to_have_text("7")
    check_layout(page, viewport, "draw-seven")
    first = page.locator("#nats").inner_text()
    strokes(page, viewport, [[(0.45, 0.85), (0.2, 0.6), (0.4, 0.45), (0.65, 0.5)]])
    expect(page.locator("#nats")).not_to_have_text(first)
    page.get_by_role("button", name="Clear").click()
    expect(page.locator("#nats")).to_have_text("-")
    expect(page.locator("#probs li")).to_have_count(0)
    assert page.console.errors == []


def test_generate_a_grid_and_open_a_sample_in_the_flow(page, viewport):
    open_view(page, "Generate")
    page.locator("#gen-label").select_option("7")
    page.locator("#gen-seed").fill("3")
    page.locator("#gen-count").fill("9")
    page.get_by_role("button", name="Generate").click()
    images = page.locator("#grid img")
    expect(images).to_have_count(9)
    for i in range(9):
        loaded(images.nth(i))
    check_layout(page, viewport, "generate")
    page.get_by_role("button", name="Sample 4, label 7: watch its flow").click()
    expect(page.locator("#flow")).to_be_visible()
    expect(page.locator("#flow-source")).to_have_text("Sample 4 of the grid (seed 3, 9 samples).")
    expect(page.locator("#flow-slider")).to_be_enabled()
    # the last frame of its flow is the sample clicked in the grid (its 40 solver steps, against the grid's 4,
    # move pixels by a few grey levels at most)
    page.locator("#flow-slider").focus()
    page.keyboard.press("End")
    expect(page.locator("#flow-image")).to_have_attribute("data-frame", "40")
    end, sample = pixels(page.locator("#flow-image")), pixels(images.nth(3))
    assert np.abs(end - sample).max() <= 4
    assert page.console.errors == []


def test_play_the_flow(page, viewport):
    open_view(page, "Watch the flow")
    expect(page.locator("#flow-play")).to_be_enabled()
    image = page.locator("#flow-image")
    expect(image).to_have_attribute("data-frame", "0")
    first = image.get_attribute("src")
    page.get_by_role("button", name="Play").click()
    expect(image).to_have_attribute("data-frame", "40")  # played to the end on its own
    expect(page.locator("#flow-time")).to_have_text("t = 10.00")
    expect(page.locator("#map-flow")).to_have_attribute("data-path", "41")  # the whole path, base noise to latent
    strip = page.locator("#flow-strip")  # GET /trajectory's PNG: 11 columns of 56-pixel tiles, titled
    expect(strip).to_have_js_property("complete", True)
    assert strip.evaluate("img => img.naturalWidth") == 11 * 60 + 4
    check_layout(page, viewport, "flow")
    assert image.get_attribute("src") != first
    expect(page.locator("#flow-play")).to_have_text("Play")
    page.get_by_role("button", name="Play").click()  # from the end: starts over
    expect(page.locator("#flow-play")).to_have_text("Pause")
    page.get_by_role("button", name="Pause").click()
    expect(page.locator("#flow-play")).to_have_attribute("aria-pressed", "false")
    page.locator("#flow-slider").focus()
    page.keyboard.press("Home")
    expect(image).to_have_attribute("data-frame", "0")
    expect(image).to_have_attribute("src", first)
    assert page.console.errors == []


def test_move_the_interpolation_slider(page, viewport):
    open_view(page, "Interpolate")
    image = page.locator("#interp-image")
    expect(image).to_have_attribute("data-t", "0.5")
    middle = image.get_attribute("src")
    loaded(page.locator("#interp-a"))
    slider = page.get_by_label("From A to B")
    slider.focus()
    page.keyboard.press("End")
    expect(image).to_have_attribute("data-t", "1")
    assert image.get_attribute("src") != middle
    slider.fill("0.25")
    expect(page.locator("#interp-t")).to_have_text("t = 0.25")
    expect(image).to_have_attribute("data-t", "0.25")
    check_layout(page, viewport, "interpolate")
    assert page.console.errors == []


def test_half_a_digit_is_completed_as_it_is_drawn(page, viewport):
    """The loop of a 9 drawn in the observed half: eight completions with their weights, and p(label | half)."""
    open_view(page, "Complete")
    expect(page.locator("#complete-mask")).to_have_value("top")
    loop = [(0.5 + 0.14 * math.cos(a * math.pi / 6), 0.3 - 0.13 * math.sin(a * math.pi / 6)) for a in range(13)]
    strokes(page, viewport, [loop, [(0.64, 0.3), (0.63, 0.48)]], "#complete-pad")
    figures = page.locator("#completions figure")
    expect(figures).to_have_count(8)
    weights = [float(w) for w in figures.evaluate_all("items => items.map(f => f.dataset.weight)")]
    assert abs(sum(weights) - 1) < 1e-4 and weights == sorted(weights, reverse=True)
    for i in range(8):
        loaded(figures.nth(i).locator("img"))
    kept = pixels(figures.nth(0).locator("img"))[:14]  # the observed half comes back as drawn, binarized
    assert set(np.unique(kept)) <= {0, 255} and (kept == 255).sum() > 10
    expect(page.locator("#complete-probs li")).to_have_count(10)
    expect(page.locator("#complete-ess")).to_contain_text("Effective sample size")
    check_layout(page, viewport, "complete")
    page.locator("#complete-mask").select_option("left")  # the same drawing, another half observed: asked again
    expect(page.locator("#complete-status")).to_have_text("Completed by mnist-final-cond.")
    page.get_by_role("button", name="Clear").last.click()
    expect(figures).to_have_count(0)
    assert page.console.errors == []


@pytest.mark.parametrize("viewport", ["desktop"], indirect=True)
def test_fashion_mnist_shows_its_class_names(page, viewport):
    page.get_by_label("Model").select_option("fashion-mnist-final-cond")
    expect(page.locator("#model-note")).to_contain_text("fashion-mnist")
    open_view(page, "Generate")
    expect(page.locator("#gen-label option")).to_contain_text(["any", "0: T-shirt/top", "1: Trouser"])
    open_view(page, "Draw and score")
    strokes(page, viewport, [[(0.5, 0.15), (0.5, 0.85)]])
    expect(page.locator("#probs li").first).to_contain_text("T-shirt/top")
    assert page.console.errors == []


@pytest.mark.parametrize("viewport", ["phone"], indirect=True)
def test_a_busy_service_is_shown_to_the_user(page, viewport):
    body = '{"error": {"code": "queue_full", "message": "the queue is full"}}'
    page.route(
        "**/generate",
        lambda route: route.fulfill(
            status=503, body=body, content_type="application/json", headers={"Retry-After": "1"}
        ),
    )
    open_view(page, "Generate")
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#generate-error")).to_have_text(
        "The service is busy or still loading. the queue is full (HTTP 503, queue_full). Try again in 1 s."
    )


@pytest.mark.parametrize("viewport", ["desktop"], indirect=True)
def test_views_are_reachable_from_the_keyboard(page, viewport):
    page.get_by_role("tab", name="Draw and score").focus()
    page.keyboard.press("ArrowRight")
    expect(page.get_by_role("tab", name="Generate")).to_be_focused()
    expect(page.locator("#generate")).to_be_visible()
    page.keyboard.press("Tab")  # into the view: its first control
    expect(page.locator("#gen-label")).to_be_focused()
    page.get_by_role("tab", name="Draw and score").focus()
    page.keyboard.press("ArrowLeft")  # wraps around to the last view
    expect(page.locator("#complete")).to_be_visible()
    expect(page.locator("#draw")).to_be_hidden()
    assert page.console.errors == []


def test_images_with_nothing_to_show_yet_are_not_drawn_as_broken(page, viewport):
    """Before anything is drawn or generated, no <img> shows a broken-image icon or its alt text."""
    for view in ("Draw and score", "Watch the flow", "Interpolate", "Complete"):
        if page.get_by_role("tab", name=view).count():
            open_view(page, view)
        broken = page.evaluate(
            """[...document.querySelectorAll('img')].filter(img => img.offsetParent !== null
                && getComputedStyle(img).visibility !== 'hidden' && img.complete && img.naturalWidth === 0)
                .map(img => img.id)"""
        )
        assert not broken, f"{view}: broken images shown: {broken}"
    assert not page.console.errors
