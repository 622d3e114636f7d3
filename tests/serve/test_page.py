"""The search page driven in a real headless Chromium (Debian's `chromium`, installed by `make install`)."""

from __future__ import annotations

import os
import shutil

import pytest

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("LATENT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

IMAGES_LOADED = """() => {
  const images = [...document.querySelectorAll('#results .card img')];
  return images.length > 0 && images.every((img) => img.complete && img.naturalWidth > 0);
}"""


@pytest.fixture(scope="module")
def browser():
    missing = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing = "playwright is not installed: pip install -e '.[test]'"
    if missing is None and not os.path.exists(CHROMIUM):
        missing = f"no Chromium at {CHROMIUM}: run `sudo apt-get install chromium` (or `make install`, as root)"
    if missing:  # never a skip: `make test` (and CI) must not pass without having driven the page
        pytest.fail(f"the browser tests need a real Chromium: {missing}; `make test-fast` leaves them out")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(server.url + "/")
    yield page
    context.close()
    assert not errors, errors  # no JavaScript errors on the page


def card_ids(page) -> list[str]:
    return page.eval_on_selector_all("#results .card", "cards => cards.map((c) => c.dataset.id)")


def test_type_a_query_see_images_click_a_result_see_new_results(page):
    page.wait_for_function("() => document.querySelector('#index-info').textContent.includes('6 items')")
    page.fill("#query", "a photo of a cat")
    page.press("#query", "Enter")
    page.wait_for_selector("#results .card")
    page.wait_for_function(IMAGES_LOADED)
    first = card_ids(page)
    assert len(first) == 6  # k=24 > the index's 6 items
    assert "results for “a photo of a cat”" in page.text_content("#status")
    assert page.eval_on_selector_all(".card .score", "s => s.every((e) => /^-?\\d\\.\\d{3}$/.test(e.textContent))")
    captions = page.eval_on_selector_all(".card .caption", "cs => cs.map((c) => c.textContent)")
    assert all(c.startswith("a photo of ") for c in captions)

    clicked = first[-1]  # the last result: searching by it puts it first
    page.click(f'#results .card[data-id="{clicked}"] button')
    page.wait_for_function(
        "(id) => document.querySelector('#results .card')?.dataset.id === id && "
        "document.querySelector('#status').textContent.startsWith('6 results like')",
        arg=clicked,
    )
    page.wait_for_function(IMAGES_LOADED)
    assert card_ids(page) != first and card_ids(page)[0] == clicked
    assert page.is_visible("#query-chip") and "Like:" in page.text_content("#query-chip")
    assert f"id={clicked.replace('/', '%2F')}" in page.url


def test_pick_an_image_file_to_search_by_it(page, photos):
    page.set_input_files("#file", str(photos / "sub" / "chelsea.jpg"))
    page.wait_for_function("() => document.querySelector('#results .card')?.dataset.id === 'sub/chelsea.jpg'")
    page.wait_for_function(IMAGES_LOADED)
    assert "chelsea.jpg" in page.text_content("#query-chip")


def test_errors_are_shown_not_thrown(page):
    page.press("#query", "Enter")  # nothing typed
    page.wait_for_function("() => document.querySelector('#status').classList.contains('error')")
    page.set_input_files("#file", files=[{"name": "notes.png", "mimeType": "image/png", "buffer": b"not a png"}])
    page.wait_for_function("() => document.querySelector('#status').textContent.includes('not a usable image')")
    assert page.eval_on_selector("#status", "s => s.classList.contains('error')")
