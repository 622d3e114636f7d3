"""map.html: the map as one self-contained offline file a user can email (no CDN, no server): pan (drag),
zoom (wheel), region labels by zoom level, hover text (id and regions). Up to ``MAX_POINTS`` points; a
seeded sample beyond, said on the page. Points travel base64-encoded in the file (float32 x, y; uint16
top-level region); regions and ids as JSON."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

MAX_POINTS = 200_000

PAGE = Path(__file__).with_name("map.html")  # the page, with __TITLE__ and __DATA__ filled in


def write_map_html(
    path: str | Path,
    xy: np.ndarray,
    levels: Sequence[np.ndarray],
    ids: Sequence[str],
    regions: Sequence[dict],
    *,
    title: str,
    seed: int = 0,
) -> int:
    """Write map.html: points ``xy`` (their region per level in ``levels``, coarse -> fine, and ``ids``),
    ``regions``: dicts with level, cluster, label, size, x, y. Returns the points written."""
    n = len(xy)
    keep = np.sort(np.random.default_rng(seed).choice(n, MAX_POINTS, replace=False)) if n > MAX_POINTS else None
    take = (lambda a: a[keep]) if keep is not None else (lambda a: a)
    xy, levels = take(np.asarray(xy, np.float32)), [take(np.asarray(level)) for level in levels]
    if hasattr(ids, "to_pylist"):  # an Arrow column: only the kept rows become Python strings
        ids = (ids.take(keep) if keep is not None else ids).to_pylist()
    ids = [ids[i] for i in keep] if keep is not None and len(ids) == n else list(ids)
    names = {(r["level"], r["cluster"]): r["label"] for r in regions}
    path_text = [
        " / ".join(names.get((lv, int(level[i])), "") for lv, level in enumerate(levels)) for i in range(len(xy))
    ]

    def b64(a: np.ndarray) -> str:
        return base64.b64encode(np.ascontiguousarray(a).tobytes()).decode()

    x, y = xy[:, 0], xy[:, 1]
    data = {
        "x": b64(x),
        "y": b64(y),
        "r": b64(levels[0].astype(np.uint16)),
        "ids": ids,
        "path": path_text,
        "total": n,
        "levels": len(levels),
        "bounds": [float(x.min()), float(y.min()), float(x.max()), float(y.max())] if len(x) else [0, 0, 1, 1],
        "regions": [r for r in regions if r["size"] and r["x"] == r["x"]],  # empty regions have no centroid
    }
    text = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")  # no "</script>" inside the script
    safe_title = title.replace("&", "&amp;").replace("<", "&lt;")
    Path(path).write_text(
        PAGE.read_text(encoding="utf-8").replace("__TITLE__", safe_title).replace("__DATA__", text), encoding="utf-8"
    )
    return len(xy)
