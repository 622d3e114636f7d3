"""The map's cross-filter: POST /map/filter (one bit per point), the map page dimming the points outside a
where= filter, and a map selection turned into a filter the search page takes (real Chromium)."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from serve.test_map_api import map_index, map_server, photo_map  # noqa: F401  (fixtures)
from serve.test_map_page import map_page  # noqa: F401  (fixture)
from serve.test_page import browser, card_ids  # noqa: F401  (fixture)


def point_bits(response: httpx.Response) -> np.ndarray:
    n = int(response.headers["X-Points"])
    return np.unpackbits(np.frombuffer(response.content, np.uint8), count=n, bitorder="little").astype(bool)


def test_map_filter_answers_one_bit_per_point(map_server, server):  # noqa: F811
    state = map_server.app.state.ctx.map
    ids = state.ids.to_pylist()
    texts = {row["id"]: row["text"] for row in (map_server.searcher.item(i) for i in ids)}
    got = httpx.post(map_server.url + "/map/filter", json={"where": "text LIKE 'a photo of c%'"})
    assert got.status_code == 200 and got.headers["content-type"] == "application/octet-stream"
    bits = point_bits(got)
    assert [ids[i] for i in np.flatnonzero(bits)] == [i for i in ids if texts[i].startswith("a photo of c")]
    assert int(got.headers["X-Matched"]) == int(bits.sum()) == 4  # camera, chelsea, coffee, coins
    bad = httpx.post(map_server.url + "/map/filter", json={"where": "nope = 1"})
    assert bad.status_code == 400 and "unknown column 'nope'" in bad.json()["detail"]
    none = httpx.post(server.url + "/map/filter", json={"where": "text = 'x'"})  # an index without a map
    assert none.status_code == 404 and "latent map" in none.json()["detail"]


@pytest.mark.browser
def test_the_map_dims_points_outside_a_filter_and_a_selection_becomes_a_search_filter(map_page, browser):  # noqa: F811
    before = map_page.evaluate("() => [0, 1, 2, 3, 4, 5].map((i) => latentMap.pixelOf(i))")
    map_page.fill("#map-where", "text = 'a photo of rocket'")
    map_page.press("#map-where", "Enter")
    map_page.wait_for_function("() => latentMap.filter && latentMap.filter.matched === 1")
    assert "1 of 6 points match" in map_page.text_content("#map-status")
    dimmed = map_page.evaluate("() => latentMap.dimmed")
    assert len(dimmed) == 5
    kept = ({0, 1, 2, 3, 4, 5} - set(dimmed)).pop()
    map_page.wait_for_function("(i) => Math.min(...latentMap.pixelOf(i).slice(0, 3)) > 200", arg=dimmed[0])
    after = map_page.evaluate("() => [0, 1, 2, 3, 4, 5].map((i) => latentMap.pixelOf(i))")
    for i in dimmed:  # washed out towards white
        assert min(after[i][:3]) > 200 and min(after[i][:3]) > min(before[i][:3]), (i, before[i], after[i])
    assert after[kept] == before[kept]  # the matching point is drawn as before
    map_page.fill("#map-where", "nope = 1")
    map_page.press("#map-where", "Enter")
    map_page.wait_for_function("() => document.querySelector('#map-status').textContent.includes(\"unknown column\")")

    # a region selected on the map -> a filter (its ids) -> the search page searches only those items
    map_page.evaluate("() => latentMap.selectRegion(0, 0)")
    map_page.wait_for_function("() => latentMap.selectionIds && latentMap.selectionIds.length > 0")
    chosen = map_page.evaluate("() => latentMap.selectionIds")
    map_page.click("#selection-filter")
    map_page.wait_for_function("(n) => latentMap.filter && latentMap.filter.matched === n", arg=len(chosen))
    assert map_page.input_value("#map-where").startswith("id IN ('")
    assert len(map_page.evaluate("() => latentMap.dimmed")) == 6 - len(chosen)
    href = map_page.get_attribute("#filter-search", "href")
    search = browser.new_page()
    search.goto(map_page.url.rsplit("/map", 1)[0] + "/" + href.lstrip("./"))
    assert search.input_value("#where") == map_page.input_value("#map-where")
    search.fill("#query", "a photo")
    search.press("#query", "Enter")
    search.wait_for_function("() => document.querySelector('#status').textContent.includes('filter:')")
    assert sorted(card_ids(search)) == sorted(chosen)
    search.close()
