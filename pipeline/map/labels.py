"""Names of regions: distinctive keywords of their texts (class-based TF-IDF), or, for image-only
corpora, zero-shot labels in the model's own space (a region's centroid against a vocabulary encoded
by the model's text tower).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.config import LabelMethod
from pipeline.errors import LatentError

if TYPE_CHECKING:
    from pipeline.config import MapCommandConfig
    from pipeline.map.source import MapSource

DEFAULT_VOCABULARY = Path(__file__).with_name("vocabulary.txt")
MAX_VOCABULARY = 100_000  # concepts; a larger file is refused (each is one text-tower forward pass)
MAX_VOCABULARY_BYTES = 10 * 1024 * 1024
PROMPT = "a photo of {}"
KEYWORDS = 3  # keywords per text label


def read_vocabulary(path: str | Path | None) -> list[str]:
    """The concepts of a vocabulary file (one per line, ``#`` comments); ``None``: the default one."""
    path = Path(path) if path is not None else DEFAULT_VOCABULARY
    key = f"map.vocabulary={path}"
    if not path.is_file():
        raise LatentError(f"{key}: no such file (a text file with one concept per line)")
    if path.stat().st_size > MAX_VOCABULARY_BYTES:
        raise LatentError(f"{key}: {path.stat().st_size:,} bytes, over the {MAX_VOCABULARY_BYTES:,} allowed")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise LatentError(f"{key}: not UTF-8 text ({err})") from err
    concepts = list(dict.fromkeys(line.strip() for line in lines if line.strip() and not line.startswith("#")))
    if not concepts:
        raise LatentError(f"{key}: the file is empty (no concepts, one per line)")
    if len(concepts) > MAX_VOCABULARY:
        raise LatentError(f"{key}: {len(concepts):,} concepts, over the {MAX_VOCABULARY:,} allowed")
    return concepts


def text_labels(texts: Sequence[str | None], regions: np.ndarray, n_regions: int) -> list[str]:
    """Per region, its ``KEYWORDS`` most distinctive words by class-based TF-IDF:
    ``tf(t, c) * log(1 + A / f(t))`` (term frequency in the region's texts, A the mean words per region,
    f the term's frequency over all regions)."""
    from sklearn.feature_extraction.text import CountVectorizer

    docs = [t or "" for t in texts]
    try:
        vectorizer = CountVectorizer(stop_words="english", token_pattern=r"(?u)\b[^\W\d_]{3,}\b", max_features=50000)
        counts = vectorizer.fit_transform(docs)
    except ValueError:  # no words at all
        return [""] * n_regions
    import scipy.sparse as sp

    member = sp.csr_matrix((np.ones(len(docs)), (regions, np.arange(len(docs)))), shape=(n_regions, len(docs)))
    per_region = np.asarray((member @ counts).todense(), dtype=np.float64)
    words = per_region.sum(axis=1, keepdims=True)
    tf = per_region / np.maximum(words, 1)
    idf = np.log1p(words.mean() / np.maximum(per_region.sum(axis=0), 1))
    scores = tf * idf
    vocab = vectorizer.get_feature_names_out()
    labels = []
    for row, total in zip(scores, words[:, 0]):
        top = [i for i in np.argsort(-row)[:KEYWORDS] if row[i] > 0] if total else []
        labels.append(", ".join(vocab[i] for i in top))
    return labels


def zero_shot_labels(
    centroids: np.ndarray, concepts: Sequence[str], encode_texts: Callable[[list[str]], np.ndarray], batch: int = 256
) -> list[str]:
    """Per region, the concept of the vocabulary nearest its (unit) centroid in the model's space (CLIP's
    zero-shot rule), each concept used once per level: regions are served biggest margin first, and a
    region whose best concept is taken gets its next best."""
    vocab = np.concatenate(
        [encode_texts([PROMPT.format(c) for c in concepts[i : i + batch]]) for i in range(0, len(concepts), batch)]
    ).astype(np.float32)
    c = centroids / np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    sims = c @ vocab.T
    scores = sims
    labels = [""] * len(c)
    used: set[int] = set()
    for region in np.argsort(-scores.max(axis=1)):
        for concept in np.argsort(-scores[region]):
            if concept not in used:
                used.add(int(concept))
                labels[region] = concepts[concept]
                break
        else:
            labels[region] = concepts[int(np.argmax(scores[region]))]
    return labels


def centroids_of(vectors: np.ndarray, regions: np.ndarray, n_regions: int) -> np.ndarray:
    """Mean vector of each region's rows."""
    sums = np.zeros((n_regions, vectors.shape[1]), dtype=np.float64)
    np.add.at(sums, regions, vectors)
    counts = np.bincount(regions, minlength=n_regions)[:, None]
    return (sums / np.maximum(counts, 1)).astype(np.float32)


def label_method(cfg: MapCommandConfig, source: MapSource, texts: list[str | None]) -> str:
    """``map.labels`` resolved for this source (auto: text, else zero-shot, else none), checked."""
    chosen = cfg.map.labels
    with_text = sum(1 for t in texts if t and t.strip())
    if chosen == LabelMethod.auto:
        if with_text >= 0.5 * max(1, len(texts)):
            return "text"
        return "zero_shot" if known_model(source) else "none"
    if chosen == LabelMethod.zero_shot and not known_model(source):
        raise LatentError(
            "map.labels=zero_shot needs the source's open_clip model, but its vectors carry no model fingerprint "
            "of an open_clip model (e.g. .npy or synthetic inputs): use map.labels=text or none"
        )
    if chosen == LabelMethod.text and not with_text:
        raise LatentError("map.labels=text: the source's rows have no text (captions); use zero_shot or none")
    return chosen.value


def known_model(source: MapSource) -> bool:
    import open_clip

    model = source.model or {}
    return bool(model.get("name")) and model["name"] in open_clip.list_models()


def text_encoder(cfg: MapCommandConfig, source: MapSource):
    """The source's own model's text tower (checked against its fingerprint, as a Searcher's)."""
    from types import SimpleNamespace

    from pipeline.encode.encoder import ClipEncoder
    from pipeline.search.query_model import resolve_query_model

    spec = resolve_query_model(SimpleNamespace(embedding=source.embedding, dim=source.dim), cfg.model)
    return ClipEncoder(spec).encode_texts


def make_labels(
    cfg: MapCommandConfig, source: MapSource, method: str, vectors: np.ndarray, texts: list, regions
) -> list[list[str]]:
    """Labels per level (``region <n>`` where a method finds nothing)."""
    out = []
    encode = concepts = None
    if method == "zero_shot":
        concepts = read_vocabulary(cfg.map.vocabulary)
        encode = text_encoder(cfg, source)
    for level, assigned in enumerate(regions.landmark_labels):
        n = len(regions.parents[level])
        if method == "text":
            names = text_labels(texts, assigned, n)
        elif method == "zero_shot":
            names = zero_shot_labels(centroids_of(vectors, assigned, n), concepts, encode)
        else:
            names = [""] * n
        out.append([name or f"region {level}.{i}" for i, name in enumerate(names)])
    return out
