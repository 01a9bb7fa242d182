"""How fast the browser demo answers, and the README's screenshot of it.

    python bench/app.py [--prior runs/prior] [--repeats 20] [--screenshot docs/app.png]

Server time: the demo's own sample (16 digits) and complete (8 completions of a test
digit, 3 rows kept) calls, timed after one warm-up call, median and max over repeats.
Then the real page in headless Chromium: the seconds from a click until the images are
shown, and a screenshot of a drawn 7 being completed. Needs `make app` and a Chromium.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def server_times(prior: str, repeats: int) -> dict[str, list[float]]:
    from sampling.demo import Demo
    demo = Demo(prior)
    if demo.models is None:
        raise SystemExit(f"error: {demo.error}")
    digit = demo.test_digit(0)
    calls = {"sample 16": lambda seed: demo.sample(None, 16, cfg=1.0, seed=seed).seconds,
             "complete 8": lambda seed: demo.complete(digit, 3, 8, seed=seed).seconds}
    times = {}
    for name, call in calls.items():
        call(0)   # warm-up: first-call allocations
        times[name] = [call(seed) for seed in range(1, repeats + 1)]
    return times


def in_browser(prior: str, screenshot: Path) -> dict[str, float]:
    from playwright.sync_api import sync_playwright
    from sampling.serving import free_port, served
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("error: no Chromium; apt-get install chromium")
    seconds = {}
    with served(["--prior", prior], free_port()) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium,
                                             args=["--no-sandbox", "--disable-dev-shm-usage"])
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.set_default_timeout(60_000)
        page.goto(url)
        count = page.locator("#sample-n input[type=number]")
        # Alternating counts so each answer changes the page; the 16s are timed, the first included.
        for n in (16, 15, 16, 15, 16):
            count.fill(str(n))
            count.press("Enter")
            start = time.perf_counter()
            page.click("#sample-button")
            page.wait_for_selector(f"#sample-info >> text={n} samples in")
            page.wait_for_selector(f"#samples img >> nth={n - 1}")
            if n == 16:
                seconds.setdefault("sample 16, click to images", []).append(time.perf_counter() - start)
        page.get_by_role("tab", name="Complete").click()
        page.wait_for_timeout(1000)   # a stroke drawn before the canvas is ready is lost
        canvas = page.locator("#complete-drawing canvas").last
        box = canvas.bounding_box()
        points = [(0.3, 0.25), (0.7, 0.25), (0.45, 0.8)]   # a 7
        page.mouse.move(box["x"] + box["width"] * points[0][0], box["y"] + box["height"] * points[0][1])
        page.mouse.down()
        for x, y in points[1:]:
            page.mouse.move(box["x"] + box["width"] * x, box["y"] + box["height"] * y, steps=12)
        page.mouse.up()
        start = time.perf_counter()
        page.click("#complete-button")
        page.wait_for_selector("#completions img >> nth=7")
        seconds["complete 8, click to images"] = [time.perf_counter() - start]
        page.wait_for_timeout(1000)   # let the gallery finish painting
        page.screenshot(path=str(screenshot), full_page=True)
        browser.close()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prior", default="runs/prior")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--screenshot", type=Path, default=REPO / "docs" / "app.png")
    args = parser.parse_args()
    rows = {**server_times(args.prior, args.repeats), **in_browser(args.prior, args.screenshot)}
    print(f"{'what':32} {'median s':>9} {'max s':>7} {'runs':>5}")
    for name, values in rows.items():
        print(f"{name:32} {statistics.median(values):9.3f} {max(values):7.3f} {len(values):5}")
    print(f"screenshot: {args.screenshot}")


if __name__ == "__main__":
    main()
