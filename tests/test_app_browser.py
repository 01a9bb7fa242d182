"""The browser demo in a real headless Chromium: sample, draw and complete, tokenize, errors.

Needs the `app` extra (gradio), playwright and a Chromium (Debian: apt-get install chromium;
.ci/run installs it). Without them the tests skip and say what is missing; where .ci/run
did install a browser (VQGEN_REQUIRE_BROWSER=1) a missing piece is a failure instead.
Only the app's child process imports gradio, never this one.
"""
import importlib.util
import os
import shutil

import pytest

from sampling.serving import free_port, served

pytestmark = pytest.mark.browser   # a tier of its own: `pytest -m browser`

CHROMIUM = os.environ.get("VQGEN_CHROMIUM") or next(
    (path for name in ("chromium", "chromium-browser", "google-chrome") if (path := shutil.which(name))), None)
MISSING = [what for what, ok in [("gradio (pip install -e '.[app]')", importlib.util.find_spec("gradio")),
                                 ("playwright (pip install -e '.[dev]')", importlib.util.find_spec("playwright")),
                                 ("a Chromium (apt-get install chromium)", CHROMIUM)] if not ok]
if MISSING:
    if os.environ.get("VQGEN_REQUIRE_BROWSER") == "1":
        raise RuntimeError(f"browser test required but missing: {', '.join(MISSING)}")
    pytest.skip(f"no browser test here: missing {', '.join(MISSING)}", allow_module_level=True)


@pytest.fixture(scope="module")
def page(tiny_prior_run, mnist_root):
    from playwright.sync_api import sync_playwright
    prior, _ = tiny_prior_run
    with served(["--prior", str(prior)], free_port(), env={"VQGEN_DATA": str(mnist_root)}) as url, \
            sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM,
                                             args=["--no-sandbox", "--disable-dev-shm-usage"])
        tab = browser.new_page(viewport={"width": 1400, "height": 1000})
        tab.set_default_timeout(30_000)
        tab.goto(url)
        yield tab
        browser.close()


def draw(page, canvas_id: str, points: list[tuple[float, float]]) -> None:
    """One stroke through points given as fractions of the canvas."""
    canvas = page.locator(f"#{canvas_id} canvas").last
    box = canvas.bounding_box()
    at = [(box["x"] + box["width"] * x, box["y"] + box["height"] * y) for x, y in points]
    page.mouse.move(*at[0])
    page.mouse.down()
    for x, y in at[1:]:
        page.mouse.move(x, y, steps=12)
    page.mouse.up()


def test_the_page_opens_on_samples_and_its_ranges_follow_the_run(page, tiny_prior_run):
    """Runs first (the module's page is fresh): a grid is shown before any click, and top-k
    reaches the served tokenizer's codebook size, not a fixed number."""
    page.get_by_role("tab", name="Sample").click()
    page.locator("#samples img").wait_for()
    assert "16 samples" in page.locator("#sample-info").inner_text()
    assert page.locator("#sample-top-k input[type=range]").get_attribute("max") == "32"   # the tiny run's K


def test_sampling_shows_the_asked_number_of_digits(page):
    from sampling.digit_image import COLUMNS, FIELD, GAP, SHOW_SCALE
    page.get_by_role("tab", name="Sample").click()
    n = page.locator("#sample-n input[type=number]")
    n.fill("12")
    n.press("Enter")
    page.click("#sample-button")
    page.wait_for_selector("#sample-info >> text=12 samples in")
    picture = page.locator("#samples img")
    assert picture.count() == 1   # one picture per answer: 12 digits, 8 a row
    cell = FIELD * SHOW_SCALE
    size = picture.evaluate("img => [img.naturalWidth, img.naturalHeight]")
    assert size == [COLUMNS * (cell + GAP) - GAP, 2 * (cell + GAP) - GAP]
    assert page.locator("#sample-codes td").count() == 49
    first = page.inner_text("#sample-codes")
    box = picture.bounding_box()   # choosing a sample shows its own codes: click digit 5's centre
    scale = box["width"] / size[0]
    x, y = (5 * (cell + GAP) + cell / 2) * scale, (cell / 2) * scale
    picture.click(position={"x": x, "y": y})
    page.wait_for_function(f"document.querySelector('#sample-codes').innerText != {first!r}")
    assert page.locator("#sample-codes td").count() == 49


def test_an_empty_canvas_gives_a_message_not_a_trace(page):
    page.get_by_role("tab", name="Complete").click()
    page.click("#complete-button")
    page.wait_for_selector("text=the canvas is empty")
    assert "Traceback" not in page.content()


def test_a_drawn_stroke_is_completed(page):
    page.get_by_role("tab", name="Complete").click()
    draw(page, "complete-drawing", [(0.3, 0.25), (0.7, 0.25), (0.45, 0.8)])   # a 7
    page.click("#complete-button")
    page.wait_for_selector("#complete-info >> text=8 completions in")
    assert page.locator("#completions img").count() == 1   # the 8 in one picture


def test_a_test_digit_is_tokenized(page):
    page.get_by_role("tab", name="Tokenize").click()
    page.locator("#tokenize-source").get_by_text("test digit").click()
    assert_tokenized(page)


def assert_tokenized(page):
    page.click("#tokenize-button")
    page.wait_for_selector("#tokenize-info >> text=reconstruction PSNR")
    assert page.locator("#tokenize-codes td").count() == 49


def test_black_ink_on_a_white_canvas_is_read_as_a_digit(page):
    page.get_by_role("tab", name="Tokenize").click()
    page.locator("#tokenize-source").get_by_text("drawing").click()
    page.locator("#tokenize-ink").get_by_text("black on white").click()
    page.wait_for_timeout(500)   # the canvas turns white
    draw(page, "tokenize-drawing", [(0.5, 0.2), (0.5, 0.8)])   # a 1
    assert_tokenized(page)   # black on black or white on white would be "the canvas is empty"


def test_a_missing_run_folder_names_the_command_that_trains_it_and_changes_nothing(page, tiny_prior_run):
    page.get_by_text("run folders").click()
    prior = page.get_by_label("prior run")
    prior.fill("/no/such/run")
    page.click("#load-button")
    page.wait_for_selector("#status >> text=accelerate launch prior/train.py")
    page.get_by_role("tab", name="Sample").click()
    page.click("#sample-button")   # the runs before still serve
    page.wait_for_selector("#sample-info >> text=samples in")
    prior.fill(str(tiny_prior_run[0]))
    page.click("#load-button")
    page.wait_for_selector("#status >> text=class-conditional")
