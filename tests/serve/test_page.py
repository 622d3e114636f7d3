"""The search page driven in a real headless Chromium (Debian's `chromium`, installed by `make install`)."""

from __future__ import annotations

import os
import shutil
from urllib.parse import quote

import httpx
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


def test_with_a_token_the_page_asks_for_it_once_and_shows_results_and_thumbnails(browser, token_server):
    from .conftest import TOKEN

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    try:
        page.goto(token_server.url + "/")
        page.wait_for_selector("#auth:not([hidden])")
        page.fill("#token", "not-the-token-at-all")
        page.press("#token", "Enter")
        page.wait_for_function("() => document.querySelector('#auth-error').textContent.includes('refused')")
        page.fill("#token", TOKEN)
        page.press("#token", "Enter")
        page.wait_for_selector("#auth", state="hidden")
        page.wait_for_function("() => document.querySelector('#index-info').textContent.includes('6 items')")
        page.fill("#query", "a photo of a cat")
        page.press("#query", "Enter")
        page.wait_for_selector("#results .card")
        page.wait_for_function(IMAGES_LOADED)
        assert len(card_ids(page)) == 6
        sources = page.eval_on_selector_all("#results .card img", "imgs => imgs.map((i) => i.src)")
        assert all(src.startswith("blob:") for src in sources)  # fetched with the token, no token in any URL
        clicked = card_ids(page)[-1]
        page.click(f'#results .card[data-id="{clicked}"] button')
        page.wait_for_function("(id) => document.querySelector('#results .card')?.dataset.id === id", arg=clicked)
        page.wait_for_function(IMAGES_LOADED)
        assert TOKEN not in page.url
        page.reload()  # kept for the tab (sessionStorage): not asked again, the ?id= search runs
        page.wait_for_function("(id) => document.querySelector('#results .card')?.dataset.id === id", arg=clicked)
        assert page.is_hidden("#auth")
    finally:
        context.close()
    assert not errors, errors


def test_every_nasty_id_links_to_its_thumbnail_in_the_page(browser, nasty_server):
    from .conftest import NASTY_IDS

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    try:
        for id in NASTY_IDS:
            page.goto(f"{nasty_server.url}/?id={quote(id, safe='')}")
            page.wait_for_function("(id) => document.querySelector('#results .card')?.dataset.id === id", arg=id)
            page.wait_for_function(IMAGES_LOADED)
            assert page.eval_on_selector("#query-chip-image", "i => i.complete && i.naturalWidth > 0"), id
    finally:
        context.close()


def test_filter_box_suggests_columns_filters_results_and_shows_a_bad_predicate(page, server):
    page.wait_for_function("() => document.querySelector('#index-info').textContent.includes('6 items')")
    columns = {c["name"]: c["kind"] for c in httpx.get(server.url + "/columns").json()["columns"]}
    assert columns["text"] == "string" and columns["metadata.index"] == "number"  # the sidecars' fields too
    page.click("#where")
    page.keyboard.type("metadata.i")
    page.wait_for_selector("#where-suggest li[data-name='metadata.index']")
    assert page.eval_on_selector_all("#where-suggest li", "ls => ls.map((l) => l.dataset.name)") == ["metadata.index"]
    page.keyboard.press("Tab")  # takes the suggestion
    assert page.input_value("#where") == "metadata.index "
    page.keyboard.type(">= 3 AND ")
    page.keyboard.type("te")
    page.wait_for_selector("#where-suggest li[data-name='text']")
    page.click("#where-suggest li[data-name='text']")
    page.keyboard.type("LIKE 'a photo of c%'")
    assert page.input_value("#where") == "metadata.index >= 3 AND text LIKE 'a photo of c%'"
    page.fill("#query", "a photo")
    page.press("#query", "Enter")
    page.wait_for_function("() => document.querySelector('#status').textContent.includes('filter: 2 of 6 items match')")
    assert sorted(card_ids(page)) == ["camera.jpg", "sub/coins.jpg"]  # index 3..5 and a caption starting with c
    assert "where=metadata.index" in page.url  # the filter is part of the page's address
    page.fill("#where", "nope = 1")
    page.press("#where", "Enter")
    page.wait_for_function("() => document.querySelector('#status').textContent.includes(\"unknown column 'nope'\")")
    assert page.eval_on_selector("#status", "s => s.classList.contains('error')")
