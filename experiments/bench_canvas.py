"""The live loop a person feels: from a pointer move while drawing to the frame that shows its answer.

    python -m experiments.bench_canvas --workdir checkpoints/fast             # ~1 min
    python -m experiments.bench_canvas --workdir checkpoints/fast --smoke     # a few seconds

Serves the run with gunicorn (as experiments/bench_serve.py does), opens the page in Debian's
headless Chromium, and draws for --strokes strokes. The page itself measures each live update
(`performance.measure("pointer-to-bars")`: from the pointer move's timestamp to the animation
frame after its answer - bars, saliency, every layer and the neighbours - is in the page) and the
benchmark reads those measures back. Prints p50/p90/max and one JSON line. Goal: p50 <= 30 ms.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys

import numpy as np

from experiments.bench_serve import gunicorn

# The page's own measures of the parts of each live update (webui/static/app.js).
PARTS = ("encode", "request", "render")
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
NO_CHROMIUM = "Needs Debian's chromium and chromium-driver: apt-get install chromium chromium-driver"


def browser(window: str = "1280,800", console: bool = False):
    """Headless Debian Chromium through Selenium (also the browser tests'); `console`: keep the
    page's console messages (CSP violations land there)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and chromedriver):
        raise RuntimeError(NO_CHROMIUM)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*CHROMIUM_FLAGS, f"--window-size={window}"):
        options.add_argument(flag)
    if console:
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(chromedriver), options=options)


def stroke(i: int) -> list[tuple[int, int]]:
    """A loop of 40 points around the pad's centre, a little different each time."""
    r = 60 + 5 * (i % 7)
    return [(int(r * math.sin(t / 40 * 2 * math.pi)), int(1.4 * r * math.cos(t / 40 * 2 * math.pi))) for t in range(41)]


def draw(driver, points: list[tuple[int, int]], move_ms: int) -> None:
    """One stroke by a mouse, a move every `move_ms` (offsets from the pad's centre)."""
    from selenium.webdriver.common.actions import interaction
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.actions.pointer_input import PointerInput

    pad = driver.find_element("id", "pad")
    builder = ActionBuilder(driver, mouse=PointerInput(interaction.POINTER_MOUSE, "mouse"), duration=move_ms)
    builder.pointer_action.move_to(pad, *points[0])
    builder.pointer_action.pointer_down()
    for x, y in points[1:]:
        builder.pointer_action.move_to(pad, x, y)
    builder.pointer_action.pointer_up()
    builder.perform()


def main() -> None:
    parser = argparse.ArgumentParser(description="Pointer move to bars updated, in Chromium.")
    parser.add_argument("--workdir", default="checkpoints/fast")
    parser.add_argument("--strokes", type=int, default=20)
    parser.add_argument("--move_ms", type=int, default=16, help="between pointer moves: one a frame at 60 Hz")
    parser.add_argument("--smoke", action="store_true", help="3 strokes, for CI")
    args = parser.parse_args()
    if args.smoke:
        args.strokes = 3

    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        sys.exit(NO_CHROMIUM)
    with gunicorn(args.workdir) as (port, _):
        driver = browser()
        try:
            driver.get(f"http://127.0.0.1:{port}/")
            for i in range(args.strokes):
                draw(driver, stroke(i), args.move_ms)
                driver.find_element("id", "clear").click()
            parts = {
                name: driver.execute_script(f"return performance.getEntriesByName('{name}').map(e => e.duration)")
                for name in ("pointer-to-bars", *PARTS)
            }
            ms = parts.pop("pointer-to-bars")
            fields = driver.execute_script("return wantedFields()")
        finally:
            driver.quit()
    if not ms:
        sys.exit("no live update was measured")
    report = {
        "workdir": args.workdir,
        "updates": len(ms),
        "fields": fields,
        "pointer_to_bars_p50_ms": float(np.percentile(ms, 50)),
        "pointer_to_bars_p90_ms": float(np.percentile(ms, 90)),
        "pointer_to_bars_max_ms": float(np.max(ms)),
        "goal_p50_ms": 30,
        **{f"{name}_p50_ms": float(np.percentile(values, 50)) for name, values in parts.items() if values},
        "cpu_cores": os.cpu_count(),
    }
    print(
        f"{len(ms)} live updates while drawing ({', '.join(fields)}): pointer move to bars updated "
        f"p50 {report['pointer_to_bars_p50_ms']:.1f} ms, p90 {report['pointer_to_bars_p90_ms']:.1f} ms, "
        f"max {report['pointer_to_bars_max_ms']:.1f} ms (goal: p50 <= 30 ms)"
    )
    print("  p50 of its parts: " + ", ".join(f"{name} {report[f'{name}_p50_ms']:.1f} ms" for name in PARTS))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
