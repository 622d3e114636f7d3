"""map.png: the whole map as a picture for a report (density, colours by region, labels without overlaps)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

MAX_SCATTER = 200_000  # points drawn as dots (a seeded sample); the density layer counts them all


def region_colours(n: int) -> np.ndarray:
    """``n`` distinct RGB colours (golden-angle hues), the same on the page and in map.png."""
    import colorsys

    return np.array([colorsys.hls_to_rgb((i * 0.618033988749895) % 1.0, 0.5, 0.65) for i in range(n)])


def place_labels(ax, positions: np.ndarray, texts: Sequence[str], sizes: Sequence[float]) -> int:
    """Draw labels biggest region first, skipping any whose box would overlap one already drawn; returns how
    many were drawn."""
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = []
    drawn = 0
    for i in np.argsort(-np.asarray(sizes)):
        if not texts[i]:
            continue
        artist = ax.text(
            positions[i, 0],
            positions[i, 1],
            texts[i],
            ha="center",
            va="center",
            fontsize=9,
            weight="bold",
            bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none", "alpha": 0.75},
        )
        box = artist.get_window_extent(renderer=renderer).expanded(1.05, 1.1)
        if any(box.overlaps(other) for other in boxes):
            artist.remove()
            continue
        boxes.append(box)
        drawn += 1
    return drawn


def render_map(
    path: str | Path,
    xy: np.ndarray,
    regions: np.ndarray,
    centres: np.ndarray,
    labels: Sequence[str],
    sizes: Sequence[int],
    *,
    title: str = "",
    seed: int = 0,
) -> int:
    """Write the picture to ``path``: grey density of all points, a sample coloured by (coarse) region,
    region labels placed without overlaps. Returns the number of labels drawn."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(12, 12), dpi=110)
    try:
        ax.hexbin(xy[:, 0], xy[:, 1], gridsize=200, bins="log", cmap="Greys", mincnt=1, linewidths=0, alpha=0.5)
        rng = np.random.default_rng(seed)
        shown = rng.choice(len(xy), size=min(MAX_SCATTER, len(xy)), replace=False)
        colours = region_colours(int(regions.max()) + 1 if len(regions) else 1)
        ax.scatter(xy[shown, 0], xy[shown, 1], s=0.6, c=colours[regions[shown]], linewidths=0, alpha=0.6)
        ax.set_aspect("equal")
        ax.set_axis_off()
        if title:
            ax.set_title(title)
        drawn = place_labels(ax, np.asarray(centres), labels, sizes)
        fig.savefig(path, bbox_inches="tight")
    finally:
        plt.close(fig)
    return drawn
