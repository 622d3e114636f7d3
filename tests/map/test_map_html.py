"""map.html opened from disk in Chromium with every network request blocked: it draws, labels, hovers, zooms."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from serve.test_page import browser  # noqa: F401  (fixture)

from pipeline.map.map_html import write_map_html

pytestmark = pytest.mark.browser


def test_map_html_works_offline_from_disk(browser, tmp_path):  # noqa: F811
    rng = np.random.default_rng(0)
    top = rng.integers(0, 3, 300)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [5.0, 8.0]])
    xy = (centres[top] + rng.standard_normal((300, 2))).astype(np.float32)
    regions = [
        {"level": 0, "cluster": i, "parent": -1, "label": name, "size": int((top == i).sum()), "x": c[0], "y": c[1]}
        for i, (name, c) in enumerate(zip(["cats", "rockets", "coffee"], centres))
    ]
    ids = pa.chunked_array([[f"item-{i}" for i in range(300)]])
    path = tmp_path / "map.html"
    assert write_map_html(path, xy, [top], ids, regions, title="three regions </script>") == 300
    page = browser.new_context(viewport={"width": 900, "height": 700}).new_page()
    blocked: list[str] = []
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.route(
        "**/*",
        lambda r: r.continue_() if r.request.url.startswith("file:") else (blocked.append(r.request.url), r.abort()),
    )
    page.goto(path.as_uri())
    page.wait_for_function("() => window.ready === true")
    assert not errors and not blocked, (errors, blocked)
    assert "300 points" in page.text_content("#head")
    assert sorted(page.evaluate("() => window.shown")) == ["cats", "coffee", "rockets"]
    x, y = page.evaluate("() => [sx(X[7]), sy(Y[7])]")
    page.mouse.move(x, y)
    assert page.is_visible("#tip") and "item-" in page.text_content("#tip")
    before = page.evaluate("() => view.s")
    page.mouse.wheel(0, -400)
    page.wait_for_function("(b) => view.s > b", arg=before)
    assert not page.is_visible("#tip")  # the view moved: the tooltip went
