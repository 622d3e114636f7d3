"""Hybrid search on a real text corpus that ships in packages: scikit-learn's bundled dataset descriptions
and numpy's docstrings. Vectors: character n-gram TF-IDF reduced to 24 dimensions (robust to typos, blurs
rare identifiers); keywords: the index's BM25 (exact words only). Hybrid finds both kinds of answer."""

from __future__ import annotations

import inspect
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from index.helpers import build

from pipeline.errors import LatentError
from pipeline.search import Searcher

K = 10


def documents() -> list[tuple[str, str, str]]:
    """(id, source, text): the paragraphs of sklearn's bundled DESCRs, the first paragraphs of numpy's docstrings."""
    from sklearn import datasets

    docs = []
    for name in ("load_iris", "load_diabetes", "load_digits", "load_wine", "load_breast_cancer", "load_linnerud"):
        paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", getattr(datasets, name)().DESCR)]
        docs += [(f"sklearn.{name}#{i}", "sklearn", p) for i, p in enumerate(paragraphs) if len(p) > 60]
    for name in sorted(dir(np)):
        obj = getattr(np, name)
        if callable(obj) and obj.__doc__ and not name.startswith("_"):
            text = " ".join(" ".join(inspect.cleandoc(obj.__doc__).split("\n\n")[:2]).split())[:600]
            if len(text) > 40:
                docs.append((f"numpy.{name}", "numpy", text))
    return docs


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    docs = documents()
    texts = [t for _, _, t in docs]
    tfidf = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True).fit(texts)
    svd = TruncatedSVD(24, random_state=0).fit(tfidf.transform(texts))

    def embed(batch: list[str]) -> np.ndarray:
        x = svd.transform(tfidf.transform(batch)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def write(path, rows):
        path.mkdir()
        x = embed([t for _, _, t in rows])
        table = pa.table(
            {
                "id": [i for i, _, _ in rows],
                "source": [s for _, s, _ in rows],
                "text": [t for _, _, t in rows],
                "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1]),
            }
        )
        pq.write_table(table, path / "part-0.parquet")
        return path

    root = tmp_path_factory.mktemp("hybrid")
    emb = write(root / "emb", docs)
    index = root / "idx"
    build(emb, index, "index.factory=Flat", "index.text=bm25", "index.tune_queries=20")
    return Searcher.open(index), embed, write, root


# (query, the id it must find, which single mode misses it)
QUERIES = [
    ("Forina", "sklearn.load_wine#", "vector"),  # a rare name: exact words find it, 24 dims blur it
    ("PARVUS", "sklearn.load_wine#", "vector"),
    ("kronekcer prodcut", "numpy.kron", "keyword"),  # typos: no word matches, character n-grams do
    ("unravle flatt indx", "numpy.unravel_index", "keyword"),
]


def found(result, want: str) -> bool:
    return any(h is not None and h.startswith(want) for h in result.ids[0])


@pytest.mark.parametrize(("query", "want", "misses"), QUERIES)
def test_hybrid_finds_what_each_mode_misses(corpus, query, want, misses):
    searcher, embed, _, _ = corpus
    vector = embed([query])
    by_vector = searcher.search(vectors=vector, k=K)
    by_keyword = searcher.search(keywords=[query], mode="keyword", k=K)
    hybrid = searcher.search(vectors=vector, keywords=[query], mode="hybrid", k=K)
    assert found(by_vector, want) == (misses != "vector")
    assert found(by_keyword, want) == (misses != "keyword")
    assert found(hybrid, want), hybrid.ids[0]


def test_hybrid_rrf_scores_exact_phrase_and_where(corpus):
    searcher, embed, _, _ = corpus
    query = "chemical analysis of wines grown in the same region in Italy"
    hybrid = searcher.search(vectors=embed([query]), keywords=[query], mode="hybrid", k=K)
    assert hybrid.ids[0][0].startswith("sklearn.load_wine#")  # first in both lists: first fused
    assert hybrid.scores[0][0] == pytest.approx(2 / 61)  # reciprocal rank fusion, rank 1 in both, weight 1
    assert list(hybrid.scores[0]) == sorted(hybrid.scores[0], reverse=True)
    only_numpy = searcher.search(vectors=embed([query]), keywords=[query], mode="hybrid", k=K, where="source = 'numpy'")
    assert only_numpy.ids[0][0] is not None and all(h.startswith("numpy.") for h in only_numpy.ids[0] if h)
    heavy = searcher.search(vectors=embed(["Forina"]), keywords=["Forina"], mode="hybrid", k=1, keyword_weight=5.0)
    assert heavy.ids[0][0].startswith("sklearn.load_wine#")
    with pytest.raises(LatentError, match="mode=hybrid: give exactly one"):
        searcher.search(keywords=["Forina"], mode="hybrid", k=K)
    with pytest.raises(LatentError, match="mode=sideways"):
        searcher.search(vectors=embed(["x y"]), keywords=["x"], mode="sideways")


def test_append_keeps_the_keyword_index_in_sync(corpus, tmp_path):
    searcher, embed, write, root = corpus
    info = searcher.info.text
    assert info["kind"] == "bm25" and info["rows"] == searcher.ntotal and info["library"].startswith("bm25s ")
    recorded = [name for name in searcher.info.files if name.startswith("text.bm25/")]  # checksummed like the rest
    assert recorded and len(recorded) == len(info["files"])
    new = write(tmp_path / "new", [("note.zyxwvut", "notes", "a zyxwvut identifier nobody else uses")])
    build(new, root / "idx", "index.mode=append")
    after = Searcher.open(root / "idx")
    assert after.info.text["rows"] == after.ntotal == searcher.ntotal + 1
    assert after.search(keywords=["zyxwvut"], mode="keyword", k=K).ids[0][0] == "note.zyxwvut"
    from pipeline.index.store.directory import IndexDirectory
    from pipeline.index.store.integrity import IndexCorrupted

    vocab = root / "idx" / "text.bm25" / "vocab.index.json"
    original = vocab.read_text()
    vocab.write_text(original.replace("zyxwvut", "zyxwvuT"))  # same size, other bytes
    with pytest.raises(IndexCorrupted, match="vocab.index.json: sha256 differs"):
        IndexDirectory.open(root / "idx")
    vocab.write_text(original)


def test_no_keyword_index_is_a_clear_error(flat_index):
    searcher = Searcher.open(flat_index)
    with pytest.raises(LatentError, match="no keyword index"):
        searcher.search(keywords=["cat"], mode="keyword", k=3)


def test_cli_keyword_and_hybrid(corpus):
    import json

    from index.helpers import run_cli

    searcher, embed, _, root = corpus
    path = str(root / "idx")
    got = run_cli("search", f"index.path={path}", "mode=keyword", "keywords=PARVUS", "output=json", "k=3")
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["hits"][0]["id"].startswith("sklearn.load_wine#")
    vector = "[" + ",".join(f"{v:.6f}" for v in embed(["kronekcer prodcut"])[0]) + "]"
    hybrid = ["mode=hybrid", "keywords='kronekcer prodcut'", "output=json", "k=10"]
    got = run_cli("search", f"index.path={path}", f"query.vector={vector}", *hybrid)
    assert got.returncode == 0, got.stderr
    assert "numpy.kron" in [h["id"] for h in json.loads(got.stdout)["hits"]]
    bad = run_cli("search", f"index.path={path}", "mode=sideways", "keywords=x")
    assert bad.returncode == 2 and "mode=sideways" in bad.stderr
