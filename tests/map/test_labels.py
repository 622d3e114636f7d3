"""Region labels: class-based TF-IDF keywords, zero-shot labels with a real open_clip text tower, vocabularies."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import LatentError
from pipeline.map.labels import (
    DEFAULT_VOCABULARY,
    MAX_VOCABULARY,
    PROMPT,
    centroids_of,
    read_vocabulary,
    text_labels,
    zero_shot_labels,
)


def test_text_labels_name_each_region_by_its_distinctive_words():
    texts = ["a red fox in the snow", "the fox runs", "fox and snow"] + ["a sailing boat at sea", "boat harbour sea"]
    regions = np.array([0, 0, 0, 1, 1])
    labels = text_labels(texts, regions, 2)
    assert labels[0].split(", ")[0] in ("fox", "snow") and "boat" not in labels[0]
    assert "boat" in labels[1] or "sea" in labels[1]


def test_text_labels_of_regions_without_words_are_empty():
    assert text_labels(["", None], np.array([0, 1]), 2) == ["", ""]


def test_default_vocabulary_has_a_thousand_distinct_concepts():
    concepts = read_vocabulary(None)
    assert len(concepts) >= 1000 and len(set(concepts)) == len(concepts)
    assert "dog" in concepts and DEFAULT_VOCABULARY.is_file()


def test_vocabulary_files_missing_empty_or_too_large_are_refused(tmp_path):
    with pytest.raises(LatentError, match="no such file"):
        read_vocabulary(tmp_path / "nope.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n")
    with pytest.raises(LatentError, match="empty"):
        read_vocabulary(empty)
    large = tmp_path / "large.txt"
    large.write_text("\n".join(f"concept{i}" for i in range(MAX_VOCABULARY + 1)))
    with pytest.raises(LatentError, match="over the"):
        read_vocabulary(large)
    own = tmp_path / "own.txt"
    own.write_text("cat\ndog\ncat\n")
    assert read_vocabulary(own) == ["cat", "dog"]


@pytest.fixture(scope="module")
def text_tower(tiny_model):
    from pipeline.encode.encoder import ClipEncoder
    from pipeline.encode.model import resolve_model

    return ClipEncoder(resolve_model(tiny_model, None, "cpu", "fp32")).encode_texts


def test_zero_shot_labels_find_the_concept_a_region_is_made_of(text_tower):
    concepts = read_vocabulary(None)
    truth = ["bicycle", "volcano", "penguin", "guitar"]
    rng = np.random.default_rng(0)
    vectors, regions = [], []
    for r, concept in enumerate(truth):  # each region: noisy copies of the concept's own text vector
        centre = text_tower([PROMPT.format(concept)])[0]
        noisy = centre + 0.001 * rng.standard_normal((20, centre.shape[0])).astype(np.float32)
        vectors.append(noisy / np.linalg.norm(noisy, axis=1, keepdims=True))
        regions += [r] * 20
    vectors, regions = np.concatenate(vectors), np.array(regions)
    labels = zero_shot_labels(centroids_of(vectors, regions, 4), concepts, text_tower)
    assert labels == truth
