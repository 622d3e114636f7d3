"""POST /search with ``where``: a compatible v1 extension (docs/http-api.md), 400 for a bad predicate."""

from __future__ import annotations

import numpy as np


def test_search_where_filters_and_refuses_bad_predicates(vector_server):
    vector = np.random.default_rng(1).standard_normal(32).tolist()
    with vector_server.client() as client:
        plain = client.post("/search", json={"vector": vector, "k": 10})
        assert plain.status_code == 200 and {h["metadata"]["group"] for h in plain.json()["hits"]} != {3}
        assert plain.json()["plan"] is None  # no where: no plan
        got = client.post("/search", json={"vector": vector, "k": 10, "where": "group = 3 AND text LIKE 'vector %'"})
        assert got.status_code == 200, got.text
        hits = got.json()["hits"]
        assert len(hits) == 10 and {h["metadata"]["group"] for h in hits} == {3}
        exact = vector_server.searcher.search(vectors=np.asarray([vector], np.float32), k=300)
        want = [h["id"] for h in exact.items[0] if h["group"] == 3][:10]
        assert [h["id"] for h in hits] == want  # Flat: the filtered answer is brute force over the matches
        plan = got.json()["plan"]  # the chosen plan, as Searcher.search reports it
        matched = int(vector_server.searcher.columns.mask("group = 3 AND text LIKE 'vector %'")[1].sum())
        assert plan["kind"] == "exact" and plan["where"] == "group = 3 AND text LIKE 'vector %'"
        assert plan["matched"] == matched and plan["rows"] == vector_server.searcher.ntotal
        assert abs(plan["selectivity"] - matched / plan["rows"]) < 1e-5 and set(plan["cost"]) >= {"exact", "filtered"}
        none = client.post("/search", json={"vector": vector, "k": 10, "where": "group > 100"})
        assert none.status_code == 200 and none.json()["hits"] == []
        assert none.json()["plan"]["kind"] == "none" and none.json()["plan"]["matched"] == 0
        for bad, says in (
            ("nope = 1", "unknown column 'nope'"),
            ("group = 'three'", "holds number values"),
            ("1=1; DROP TABLE items", "where: unexpected"),
            ("read_csv('/etc/passwd') IS NOT NULL", "unknown function"),
            (" OR ".join(["group = 1"] * 10_000), "more than 256 tests"),
            ("(" * 5000 + "group = 1" + ")" * 5000, "nested more than"),
        ):
            response = client.post("/search", json={"vector": vector, "k": 10, "where": bad})
            assert response.status_code == 400 and says in response.json()["detail"], (bad[:40], response.text)
        schemas = client.get("/openapi.json").json()["components"]["schemas"]
        assert "where" in schemas["SearchRequest"]["properties"]
        assert "plan" in schemas["SearchResponse"]["properties"] and "plan" not in schemas["SearchResponse"]["required"]
        assert {"kind", "matched", "selectivity"} <= set(schemas["SearchPlan"]["properties"])
