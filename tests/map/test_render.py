"""map.png: points coloured by top-level region, two label levels drawn without overlaps, a title and a count."""

from __future__ import annotations

import numpy as np
from PIL import Image

from pipeline.map.render import LabelLevel, render_map


def test_map_png_draws_both_levels_without_overlaps(tmp_path):
    rng = np.random.default_rng(0)
    top = rng.integers(0, 4, 100)
    xy = (np.array([[0, 0], [30, 0], [0, 30], [30, 30]])[top] + rng.standard_normal((100, 2))).astype(np.float32)
    centres = np.array([[0, 0], [30, 0], [0, 30], [30, 30]], np.float64)
    coarse = LabelLevel(centres, ["north", "east", "south", "west"], [25, 25, 25, 25], 15)
    # the finer level: one label far from the others, three on top of the coarse labels (left out)
    fine = LabelLevel(np.vstack([centres[:3], [[15, 15]]]), ["a", "b", "c", "middle"], [9, 8, 7, 6], 8, "normal")
    drawn = render_map(tmp_path / "map.png", xy, top.astype(np.int32), [coarse, fine], title="four corners")
    assert drawn == [4, 1]
    image = np.asarray(Image.open(tmp_path / "map.png").convert("RGB")).reshape(-1, 3).astype(int)
    coloured = (image.max(axis=1) - image.min(axis=1)) > 60  # saturated pixels: the dots, not grey or white
    assert coloured.mean() > 0.002  # 100 points are visible dots, not specks
