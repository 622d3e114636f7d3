"""Write the demo corpus: real photos bundled with scikit-image and scikit-learn, with captions.

usage: python jobs/demo_corpus.py OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

# scikit-image sample name -> caption written for it
SKIMAGE_CAPTIONS = {
    "astronaut": "portrait of astronaut Eileen Collins in her orange flight suit",
    "camera": "black and white photo of a man with a camera on a tripod",
    "chelsea": "a tabby cat looking to the side",
    "coffee": "a cup of coffee on a saucer seen from above",
    "coins": "old coins laid out on a dark background",
    "horse": "silhouette of a horse",
    "hubble_deep_field": "deep space galaxies photographed by the Hubble telescope",
    "immunohistochemistry": "microscope slide of stained tissue",
    "moon": "grey surface of the moon with craters",
    "page": "a scanned page of printed text",
    "rocket": "a rocket on the launch pad against a blue sky",
    "text": "handwritten and printed letters on a wall",
    "clock": "a wall clock",
    "brick": "a brick wall texture",
    "grass": "close-up of green grass",
    "gravel": "gravel stones texture",
    "colorwheel": "a colour wheel with the hues of the rainbow",
    "retina": "photo of the retina of a human eye",
}
# scikit-learn sample file -> caption
SKLEARN_CAPTIONS = {
    "china.jpg": "a Chinese temple with a pagoda roof among trees",
    "flower.jpg": "a close-up of a pink flower",
}


def write_corpus(out: Path) -> int:
    from skimage import data
    from sklearn.datasets import load_sample_images

    out.mkdir(parents=True, exist_ok=True)
    count = 0
    for name, caption in SKIMAGE_CAPTIONS.items():
        pixels = np.asarray(getattr(data, name)())
        if pixels.dtype != np.uint8:
            pixels = (pixels > 0).astype(np.uint8) * 255 if pixels.dtype == bool else pixels.astype(np.uint8)
        Image.fromarray(pixels).convert("RGB").save(out / f"{name}.jpg", quality=92)
        _write_sidecars(out / name, caption, {"source": "scikit-image", "name": name})
        count += 1
    samples = load_sample_images()
    for path, pixels in zip(samples.filenames, samples.images):
        filename = Path(path).name
        Image.fromarray(pixels).save(out / filename, quality=92)
        _write_sidecars(out / Path(filename).stem, SKLEARN_CAPTIONS[filename], {"source": "scikit-learn"})
        count += 1
    return count


def _write_sidecars(stem: Path, caption: str, metadata: dict) -> None:
    stem.with_suffix(".txt").write_text(caption)
    stem.with_suffix(".json").write_text(json.dumps(metadata))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    print(f"demo corpus: {write_corpus(Path(sys.argv[1]))} photos with captions in {sys.argv[1]}")
