"""The query routes' JSON (pipeline/serve/fast_json.py): pydantic-core parses and writes it, with the same values
as the json module, and the server's micro-batches take FAISS's BLAS path (issue 22: HTTP cost and batch speed)."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest

from pipeline.serve.batcher import BLAS_FROM
from pipeline.serve.fast_json import json_response, loads
from pipeline.serve.models import SearchResponse

EDGE_BODIES = [
    b'{"a":1,"a":2}',  # the last duplicate key wins
    b'{"k":100000000000000000000000000}',  # an int past 64 bits
    b'{"x":1E400, "y":-1E400, "z":Infinity, "w":-Infinity}',
    b'{"s":"\\ud800"}',  # a lone surrogate escape: pydantic-core refuses it, json accepts it
    b'{"s":"\\ud83d\\ude00", "n":"\\u0000"}',
    b'\xef\xbb\xbf{"a":1}',  # a UTF-8 byte order mark: the same
    b"[" * 300 + b"]" * 300,  # deeper than pydantic-core's nesting limit: the same
    b'{"x":-0.0, "y":-0, "z":1e-7, "w":2.2250738585072011e-308, "v":0.1000000000000000055511151231257827}',
    b' {"a": [1, 2.5, "t", true, false, null]} ',
]
BAD_BODIES = [b'{"a":1} x', b"{", b"", b'"\xff"', b"{'a': 1}", b"[1,]"]


@pytest.mark.parametrize("body", EDGE_BODIES)
def test_loads_gives_what_json_loads_gives(body):
    assert loads(body) == json.loads(body)


@pytest.mark.parametrize("body", BAD_BODIES)
def test_loads_refuses_what_json_loads_refuses_with_its_error(body):
    with pytest.raises(ValueError) as ours:
        loads(body)
    with pytest.raises(ValueError) as theirs:
        json.loads(body)
    assert type(ours.value) is type(theirs.value)  # JSONDecodeError: FastAPI's 422 json_invalid, as before


def test_loads_reads_every_float_of_a_vector_as_json_does():
    rng = np.random.default_rng(3)
    scales = [1.0] * 2000 + [1e-30] * 500 + [1e30] * 500
    values = rng.standard_normal(3000) * np.array(scales)
    texts = [
        json.dumps(values.tolist()),
        json.dumps([float(np.float32(v)) for v in values]),  # what a client sends from a float32 vector
        "[" + ",".join(f"{v:.17g}" for v in values) + "]",
        "[" + ",".join(f"{v:.6e}" for v in values) + "]",
    ]
    for text in texts:
        assert loads(text.encode()) == json.loads(text)


def test_json_response_writes_non_finite_floats_as_null():
    response = json_response({"a": float("nan"), "b": [float("inf"), 1.5], "c": "café"}, headers={"X-A": "1"})
    assert json.loads(response.body) == {"a": None, "b": [None, 1.5], "c": "café"}
    assert response.headers["content-type"] == "application/json" and response.headers["x-a"] == "1"


def test_a_search_answer_is_a_valid_SearchResponse_and_batches_take_the_blas_path(vector_server, vector_index):
    vector = np.ones(32, dtype=np.float32) / np.sqrt(32)
    with vector_server.client() as client:
        response = client.post("/search", json={"vector": vector.tolist(), "k": 5})
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    answer = SearchResponse.model_validate_json(response.content)  # the hand-written JSON keeps the model's shape
    want = vector_server.searcher.search(vectors=vector[None], k=5)
    assert [h.id for h in answer.hits] == [row["id"] for row in want.items[0]]
    assert [h.rank for h in answer.hits] == [1, 2, 3, 4, 5] and answer.query == "vector" and answer.k == 5
    assert np.allclose([h.score for h in answer.hits], want.scores[0], atol=1e-6)
    # the server (in this process) set FAISS's BLAS cut for its micro-batches: faiss 1.15.1 ships 128,000
    assert faiss.cvar.distance_compute_blas_threshold == BLAS_FROM
