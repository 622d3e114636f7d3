"""map.png: the whole map as a picture for a report: every point visible, coloured by its top-level region,
the top level's labels large, the next level's smaller, none overlapping, a title and a count.

Hand-written with matplotlib (already a dependency) rather than datamapplot: datamapplot 0.7 pulls in
datashader, dask, distributed, bokeh, xarray and 20 more packages (pip's dry run, 2026-12-06) for what
is here one scatter and a label pass; a 1M-point scatter of a seeded sample stays within seconds."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAX_SCATTER = 200_000  # points drawn as dots (a seeded sample); the density layer counts them all
HALO = 3  # px of white around labels, so they read over the points


def region_colours(n: int) -> np.ndarray:
    """``n`` distinct RGB colours (golden-angle hues), the same on the page and in map.png."""
    import colorsys

    return np.array([colorsys.hls_to_rgb((i * 0.618033988749895) % 1.0, 0.5, 0.65) for i in range(n)])


@dataclass
class LabelLevel:
    """One level's labels: positions (region centroids), texts, sizes (rows: the bigger drawn first)."""

    positions: np.ndarray
    texts: Sequence[str]
    sizes: Sequence[float]
    fontsize: float
    weight: str = "bold"


def place_labels(ax, levels: Sequence[LabelLevel]) -> list[int]:
    """Draw each level's labels, coarse level first and biggest region first, skipping any whose box would
    overlap one already drawn; returns how many were drawn per level."""
    import matplotlib.patheffects as effects

    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes, drawn = [], []
    for level in levels:
        count = 0
        for i in np.argsort(-np.asarray(level.sizes, dtype=np.float64)):
            if not level.texts[i] or not np.isfinite(level.positions[i]).all():
                continue
            artist = ax.text(
                level.positions[i, 0],
                level.positions[i, 1],
                level.texts[i],
                ha="center",
                va="center",
                fontsize=level.fontsize,
                weight=level.weight,
                color="#111111",
                path_effects=[effects.withStroke(linewidth=HALO, foreground="white")],
            )
            box = artist.get_window_extent(renderer=renderer).expanded(1.05, 1.15)
            if any(box.overlaps(other) for other in boxes):
                artist.remove()
                continue
            boxes.append(box)
            count += 1
        drawn.append(count)
    return drawn


def render_map(
    path: str | Path,
    xy: np.ndarray,
    regions: np.ndarray,
    labels: Sequence[LabelLevel],
    *,
    title: str = "",
    seed: int = 0,
) -> list[int]:
    """Write the picture to ``path``: a seeded sample of up to ``MAX_SCATTER`` points coloured by their
    (top-level) ``regions``, dots sized for the count, the ``labels`` levels on top. Returns the labels drawn
    per level."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    n = len(xy)
    fig, ax = plt.subplots(figsize=(12, 12), dpi=110)
    try:
        if n > MAX_SCATTER:  # the points not drawn as dots still show, as a faint density
            ax.hexbin(xy[:, 0], xy[:, 1], gridsize=200, bins="log", cmap="Greys", mincnt=1, linewidths=0, alpha=0.35)
        shown = np.random.default_rng(seed).choice(n, size=min(MAX_SCATTER, n), replace=False)
        colours = region_colours(int(regions.max()) + 1 if n else 1)
        dot = float(np.clip(40_000 / max(len(shown), 1), 1.0, 40.0))  # marker area in pt^2: 100 points -> big dots
        ax.scatter(
            xy[shown, 0], xy[shown, 1], s=dot, c=colours[regions[shown]], linewidths=0, alpha=0.85 if n < 5000 else 0.6
        )
        ax.set_aspect("equal")
        ax.set_axis_off()
        ax.set_title(f"{title}\n{n:,} points, {len(labels[0].texts) if labels else 0} regions", fontsize=15)
        drawn = place_labels(ax, labels)
        fig.savefig(path, bbox_inches="tight")
    finally:
        plt.close(fig)
    return drawn
