"""Searcher.search(where=...): filtered answers equal brute force over the matched rows (Flat), keep recall@k
at the target at every selectivity (IVF, HNSW, both plans), merge exactly across shards, and say what ran."""

from __future__ import annotations

import datetime as dt
import json

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from index.helpers import build, run_cli, vectors

from pipeline.errors import LatentError
from pipeline.index.nodes import apply_search_params
from pipeline.search import Searcher
from pipeline.search.plan import plan_search, run_plan

N, DIM, K = 6000, 32, 10
SELECTIVITIES = (0.5, 0.05, 0.005, 0.0001)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A foreign Parquet corpus: vectors plus typed metadata and a JSON sidecar column (``metadata``)."""
    x = vectors(N + 100, dim=DIM, seed=3)
    rng = np.random.default_rng(5)
    u = rng.permutation(N)  # uncorrelated with the vectors: u < s*N selects a fraction s
    root = tmp_path_factory.mktemp("filtered") / "emb"
    root.mkdir()
    start = dt.datetime(2024, 1, 1)
    for part, lo in enumerate(range(0, N, 2000)):
        rows = np.arange(lo, lo + 2000)
        sidecar = [json.dumps({"license": "cc-by" if r % 3 == 0 else "cc0", "year": 2020 + int(r) % 5}) for r in rows]
        table = pa.table(
            {
                "id": [f"r{r}" for r in rows],
                "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x[rows].reshape(-1)), DIM),
                "u": u[rows],
                "cat": [None if r % 11 == 0 else f"c{r % 4}" for r in rows],
                "ok": rows % 2 == 0,
                "ts": pa.array([start + dt.timedelta(hours=int(r)) for r in rows], pa.timestamp("s")),
                "metadata": sidecar,
            }
        )
        pq.write_table(table, root / f"part-{part}.parquet")
    return root, x[:N], x[N:], u


def truth(searcher: Searcher, x: np.ndarray, queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Exact top-K labels among input ``rows`` (brute force on the original vectors)."""
    if rows.size == 0:
        return np.full((len(queries), K), -1)
    _, local = faiss.knn(queries, x[rows], min(K, rows.size), metric=faiss.METRIC_INNER_PRODUCT)
    labels = searcher.directory.labels_of([f"r{r}" for r in rows])
    return np.where(local >= 0, labels[np.maximum(local, 0)], -1)


def labels_of(searcher: Searcher, result) -> np.ndarray:
    out = np.full(result.ids.shape, -1)
    hit = result.ids != None  # noqa: E711 (object array)
    out[hit] = searcher.directory.labels_of(result.ids[hit].tolist())
    return out


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    per = [len(set(f[f >= 0]) & set(t[t >= 0])) / max(1, int((t >= 0).sum())) for f, t in zip(found, exact)]
    return float(np.mean(per))


@pytest.fixture(scope="module")
def flat(corpus, tmp_path_factory):
    path = tmp_path_factory.mktemp("flat") / "idx"
    build(corpus[0], path, "index.factory=Flat")
    return Searcher.open(path)


def test_metadata_schema_in_index_json(flat):
    meta = flat.info.metadata
    kinds = {name: c["kind"] for name, c in meta["columns"].items()}
    assert kinds == {"id": "string", "source": "string", "text": "string", "u": "number", "cat": "string",
                     "ok": "bool", "ts": "timestamp", "metadata": "string"}  # fmt: skip
    assert meta["columns"]["cat"]["nulls"] == sum(1 for r in range(N) if r % 11 == 0)
    assert meta["sidecar"] == {
        "metadata.license": {"type": "string", "kind": "string", "nulls": 0},
        "metadata.year": {"type": "int64", "kind": "number", "nulls": 0},
    }
    assert 0 < meta["bytes_per_row"] < 400


def test_flat_filtered_equals_brute_force(flat, corpus):
    _, x, queries, u = corpus
    rows = np.arange(N)
    cases = {
        "u < 600": u < 600,
        "cat IN ('c1', 'c2') AND NOT ok": np.isin(rows % 4, [1, 2]) & (rows % 11 != 0) & (rows % 2 == 1),
        "cat IS NULL OR u BETWEEN 10 AND 30": (rows % 11 == 0) | ((u >= 10) & (u <= 30)),
        "ts >= TIMESTAMP '2024-03-01' AND cat LIKE 'c_'": (rows >= 60 * 24) & (rows % 11 != 0),
        "metadata.license = 'cc-by' AND metadata.year >= 2023": (rows % 3 == 0) & (rows % 5 >= 3),
        "starts_with(id, 'r59')": np.array([str(r).startswith("59") for r in rows]),
    }
    for where, mask in cases.items():
        result = flat.search(vectors=queries[:20], k=K, where=where)
        want = truth(flat, x, queries[:20], np.flatnonzero(mask))
        assert labels_of(flat, result).tolist() == want.tolist(), where
        assert result.plan["matched"] == int(mask.sum()) and result.plan["where"] == where
        for hits in result.items:  # the hits' metadata rows satisfy the predicate
            assert all(mask[int(hit["id"][1:])] for hit in hits)


def test_no_match_gives_empty_hits_and_bad_predicates_raise(flat, corpus):
    queries = corpus[2][:3]
    result = flat.search(vectors=queries, k=K, where="u > 99999")
    assert result.plan["kind"] == "none" and result.items == [[], [], []]
    assert all(h is None for h in result.ids.ravel()) and np.isnan(result.scores).all()
    few = flat.search(vectors=queries, k=K, where="u < 3")  # fewer matches than k: the rest are empty
    assert [len(hits) for hits in few.items] == [3, 3, 3] and (few.ids[:, 3:] == None).all()  # noqa: E711
    for bad in ("nope = 1", "u = 'x'", "ok > 1", "1=1; DROP TABLE items", "read_csv('/etc/passwd') IS NOT NULL"):
        with pytest.raises(LatentError, match="where: "):
            flat.search(vectors=queries, k=K, where=bad)


@pytest.fixture(scope="module", params=["IVF64,PQ8x4fs,Refine(SQfp16)", "HNSW32,Flat"])
def ann(request, corpus, tmp_path_factory):
    path = tmp_path_factory.mktemp("ann") / "idx"
    build(corpus[0], path, f"index.factory='{request.param}'", "index.target_recall=0.95")
    return Searcher.open(path)


@pytest.mark.parametrize("selectivity", SELECTIVITIES)
def test_ann_keeps_target_recall_at_every_selectivity(ann, corpus, selectivity):
    _, x, queries, u = corpus
    cut = max(1, int(selectivity * N))
    where = f"u < {cut}"
    mask = ann.columns.mask(where)[1]
    exact = truth(ann, x, queries, np.flatnonzero(u < cut))
    target = ann.info.recall.target
    result = ann.search(vectors=queries, k=K, where=where)  # the planner's choice
    assert recall(labels_of(ann, result), exact) >= target, result.plan
    plan = plan_search(ann.directory.index, mask, K, where)  # and the filtered plan forced, however selective,
    if plan.cost["filtered"] == float("inf"):  # unless its breadth is capped (a graph): then it is never chosen
        assert result.plan["kind"] == "exact"
        return
    plan.kind = "filtered"
    _, found = run_plan(plan, ann.directory.index, mask, queries, K, ann.info.metric)
    assert recall(found, exact) >= target, plan
    assert mask[found[found >= 0]].all()


def test_planner_goes_exact_when_few_rows_match(ann, corpus):
    queries = corpus[2][:5]
    assert ann.search(vectors=queries, k=K, where="u < 50").plan["kind"] == "exact"
    wide = ann.search(vectors=queries, k=K, where="u < 5000").plan
    assert wide["kind"] == "filtered" and wide["matched"] == 5000
    inner = "nprobe" if "IVF" in ann.info.factory else "efSearch"
    assert wide["params"][inner] >= ann.info.search_params.get(inner, 0)


def test_sharded_filtered_search_merges_exactly(local_ray, corpus, tmp_path):
    src, x, queries, u = corpus
    common = ["index.factory='IVF16,Flat'", "index.target_recall=0.9"]
    build(src, tmp_path / "one", *common)
    build(src, tmp_path / "two", *common, "index.shards=2")
    one, two = Searcher.open(tmp_path / "one"), Searcher.open(tmp_path / "two")
    assert len(two.info.shards) == 2 and two.info.metadata["columns"] == one.info.metadata["columns"]
    apply_search_params(two.directory.index, one.info.search_params)  # both at the same parameters
    for where in ("u < 3000", "u < 100", "cat = 'c3' AND ok"):
        a = one.search(vectors=queries, k=K, where=where)
        b = two.search(vectors=queries, k=K, where=where)
        assert a.plan["kind"] == b.plan["kind"] and a.plan["matched"] == b.plan["matched"]
        assert a.ids.tolist() == b.ids.tolist(), where  # every shard filtered, merged exactly
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6)
        by_row = two.columns.mask(where)[1][two.directory.labels_of([f"r{r}" for r in range(N)])]
        assert all(by_row[int(h[1:])] for h in b.ids.ravel() if h is not None)


def test_cli_search_where(flat):
    path = str(flat.directory.path)
    ok = run_cli("search", f"index.path={path}", "query.id=r7", 'where="u < 600 AND ok"', "output=json", "verbose=true")
    assert ok.returncode == 0, ok.stderr
    document = json.loads(ok.stdout)
    assert document["where"] == "u < 600 AND ok" and document["plan"]["kind"] == "exact"
    mask = flat.columns.mask("u < 600 AND ok")[1]
    assert document["hits"] and all(mask[flat.directory.label_of(h["id"])] for h in document["hits"])
    assert "plan: exact" in ok.stderr
    bad = run_cli("search", f"index.path={path}", "query.id=r7", 'where="nope = 1"')
    assert bad.returncode == 2 and "where: unknown column 'nope'" in bad.stderr


def test_knn_where_inline(tmp_path, flat_index, vector_corpus):
    """`latent knn where=...` (inline, no Ray): every neighbour matches, as Searcher.search(where=) answers."""
    import pyarrow.dataset as pads

    from pipeline.cli import compose
    from pipeline.search.knn import run_knn

    path, x = vector_corpus
    base = [f"input.path={path}", f"index.path={flat_index}", "progress=false", "k=4", "ray.inline_max_rows=100000"]
    with pytest.raises(LatentError, match="where: unknown column 'nope'"):
        run_knn(compose("knn", [*base, f"output.path={tmp_path / 'bad'}", 'where="nope = 1"']))
    assert not (tmp_path / "bad").exists()
    run_knn(compose("knn", [*base, f"output.path={tmp_path / 'out'}", 'where="group = 3"']))
    got = pads.dataset(str(tmp_path / "out" / "neighbors"), format="parquet").to_table().to_pylist()
    assert len(got) == len(x)
    assert all(int(n[1:]) % 7 == 3 for row in got for n in row["neighbor_ids"])
    rows = [int(r["query_id"][1:]) for r in got[:50]]
    expected = Searcher.open(flat_index).search(vectors=x[rows], k=4, where="group = 3", with_items=False)
    assert [r["neighbor_ids"] for r in got[:50]] == expected.ids.tolist()


def test_knn_where_column_per_query_inline(tmp_path, flat_index, vector_corpus):
    """`input.where_column`: each query searched with its own predicate (ANDed with where=), batched by
    predicate; a bad predicate in any row stops the job before anything is written (exit 2 from the CLI)."""
    import pyarrow.dataset as pads

    from pipeline.cli import compose
    from pipeline.search.knn import run_knn

    _, x = vector_corpus
    n = 60
    own = ["group = 3", "group IN (1, 2)", None, "", "group >= 5 AND text LIKE 'vector%'"]
    wheres = [own[i % len(own)] for i in range(n)]
    table = pa.table(
        {
            "id": [f"q{i}" for i in range(n)],
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x[:n].reshape(-1)), x.shape[1]),
            "filter": wheres,
        }
    )
    queries = tmp_path / "queries.parquet"
    pq.write_table(table, queries, row_group_size=25)
    base = [f"input.path={queries}", f"index.path={flat_index}", "progress=false", "k=5", "ray.inline_max_rows=100000"]
    base += ["batch_size=16", "input.where_column=filter"]
    run_knn(compose("knn", [*base, f"output.path={tmp_path / 'out'}", 'where="group != 2"']))
    got = {r["query_id"]: r for r in pads.dataset(str(tmp_path / "out" / "neighbors")).to_table().to_pylist()}
    assert len(got) == n
    searcher = Searcher.open(flat_index)
    for i in range(n):
        combined = "group != 2" if not wheres[i] else f"(group != 2) AND ({wheres[i]})"
        expected = searcher.search(vectors=x[i : i + 1], k=5, where=combined, with_items=False)
        assert got[f"q{i}"]["neighbor_ids"] == [h for h in expected.ids[0].tolist() if h is not None], (i, combined)
    assert {int(h[1:]) % 7 for h in got["q0"]["neighbor_ids"]} == {3}
    assert {int(h[1:]) % 7 for h in got["q1"]["neighbor_ids"]} == {1}  # IN (1, 2) AND != 2
    # a bad predicate in row 47 (second row group): refused naming the column and the row; nothing written
    bad = table.set_column(2, "filter", pa.array([*wheres[:47], "nope = 1", *wheres[48:]], pa.string()))
    pq.write_table(bad, queries, row_group_size=25)
    with pytest.raises(LatentError, match=r"input.where_column=filter, row queries.parquet:47 .*unknown column 'nope'"):
        run_knn(compose("knn", [*base, f"output.path={tmp_path / 'bad'}"]))
    assert not (tmp_path / "bad").exists()
    cli = run_cli("knn", *base, f"output.path={tmp_path / 'bad'}")
    assert cli.returncode == 2 and "unknown column 'nope'" in cli.stderr and not (tmp_path / "bad").exists()
    numbers = table.set_column(2, "filter", pa.array(range(n)))
    pq.write_table(numbers, queries)
    with pytest.raises(LatentError, match="input.where_column=filter holds int64"):
        run_knn(compose("knn", [*base, f"output.path={tmp_path / 'bad'}"]))
