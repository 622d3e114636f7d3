"""The map view driven in a real headless Chromium: WebGL points, hover, click, a located query, a box selection."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from serve.test_map_api import map_index, map_server, photo_map  # noqa: F401  (fixtures)
from serve.test_page import browser  # noqa: F401  (fixture)

pytestmark = pytest.mark.browser

DOCS_IMG = Path(__file__).resolve().parents[2] / "docs" / "img"
WHITE = [255, 255, 255, 255]


@pytest.fixture
def map_page(browser, map_server):  # noqa: F811
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(map_server.url + "/map")
    page.wait_for_function("() => window.latentMap && window.latentMap.ready && window.latentMap.frames > 0")
    yield page
    context.close()
    assert not errors, errors


def test_points_render_in_webgl(map_page):
    state = map_page.evaluate("() => ({points: latentMap.points, bytes: latentMap.bytes, error: latentMap.error})")
    assert state == {"points": 6, "bytes": 60, "error": None}
    colours = map_page.evaluate("() => [0, 1, 2, 3, 4, 5].map((i) => latentMap.pixelOf(i))")
    assert all(c != WHITE for c in colours), colours  # every point is drawn where it lies
    assert map_page.evaluate("() => latentMap.labelsShown.length") >= 1  # region labels are drawn


def test_hover_shows_a_thumbnail_and_caption(map_page):
    x, y = map_page.evaluate("() => latentMap.screenOf(3)")
    map_page.mouse.move(x, y)
    map_page.wait_for_function("() => latentMap.hover && latentMap.hover.index === 3 && latentMap.hover.thumbnail")
    assert map_page.is_visible("#tooltip")
    assert map_page.evaluate("() => document.querySelector('#tooltip-img').naturalWidth") > 0
    assert "a photo of" in map_page.text_content("#tooltip-text")


def test_click_lists_and_highlights_nearest_neighbours(map_page):
    x, y = map_page.evaluate("() => latentMap.screenOf(1)")
    before = map_page.evaluate("() => latentMap.pixelOf(1)")
    map_page.mouse.click(x, y)
    map_page.wait_for_function("() => latentMap.highlighted.length > 0")
    map_page.wait_for_function("() => document.querySelectorAll('#list li').length > 0")
    assert map_page.evaluate("() => latentMap.highlighted[0]") == 1  # the item itself is its nearest
    map_page.wait_for_function("(b) => JSON.stringify(latentMap.pixelOf(1)) !== JSON.stringify(b)", arg=before)
    r, g, b, _ = map_page.evaluate("() => latentMap.pixelOf(1)")
    assert r > 200 and 100 < g < 180 and b < 60  # drawn orange: highlighted


def test_a_text_query_lands_and_its_hits_are_highlighted(map_page, tmp_path):
    map_page.fill("#locate", "a photo of rocket")
    map_page.press("#locate", "Enter")
    map_page.wait_for_function("() => latentMap.query && latentMap.query.hits.length > 0")
    hits = map_page.evaluate("() => latentMap.query.hits")
    map_page.wait_for_timeout(200)
    colours = [map_page.evaluate("(i) => latentMap.pixelOf(i)", hit) for hit in hits]
    red = [r > 180 and g < 80 and b < 100 for r, g, b, _ in colours]
    under_query = [max(r, g, b) < 60 for r, g, b, _ in colours]  # the black query marker lands on a hit
    assert any(red) and all(a or b for a, b in zip(red, under_query)), colours  # hits are drawn red
    assert "query lands" in map_page.text_content("#map-status")
    # docs/img keeps the picture; a test run rewrites it only when asked (a plain run leaves the tree clean)
    target = DOCS_IMG if os.environ.get("LATENT_UPDATE_SCREENSHOTS") else tmp_path
    target.mkdir(parents=True, exist_ok=True)
    map_page.screenshot(path=str(target / "map-view.png"))
    assert (target / "map-view.png").stat().st_size > 10_000  # a drawn map, not a blank page


def test_box_selection_lists_items_and_exports_ids(map_page):
    map_page.keyboard.down("Shift")
    map_page.mouse.move(5, 60)
    map_page.mouse.down()
    map_page.mouse.move(900, 780, steps=5)
    map_page.mouse.up()
    map_page.keyboard.up("Shift")
    map_page.wait_for_function("() => latentMap.selectionIds && latentMap.selectionIds.length > 0")
    assert "selected" in map_page.text_content("#map-status")
    with map_page.expect_download() as download:
        map_page.click("#export")
    text = Path(download.value.path()).read_text()
    assert sorted(text.split()) == sorted(map_page.evaluate("() => latentMap.selectionIds"))


def test_the_search_page_links_to_the_map(browser, map_server):  # noqa: F811
    page = browser.new_page()
    page.goto(map_server.url + "/")
    page.click("#map-link")
    page.wait_for_function("() => window.latentMap && window.latentMap.frames > 0")
    assert page.url.endswith("/map")
    page.close()


def test_behind_a_token_the_map_sends_the_search_pages_token(browser, start_server, map_index, photo_map):  # noqa: F811
    from .conftest import TOKEN

    server = start_server(map_index, f"auth.token={TOKEN}")
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    try:
        page.goto(server.url + "/map")  # no token yet: the API refuses, the page says why
        page.wait_for_function("() => document.querySelector('#map-status').textContent.includes('token')")
        page.evaluate(f"() => sessionStorage.setItem('latent-token', '{TOKEN}')")  # what the search page keeps
        page.reload()
        page.wait_for_function("() => window.latentMap && window.latentMap.ready && window.latentMap.frames > 0")
        assert page.evaluate("() => latentMap.points") == 6
        x, y = page.evaluate("() => latentMap.screenOf(3)")
        page.mouse.move(x, y)
        page.wait_for_function("() => latentMap.hover && latentMap.hover.index === 3 && latentMap.hover.thumbnail")
        assert page.evaluate("() => document.querySelector('#tooltip-img').src").startswith("blob:")
    finally:
        context.close()


def test_plain_text_with_an_apostrophe_is_located_as_text_and_an_error_clears_the_last_answer(map_page):
    with map_page.expect_request("**/map/locate") as sent:
        map_page.fill("#locate", "a cat's face")
        map_page.press("#locate", "Enter")
    assert sent.value.post_data_json.get("text") == "a cat's face"  # not parsed as an expression
    map_page.wait_for_function("() => document.querySelectorAll('#list li').length > 0")
    map_page.fill("#route-from", "nope")
    map_page.fill("#route-to", "nope either")
    map_page.press("#route-to", "Enter")
    map_page.wait_for_function("() => document.querySelector('#map-status').textContent.includes('nope')")
    assert map_page.evaluate("() => document.querySelectorAll('#list li').length") == 0  # no stale answer under it


CANVAS_BOX = """() => {
  const r = document.querySelector('canvas').getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; }"""
GREEN_BETWEEN = """([a, b]) => {
  const c = document.querySelector('canvas'), gl = c.getContext('webgl2'), r = c.getBoundingClientRect();
  const dpr = window.devicePixelRatio || 1, px = new Uint8Array(36);
  let green = 0;
  for (const t of [0.3, 0.4, 0.5, 0.6, 0.7]) {  // a 3x3 patch around each spot: the line is 1 px wide
    const x = (a[0] + t * (b[0] - a[0]) - r.left) * dpr, y = c.height - (a[1] + t * (b[1] - a[1]) - r.top) * dpr;
    gl.readPixels(Math.round(x) - 1, Math.round(y) - 1, 3, 3, gl.RGBA, gl.UNSIGNED_BYTE, px);
    let hit = false;
    for (let p = 0; p < 36; p += 4) if (px[p + 1] > 120 && px[p] < 90 && px[p + 2] < 120) hit = true;
    if (hit) green += 1;
  }
  return green; }"""


def test_a_route_is_drawn_as_a_line_the_view_fits(map_page):
    first = map_page.evaluate("() => fetch('map/points/0').then((r) => r.json()).then((p) => p.id)")
    last = map_page.evaluate("() => fetch('map/points/5').then((r) => r.json()).then((p) => p.id)")
    map_page.fill("#route-from", first)
    map_page.fill("#route-to", last)
    map_page.press("#route-to", "Enter")
    map_page.wait_for_function("() => latentMap.route.length >= 2")
    route = map_page.evaluate("() => latentMap.route")
    left, top, right, bottom = map_page.evaluate(CANVAS_BOX)
    for i in route:  # every step of the route is in view
        x, y = map_page.evaluate("(i) => latentMap.screenOf(i)", i)
        assert left <= x <= right and top <= y <= bottom
    # the line's pixels: green between two consecutive steps (points are drawn only at the steps)
    a, b = map_page.evaluate("(r) => [latentMap.screenOf(r[0]), latentMap.screenOf(r[1])]", route)
    assert map_page.evaluate(GREEN_BETWEEN, [a, b]) >= 4


def test_hovering_a_text_only_item_requests_no_thumbnail(map_page):
    missing: list[str] = []
    map_page.on("response", lambda r: missing.append(r.url) if r.status == 404 else None)
    map_page.route("**/map/points/*", lambda route: route.fulfill(json={**route.fetch().json(), "thumbnail": None}))
    x, y = map_page.evaluate("() => latentMap.screenOf(2)")
    map_page.mouse.move(x, y)
    map_page.wait_for_function("() => latentMap.hover && latentMap.hover.loaded")
    assert not missing, missing
    map_page.mouse.wheel(0, -300)  # the view moves: the tooltip goes
    map_page.wait_for_function("() => document.querySelector('#tooltip').hidden")


def test_the_legend_lists_top_regions_and_a_clicked_label_selects_its_region(map_page):
    regions = map_page.evaluate("() => fetch('map/clusters').then((r) => r.json())")
    top = sorted((r for r in regions if r["level"] == 0 and r["size"]), key=lambda r: -r["size"])
    legend = map_page.eval_on_selector_all("#legend li", "(els) => els.map((e) => e.textContent)")
    assert legend == [f"{r['label']} · {r['size']:,}" for r in top]
    label = map_page.locator("#labels .label").first
    name = label.text_content()
    label.click()
    map_page.wait_for_function("() => latentMap.region && latentMap.selectionIds")
    level, cluster = map_page.evaluate("() => [latentMap.region.level, latentMap.region.cluster]")
    chosen = next(r for r in regions if r["level"] == level and r["cluster"] == cluster)
    assert chosen["label"] == name and len(map_page.evaluate("() => latentMap.selectionIds")) == chosen["size"]
    assert name in map_page.text_content("#map-status")
    with map_page.expect_download() as download:
        map_page.click("#export")
    assert len(Path(download.value.path()).read_text().split()) == chosen["size"]
