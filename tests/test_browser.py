"""The drawing page in a real browser: headless Chromium draws strokes, the answer appears.

Needs Debian's chromium and chromium-driver (installed by .ci/run). Screenshots go to
test-artifacts/ (or $DIGITJAX_ARTIFACTS).
"""

import base64
import math
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from werkzeug.serving import make_server

from webui import create_app

# Trains on the real MNIST, in subprocesses as a user would: the full suite only.
pytestmark = pytest.mark.slow


ARTIFACTS = Path(os.environ.get("DIGITJAX_ARTIFACTS", Path(__file__).resolve().parent.parent / "test-artifacts"))


def serve(app):
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


@pytest.fixture(scope="module")
def drawings_db(tmp_path_factory):
    return tmp_path_factory.mktemp("store") / "drawings.sqlite"


@pytest.fixture(scope="module")
def server(served_checkpoints, tfds_dir, mnist_dir, drawings_db):
    config = {"CHECKPOINTS": str(served_checkpoints), "WORKDIR": None, "DATA_DIR": str(tfds_dir)}
    httpd = serve(create_app(config | {"IDX_DIR": str(mnist_dir.parent), "DRAWINGS_DB": str(drawings_db)}))
    yield f"http://127.0.0.1:{httpd.server_port}/"
    httpd.shutdown()


@pytest.fixture(scope="module")
def zoo(synthetic_tfds, synthetic_others, tmp_path_factory):
    """A server of one briefly trained run of every model family, on the synthetic digits, and
    one of `fast` on the synthetic images labelled as Fashion-MNIST."""
    from digitjax import data, trainer
    from digitjax import model as model_lib
    from experiments import smoke

    root = tmp_path_factory.mktemp("zoo")
    for name in [*model_lib.FAMILIES, "small", "s2d24"]:  # two old names too: they serve as they did
        config = smoke.get_config()
        config.model_kwargs = {}  # the family's own sizes, or the old name's
        config.model, config.train_size, config.validation_size, config.num_epochs = name, 96, 0, 1
        trainer.train_and_evaluate(config, root / name, data.Paths(str(synthetic_tfds), "/nonexistent"))
    config = smoke.get_config()
    config.dataset, config.train_size, config.validation_size, config.num_epochs = "fashion_mnist", 0, 0, 1
    trainer.train_and_evaluate(config, root / "fashion", data.Paths(str(synthetic_others), "/nonexistent"))
    # synthetic_others holds mnist too: every run's images are at hand.
    config = {"CHECKPOINTS": str(root), "WORKDIR": None, "DATA_DIR": str(synthetic_others)}
    app = create_app(config | {"DRAWINGS_DB": str(root / "drawings.sqlite")})
    httpd = serve(app)
    yield app, f"http://127.0.0.1:{httpd.server_port}/"
    httpd.shutdown()


@pytest.fixture(scope="module")
def browser():
    from experiments import bench_canvas

    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.fail(bench_canvas.NO_CHROMIUM) if os.environ.get("CI") else pytest.skip(bench_canvas.NO_CHROMIUM)
    driver = bench_canvas.browser("1100,900", console=True)
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
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 10).until(lambda d: len(d.find_elements("css selector", "#neighbours li")) == 8)
    neighbours = browser.find_elements("css selector", "#neighbours li")
    assert len(neighbours) == 8 and all(
        n.find_element("tag name", "canvas").get_attribute("width") == "28" for n in neighbours
    )
    labels = [int(n.get_attribute("data-label")) for n in neighbours]
    assert labels.count(digit) >= 4, f"the nearest training digits of a {digit}: {labels}"
    assert browser.find_elements("css selector", "#layers canvas.maps"), "the layers are drawn"
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / f"canvas-{kind}-{digit}.png"))
    blocked = [e["message"] for e in browser.get_log("browser") if "Content Security Policy" in e["message"]]
    assert not blocked, "the page works under its own CSP"


def test_clear_undo_and_run_selector(server, browser):
    browser.get(server)
    assert browser.find_element("id", "run").get_attribute("value") == "tiny"
    assert "step" in browser.find_element("id", "run-info").text
    assert "(mnist)" in browser.find_element("id", "run-info").text
    bars = browser.find_elements("css selector", "#bars li")
    assert [li.find_element("class name", "class").text for li in bars] == list("0123456789")
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
        if width >= 1000 and os.environ.get("DIGITJAX_DOCS"):  # the README's picture, remade on request
            browser.save_screenshot(str(Path(__file__).resolve().parent.parent / "docs" / "canvas.png"))
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


# The page's layer canvases as [name, [width, height], base64 of the red channel] (maps), or
# [name, null, [[unit, value], ...]] (the strongest units of a dense layer).
READ_LAYERS = """
return [...document.querySelectorAll('#layers .layer')].map(row => {
  const canvas = row.querySelector('canvas');
  const units = [...row.querySelectorAll('.units li')].map(li => [+li.dataset.unit, +li.dataset.value]);
  if (!canvas) return [row.dataset.layer, null, units];
  const d = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let s = ''; for (let i = 0; i < d.length; i += 4) s += String.fromCharCode(d[i]);
  return [row.dataset.layer, [canvas.width, canvas.height], btoa(s)];
});
"""


def _page_maps(width: int, height: int, data: str, shape: list[int]) -> np.ndarray:
    """The HxWxC grey levels of a layer's canvas: tile c at column c % 16, row c // 16, 1 px apart."""
    h, w, c = shape
    grey = np.frombuffer(base64.b64decode(data), np.uint8).reshape(height, width)
    tiles = [grey[(i // 16) * (h + 1) :][:h, (i % 16) * (w + 1) :][:, :w] for i in range(c)]
    return np.stack(tiles, -1)


def _load_test_digit(driver, base: str, run: str, index: int) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(f"{base}?run={run}&test={index}")
    WebDriverWait(driver, 30).until(
        lambda d: (
            d.find_element("id", "label").get_attribute("data-label") is not None
            and d.execute_script("return document.querySelectorAll('#layers .layer').length") > 0
        )
    )


@pytest.mark.parametrize("name", ["seed", "fast", "small", "deep", "s2d", "s2d24"])
def test_the_pages_feature_maps_are_the_models_own(zoo, browser, name):
    """For a test digit loaded into the canvas, every feature map the page draws equals the model's
    own intermediate value (to the page's 8-bit grey levels), and the strongest units are its."""
    from digitjax import layers
    from digitjax import model as model_lib
    from digitjax.runs import checkpoint

    app, base = zoo
    index = 3
    _load_test_digit(browser, base, name, index)
    image = app.extensions["digitjax.datasets"].split("mnist", "test").images_NxHxW[index]
    model = checkpoint.load_for_inference(app.extensions["digitjax"].runs[name].workdir).model
    _, recorded = layers.record(model, model_lib.to_input(image[None]))
    shown = browser.execute_script(READ_LAYERS)
    assert [row[0] for row in shown] == [n for n, _, _ in recorded]
    counts = {}
    for (layer, size, data), (_, value, _) in zip(shown, recorded):
        value = np.asarray(value[0], np.float64)
        low, high = value.min(), value.max()
        if size is None:  # units: the page lists the strongest, with their values
            units = [u for u, _ in data]
            assert units == list(np.argsort(-value, kind="stable")[: len(units)]) or np.allclose(
                sorted(value[units]), sorted(np.sort(value)[-len(units) :]), atol=(high - low) / 255
            ), layer
            np.testing.assert_allclose([v for _, v in data], value[units], atol=(high - low) / 255 + 1e-3)
            counts[layer] = f"{len(units)} of {value.size} units"
            continue
        maps = _page_maps(*size, data, list(value.shape))
        expected = np.round((value - low) / max(high - low, 1e-6) * 255)
        assert np.abs(maps - expected).max() <= 1, f"{name} {layer}: the page's maps differ from the model's"
        counts[layer] = f"{value.shape[-1]} maps of {value.shape[0]}x{value.shape[1]}"
    print(f"{name}: {counts}")
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / f"layers-{name}.png"))


def test_a_feature_map_large_beside_its_kernel(zoo, browser):
    """Hovering a map shows it large (its pixels those of the tile) beside its kernel in red/blue."""
    from selenium.webdriver import ActionChains
    from selenium.webdriver.support.ui import WebDriverWait

    app, base = zoo
    _load_test_digit(browser, base, "fast", 5)
    canvas = browser.find_element("css selector", '#layers .layer[data-layer="conv1"] canvas')
    box = browser.execute_script("const r = arguments[0].getBoundingClientRect(); return [r.width, r.height];", canvas)
    scale = box[0] / browser.execute_script("return arguments[0].width", canvas)
    # Tile 17: column 1, row 1 of the 16-wide grid of 28x28 maps.
    x, y = (1 * 29 + 14) * scale - box[0] / 2, (1 * 29 + 14) * scale - box[1] / 2
    ActionChains(browser).move_to_element_with_offset(canvas, int(x), int(y)).perform()
    WebDriverWait(browser, 10).until(lambda d: "map 17" in d.find_element("id", "detail-title").text)
    WebDriverWait(browser, 10).until(lambda d: "kernel" in d.find_element("id", "detail-kernel-note").text)
    # The 3x3 kernel of map 17, drawn 140/3 px a weight: red for positive, blue for negative, by
    # the weight's share of the largest in the layer's kernel.
    kernel_HWIO = app.extensions["digitjax"].runs["fast"].layers[0].kernel_HWIO
    drawn = browser.execute_script(
        "const c = document.getElementById('detail-kernel').getContext('2d');"
        "return [0, 1, 2].map(i => [0, 1, 2].map(j => [...c.getImageData(Math.floor((j + 0.5) * 140 / 3),"
        " Math.floor((i + 0.5) * 140 / 3), 1, 1).data].slice(0, 3)));"
    )
    v = kernel_HWIO[..., 0, 17] / np.abs(kernel_HWIO).max()
    expected = np.where(
        (v >= 0)[..., None],
        np.stack([np.full_like(v, 255), 255 * (1 - v), 255 * (1 - v)], -1),
        np.stack([255 * (1 + v), 255 * (1 + v), np.full_like(v, 255)], -1),
    )
    assert np.abs(np.asarray(drawn) - expected).max() <= 4, (drawn, expected.round())
    red_of = "return [...arguments[0].getContext('2d').getImageData({}).data].filter((_, i) => i % 4 == 0)"
    large = browser.execute_script(red_of.format("0, 0, 140, 140"), browser.find_element("id", "detail-map"))
    tile = browser.execute_script(red_of.format("29, 29, 28, 28"), canvas)
    large, tile = np.asarray(large).reshape(140, 140), np.asarray(tile).reshape(28, 28)
    np.testing.assert_array_equal(large[2::5, 2::5], tile, "the large map is the tile, enlarged")
    browser.execute_script("document.getElementById('detail').scrollIntoView()")
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "feature-map-detail.png"))


def _screenshot(driver) -> np.ndarray:
    import io

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")).astype(int)


def _element_pixels(driver, shot: np.ndarray, selector: str) -> np.ndarray:
    """The screenshot's pixels inside an element (scrolled into view before the screenshot)."""
    scale = driver.execute_script("return window.devicePixelRatio")
    r = driver.execute_script(
        f"const r = document.querySelector('{selector}').getBoundingClientRect();"
        "return [r.left, r.top, r.width, r.height];"
    )
    left, top, width, height = (round(v * scale) for v in r)
    return shot[top : top + height, left : left + width]


def test_run_page_shows_the_report_and_a_mistake_opens_in_the_canvas(server, browser):
    from selenium.webdriver.support.ui import WebDriverWait

    browser.set_window_size(1280, 2000)
    try:
        browser.get(server + "runs/tiny")
        WebDriverWait(browser, 180).until(
            lambda d: d.execute_script("return document.querySelector('section.run').dataset.ready")
        )
        WebDriverWait(browser, 5).until(lambda d: d.execute_script("return document.getAnimations().length === 0"))
        shot = _screenshot(browser)
        ARTIFACTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "run-page.png"))
        counts = browser.execute_script(
            "return [...document.querySelectorAll('.confusion td')].map(td => +td.dataset.count)"
        )
        assert len(counts) == 100 and sum(counts) == 10000
        # Pixels: each diagonal cell is tinted green, a frequent mistake red.
        cells = browser.find_elements("css selector", ".confusion td")
        diagonal = _element_pixels(browser, shot, ".confusion tr:nth-child(2) td:nth-child(2)").reshape(-1, 3).mean(0)
        assert diagonal[1] > diagonal[0] + 10, f"the diagonal is green: {diagonal}"
        worst = int(np.argmax([c if i % 11 else -1 for i, c in enumerate(counts)]))
        row, col = worst // 10 + 2, worst % 10 + 2
        cell = _element_pixels(browser, shot, f".confusion tr:nth-child({row}) td:nth-child({col})").reshape(-1, 3)
        assert cell.mean(0)[0] > cell.mean(0)[1] + 40, "the most frequent mistake is red"
        assert len(cells) == 100
        # The curves are drawn: the test accuracy's line has a point per evaluation.
        points = browser.execute_script(
            "return document.querySelector('.chart polyline[data-split=\"test\"]').getAttribute('points')"
        )
        assert len(points.split()) >= 1
        problems = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert not problems, f"the run page runs clean under its CSP: {problems}"
        mistakes = browser.find_elements("css selector", ".mistakes a")
        assert len(mistakes) == 96
        first = mistakes[0].get_attribute("title")  # "test digit #I: labelled L, answered P (C%)"
        predicted = int(first.split("answered ")[1].split()[0])
        mistakes[0].click()
        assert answer(browser) == predicted, "the canvas answers the mistake as evaluation did"
        assert "test digit #" in browser.find_element("id", "run-info").text
        pad = _element_pixels(browser, _screenshot(browser), "#pad")
        assert (pad.mean(-1) < 100).mean() > 0.03, "the digit is drawn on the pad"
    finally:
        browser.set_window_size(1100, 900)


def test_two_runs_side_by_side(zoo, browser):
    from selenium.webdriver.support.ui import WebDriverWait

    _, base = zoo
    browser.set_window_size(1280, 900)
    try:
        browser.get(base + "runs/seed/vs/fast")
        WebDriverWait(browser, 180).until(
            lambda d: d.execute_script(
                "return [...document.querySelectorAll('section.run')].every(s => s.dataset.ready)"
            )
        )
        boxes = browser.execute_script(
            "return [...document.querySelectorAll('section.run')].map(s => {"
            "const r = s.getBoundingClientRect(); return [r.left, r.top, r.width]; })"
        )
        assert len(boxes) == 2 and abs(boxes[0][1] - boxes[1][1]) < 1 and boxes[1][0] >= boxes[0][0] + boxes[0][2]
        titles = [e.text for e in browser.find_elements("css selector", "section.run h2 a")]
        assert titles == ["seed", "fast"]
        ARTIFACTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "compare-runs.png"))
    finally:
        browser.set_window_size(1100, 900)


def test_wrong_it_is_7_keeps_the_drawing_with_its_label(server, browser, drawings_db):
    """Draw, press "Wrong: it is 7": the drawing is in the store labelled 7 (with what the model
    answered, drawn by a pen), and the page's count of kept drawings goes up."""
    from selenium.webdriver.support.ui import WebDriverWait

    from digitjax.canvas import drawings

    browser.get(server)
    stats = browser.find_element("id", "store-stats")
    WebDriverWait(browser, 10).until(lambda d: stats.text)
    before = int(stats.get_attribute("data-count") or 0)
    assert not browser.find_element("id", "teach").is_displayed(), "nothing to label before an answer"
    draw(browser, DIGITS[1], "pen")
    shown = answer(browser)
    assert browser.find_element("id", "teach").is_displayed()
    browser.find_element("css selector", '#teach .digit[data-digit="7"]').click()
    WebDriverWait(browser, 10).until(lambda d: "Kept as a 7" in d.find_element("id", "teach-note").text)
    WebDriverWait(browser, 10).until(lambda d: stats.get_attribute("data-count") == str(before + 1))
    kept = int(browser.find_element("id", "teach").get_attribute("data-kept"))
    row = drawings.connect(drawings_db).execute("SELECT label, answer, kind, run FROM drawings WHERE id = ?", (kept,))
    assert row.fetchone() == (7, shown, "pen", "tiny")
    # A digit key labels it too: "1" on the keyboard says which digit it is.
    browser.find_element("tag name", "body").send_keys("1")
    WebDriverWait(browser, 10).until(lambda d: stats.get_attribute("data-count") == str(before + 2))
    assert "of them right" in stats.text
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "teach-wrong-it-is-7.png"))


def test_undo_on_the_page_removes_the_kept_drawing_and_nothing_jumps(server, browser, drawings_db):
    """Draw, press "Right", then the page's own "Undo": the drawing is gone from the store (deleted
    with the token only this page holds), the count goes back down, and the line below the buttons
    stays where it was throughout."""
    from selenium.webdriver.support.ui import WebDriverWait

    from digitjax.canvas import drawings

    def top(element_id: str) -> float:
        return browser.execute_script(f"return document.getElementById('{element_id}').getBoundingClientRect().top")

    browser.get(server)
    stats = browser.find_element("id", "store-stats")
    WebDriverWait(browser, 10).until(lambda d: stats.text)
    before = int(stats.get_attribute("data-count") or 0)
    draw(browser, DIGITS[0], "mouse")
    answer(browser)
    undo = browser.find_element("id", "unkeep")
    assert not undo.is_displayed(), "nothing kept yet, nothing to undo"
    line = top("store-stats")
    browser.find_element("id", "right").click()
    WebDriverWait(browser, 10).until(lambda d: stats.get_attribute("data-count") == str(before + 1))
    kept = int(browser.find_element("id", "teach").get_attribute("data-kept"))
    conn = drawings.connect(drawings_db)
    assert conn.execute("SELECT count(*) FROM drawings WHERE id = ?", (kept,)).fetchone()[0] == 1
    assert undo.is_displayed() and top("store-stats") == line
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "teach-kept-with-undo.png"))
    undo.click()
    WebDriverWait(browser, 10).until(lambda d: "is not kept" in d.find_element("id", "teach-note").text)
    WebDriverWait(browser, 10).until(lambda d: stats.get_attribute("data-count") == str(before))
    assert conn.execute("SELECT count(*) FROM drawings WHERE id = ?", (kept,)).fetchone()[0] == 0
    assert not undo.is_displayed() and top("store-stats") == line
    browser.save_screenshot(str(ARTIFACTS / "teach-undone.png"))


def test_a_run_of_another_dataset_answers_in_its_class_names(zoo, browser):
    """A Fashion-MNIST run: the header names the dataset and its classes, the bars and the answer
    are its class names, and the page offers no digits to teach."""
    _, base = zoo
    browser.get(f"{base}?run=fashion")
    names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    from selenium.webdriver.support.ui import WebDriverWait

    info = browser.find_element("id", "run-info")
    WebDriverWait(browser, 20).until(lambda d: "(fashion_mnist)" in info.text)
    bars = browser.find_elements("css selector", "#bars li")
    assert [li.find_element("class name", "class").text for li in bars] == names
    # Each name fits beside its bar, the longest uncut, and the bars still line up.
    widths = browser.execute_script(
        "return [...document.querySelectorAll('#bars .class')].map(e => [e.scrollWidth, e.clientWidth]);"
    )
    assert all(scroll <= client for scroll, client in widths), widths
    assert len({round(b.rect["x"]) for b in browser.find_elements("css selector", "#bars .bar")}) == 1
    draw(browser, DIGITS[1], "mouse")
    label = answer(browser)
    assert browser.find_element("id", "label").text == names[label]
    top = browser.find_elements("css selector", "#bars li.top")
    assert len(top) == 1 and top[0].text.startswith(names[label])
    assert not browser.find_element("id", "teach").is_displayed(), "only digits are taught"
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "canvas-fashion_mnist.png"))
