"""`latent search`: the ranked table and the JSON document, in-process and as a real CLI subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from index.helpers import REPO, run_cli

from pipeline.cli import compose
from pipeline.search import QueryError, Searcher
from pipeline.search.command import run_search


def search(index, *overrides: str):
    return run_search(compose("search", [f"index.path={index}", "model.device=cpu", *overrides]))


def table_rows(text: str) -> list[list[str]]:
    lines = text.strip().splitlines()
    assert lines[0].split() == ["rank", "score", "id", "source", "text"]
    return [line.split(None, 4) for line in lines[1:]]


def test_table_lists_the_searcher_hits_in_rank_order(flat_index, vector_corpus, capsys):
    _, x = vector_corpus
    vector = ",".join(f"{v:.6f}" for v in x[3])
    search(flat_index, f"query.vector=[{vector}]", "k=4")
    rows = table_rows(capsys.readouterr().out)
    expected = Searcher.open(flat_index).search(vectors=x[3], k=4)
    assert [r[0] for r in rows] == ["1", "2", "3", "4"]
    assert [r[2] for r in rows] == expected.ids[0].tolist() and rows[0][2] == "v3"
    assert [float(r[1]) for r in rows] == pytest.approx(expected.scores[0].tolist(), abs=1e-4)
    assert rows[0][3:] == ["synthetic/3", "vector 3"]


def test_json_output_and_search_by_item(flat_index, capsys):
    search(flat_index, "query.id=v42", "k=3", "output=json")
    document = json.loads(capsys.readouterr().out)
    expected = Searcher.open(flat_index).search(vectors=Searcher.open(flat_index).vector("v42"), k=3)
    assert document["k"] == 3 and document["query"] == {"kind": "id"}
    assert [h["rank"] for h in document["hits"]] == [1, 2, 3]
    assert [h["id"] for h in document["hits"]] == expected.ids[0].tolist() and expected.ids[0, 0] == "v42"
    assert document["hits"][0] | {"score": 0} == {
        "rank": 1, "id": "v42", "source": "synthetic/42", "text": "vector 42", "group": 0, "score": 0,
    }  # fmt: skip
    assert [h["score"] for h in document["hits"]] == pytest.approx(expected.scores[0].tolist(), abs=1e-6)


def test_text_and_image_queries_in_process(photo_index, photos, tiny_checkpoint, capsys):
    search(photo_index, "query.text='a photo of coffee'", f"model.pretrained={tiny_checkpoint}", "k=6", "output=json")
    hits = json.loads(capsys.readouterr().out)["hits"]
    searcher = Searcher.open(
        photo_index, compose("search", ["index.path=x", f"model.pretrained={tiny_checkpoint}"]).model
    )
    assert [h["id"] for h in hits] == searcher.search(texts=["a photo of coffee"], k=6).ids[0].tolist()
    search(photo_index, f"query.image={photos / 'coffee.jpg'}", f"model.pretrained={tiny_checkpoint}", "k=2")
    rows = table_rows(capsys.readouterr().out)
    assert (rows[0][2], rows[0][4]) == ("coffee.jpg", "a photo of coffee")
    assert str(photos / "coffee.jpg").startswith(rows[0][3].rstrip("…"))  # long sources are shortened


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ([], "set exactly one of query.text, query.image, query.vector, query.id or query.terms (got none)"),
        (["query.text=a", "query.id=v1"], "(got query.text, query.id)"),
        (["query.vector=[1.0,2.0]"], "expected n x 32"),
        (["query.id=nope"], "query.id=nope: the item is not in the index"),
        (["query.id=v1", "k=0"], "k=0"),
    ],
)
def test_bad_queries_are_named(flat_index, overrides, message):
    with pytest.raises(QueryError) as err:
        search(flat_index, *overrides)
    assert message in str(err.value)


@pytest.mark.slow
def test_cli_prints_a_table_and_fails_cleanly(flat_index, photo_index, tiny_checkpoint):
    done = run_cli("search", f"index.path={flat_index}", "query.id=v7", "k=2")
    assert done.returncode == 0, done.stderr
    assert [r[2] for r in table_rows(done.stdout)][0] == "v7"
    bad = run_cli("search", f"index.path={flat_index}", "query.text=a cat")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "latent search: the index's vectors come from model 'synthetic'" in bad.stderr
    missing = run_cli("search", "query.text=x")
    assert missing.returncode == 2 and "index.path" in missing.stderr
    # the tiny model is registered in tests/tiny_cli.py's process: a real text query through the CLI
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    text = subprocess.run(
        [sys.executable, str(REPO / "tests" / "tiny_cli.py"), "search", f"index.path={photo_index}",
         "query.text='a photo of chelsea'", f"model.pretrained={tiny_checkpoint}", "output=json", "k=3"],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert text.returncode == 0, text.stderr
    expected = Searcher.open(
        photo_index, compose("search", ["index.path=x", f"model.pretrained={tiny_checkpoint}"]).model
    )
    ids = [h["id"] for h in json.loads(text.stdout)["hits"]]
    assert ids == expected.search(texts=["a photo of chelsea"], k=3).ids[0].tolist()
    assert np.isfinite([h["score"] for h in json.loads(text.stdout)["hits"]]).all()
