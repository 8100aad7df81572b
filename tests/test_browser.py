"""The drawing page in a real browser: headless Chromium draws strokes, the answer appears.

Needs Debian's chromium and chromium-driver (installed by .ci/run). Screenshots go to
test-artifacts/ (or $DIGITJAX_ARTIFACTS).
"""

import math
import os
import shutil
import threading
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from webui import create_app

# Trains on the real MNIST, in subprocesses as a user would: the full suite only.
pytestmark = pytest.mark.slow


ARTIFACTS = Path(os.environ.get("DIGITJAX_ARTIFACTS", Path(__file__).resolve().parent.parent / "test-artifacts"))


@pytest.fixture(scope="module")
def server(served_checkpoints):
    app = create_app({"CHECKPOINTS_DIR": str(served_checkpoints), "WORKDIR": None})
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}/"
    httpd.shutdown()


@pytest.fixture(scope="module")
def browser():
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and chromedriver):
        message = "Debian's chromium and chromium-driver are needed: apt-get install chromium chromium-driver"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1100,900",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # CSP violations land in the console
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    yield driver
    driver.quit()


# Strokes in canvas pixels (the canvas is 280x280), one list of points per stroke.
DIGITS = {
    1: [[(140, 40 + 10 * i) for i in range(21)]],
    7: [[(70 + 14 * i, 50) for i in range(11)], [(210 - 5 * i, 50 + 10 * i) for i in range(20)]],
    0: [[(140 + 55 * math.sin(t / 20 * 2 * math.pi), 140 - 90 * math.cos(t / 20 * 2 * math.pi)) for t in range(21)]],
}


def draw(driver, strokes, kind: str):
    from selenium.webdriver.common.actions import interaction
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.actions.pointer_input import PointerInput

    pad = driver.find_element("id", "pad")
    kinds = {"mouse": interaction.POINTER_MOUSE, "touch": interaction.POINTER_TOUCH, "pen": interaction.POINTER_PEN}
    builder = ActionBuilder(driver, mouse=PointerInput(kinds[kind], kind))
    for stroke in strokes:
        # move_to offsets are from the element's centre.
        builder.pointer_action.move_to(pad, int(stroke[0][0] - 140), int(stroke[0][1] - 140))
        builder.pointer_action.pointer_down()
        for x, y in stroke[1:]:
            builder.pointer_action.move_to(pad, int(x - 140), int(y - 140))
        builder.pointer_action.pointer_up()
    builder.perform()


def answer(driver, previous=None):
    from selenium.webdriver.support.ui import WebDriverWait

    label = driver.find_element("id", "label")
    WebDriverWait(driver, 20).until(lambda d: label.get_attribute("data-label") not in (None, previous))
    return int(label.get_attribute("data-label"))


def _assert_bars_show_the_probabilities(driver, digit: int) -> None:
    """From a screenshot: each bar's filled length is its probability, the top one in its own colour."""
    import io

    import numpy as np
    from PIL import Image
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 5).until(lambda d: d.execute_script("return document.getAnimations().length === 0"))
    shot = np.asarray(Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")).astype(int)
    scale = driver.execute_script("return window.devicePixelRatio")
    colours = {"top": (0x30, 0xA1, 0x4E), "other": (0x0A, 0x84, 0xFF), "empty": (0xE5, 0xE5, 0xEA)}
    for li in driver.find_elements("css selector", "#bars li"):
        shown = li.find_element("css selector", ".pct").text
        probability = float(shown.rstrip("%")) / 100
        bar = driver.execute_script(
            "const r = arguments[0].querySelector('.bar').getBoundingClientRect();"
            "return [r.left, r.top, r.width, r.height];",
            li,
        )
        left, top, width, height = (round(v * scale) for v in bar)
        row = shot[top + height // 2, left + 2 : left + width - 2]  # inside the rounded corners
        kind = "top" if "top" in li.get_attribute("class").split() else "other"
        filled = (np.abs(row - colours[kind]).sum(-1) < 40).mean()
        empty = (np.abs(row - colours["empty"]).sum(-1) < 40).mean()
        assert filled + empty > 0.95, f"bar {li.text[:1]}: only the fill and the track colours"
        assert abs(filled - probability) < 0.03, f"bar {li.text[:1]}: {filled:.2f} filled, shows {shown}"
    top = driver.find_elements("css selector", "#bars li.top .pct")
    assert len(top) == 1 and float(top[0].text.rstrip("%")) > 50, "the answer's bar is the longest"


@pytest.mark.parametrize("kind, digit", [("mouse", 1), ("mouse", 7), ("mouse", 0), ("touch", 1), ("pen", 7)])
def test_drawing_shows_the_digit(server, browser, kind, digit):
    browser.get(server)
    draw(browser, DIGITS[digit], kind)
    assert answer(browser) == digit
    bars = browser.find_elements("css selector", "#bars li.top")
    assert len(bars) == 1 and bars[0].text.startswith(str(digit))
    _assert_bars_show_the_probabilities(browser, digit)
    seen = browser.execute_script(
        "const d = document.getElementById('seen').getContext('2d').getImageData(0, 0, 168, 168).data;"
        "let ink = 0; for (let i = 0; i < d.length; i += 4) ink += d[i] > 128; return ink;"
    )
    assert seen > 100, "the 28x28 input is shown"
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / f"canvas-{kind}-{digit}.png"))
    blocked = [e["message"] for e in browser.get_log("browser") if "Content Security Policy" in e["message"]]
    assert not blocked, "the page works under its own CSP"


def test_clear_undo_and_run_selector(server, browser):
    browser.get(server)
    assert browser.find_element("id", "run").get_attribute("value") == "tiny"
    assert "step" in browser.find_element("id", "run-info").text
    draw(browser, DIGITS[1], "mouse")
    assert answer(browser) == 1
    browser.find_element("id", "undo").click()
    label = browser.find_element("id", "label")
    assert label.text == "–" and label.get_attribute("data-label") is None  # the only stroke is gone
    draw(browser, DIGITS[7], "mouse")
    assert answer(browser) == 7
    browser.find_element("id", "clear").click()
    assert label.text == "–"
    assert browser.execute_script("return window.scrollY") == 0


@pytest.mark.parametrize("width, height", [(1280, 800), (390, 844)])
def test_layout_fits_the_screen(server, browser, width, height):
    """A desktop shows drawing, answer and what the model sees side by side above the fold; a phone
    one column with no horizontal scroll. Measured from the rendered boxes and a screenshot."""
    browser.set_window_size(width, height)
    try:
        browser.get(server)
        draw(browser, DIGITS[7], "mouse")
        answer(browser)
        viewport = browser.execute_script("return [window.innerWidth, window.innerHeight]")
        boxes = browser.execute_script(
            "return [...document.querySelectorAll('main > section')].map(s => {"
            "const r = s.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; });"
        )
        assert browser.execute_script("return document.scrollingElement.scrollWidth") <= viewport[0]
        if width >= 1000:
            assert len({round(top) for _, top, _, _ in boxes}) == 1, boxes  # one row
            assert max(bottom for *_, bottom in boxes) <= viewport[1], "above the fold"
        else:
            lefts = [left for left, *_ in boxes]
            assert max(lefts) - min(lefts) < 2 and all(r <= viewport[0] for _, _, r, _ in boxes), boxes
        ARTIFACTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / f"layout-{width}x{height}.png"))
    finally:
        browser.set_window_size(1100, 900)


def test_dark_mode_follows_the_system(server, browser):
    """With the system in dark mode the page is dark (pixels of a screenshot), the pad stays white."""
    import io

    import numpy as np
    from PIL import Image

    browser.execute_cdp_cmd(
        "Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": "dark"}]}
    )
    try:
        browser.get(server)
        shot = np.asarray(Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("L")).astype(int)
        scale = browser.execute_script("return window.devicePixelRatio")

        def centre(selector):
            r = browser.execute_script(
                f"const r = document.querySelector('{selector}').getBoundingClientRect();"
                "return [r.left, r.top, r.width, r.height];"
            )
            return shot[round((r[1] + r[3] / 2) * scale), round((r[0] + r[2] / 2) * scale)]

        assert shot[2, 2] < 60, "the page background is dark"
        assert centre("section.answer .bars") < 90 and centre("#pad") > 240
        ARTIFACTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "dark-mode.png"))
    finally:
        browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})
