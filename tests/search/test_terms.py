"""Weighted terms and routes through latent space: parsing, the combined vector, slerp, `latent path`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from index.helpers import run_cli

from pipeline.search import Searcher
from pipeline.search.terms import Term, TermError, combine_terms, find_path, parse_terms, slerp


def test_parse_terms_reads_ids_images_texts_signs_and_weights():
    terms = parse_terms("id:v12 + 'cyberpunk' - 0.5*\"day light\" + image:/p/cat.jpg")
    assert [(t.kind, t.value, t.weight) for t in terms] == [
        ("id", "v12", 1.0),
        ("text", "cyberpunk", 1.0),
        ("text", "day light", -0.5),
        ("image", "/p/cat.jpg", 1.0),
    ]


@pytest.mark.parametrize("bad", ["", "id:v1 +", "cyberpunk", "id:a id:b", "'x' + 0*'y'", "'   '"])
def test_unreadable_expressions_say_why(bad):
    with pytest.raises(TermError, match="terms"):
        parse_terms(bad)


def test_combined_vector_is_the_normalised_weighted_sum(flat_index, vector_corpus):
    _, x = vector_corpus
    searcher = Searcher.open(flat_index)
    got = combine_terms(searcher, [Term("id", "v3", 1.0), Term("id", "v7", -0.5), Term("vector", x[9], 2.0)])
    want = x[3] - 0.5 * x[7] + 2.0 * x[9]
    np.testing.assert_allclose(got[0], want / np.linalg.norm(want), atol=1e-5)
    result = searcher.search(terms="id:v3 + 0.01*id:v7", k=1)
    assert result.ids[0, 0] == "v3"
    with pytest.raises(TermError, match="cancel"):
        combine_terms(searcher, [Term("id", "v3", 1.0), Term("id", "v3", -1.0)])
    with pytest.raises(TermError, match="not in the index"):
        combine_terms(searcher, [Term("id", "nope", 1.0)])
    huge = combine_terms(searcher, [Term("id", "v3", 1e38), Term("id", "v7", -5e37), Term("vector", x[9], 2e38)])
    np.testing.assert_allclose(huge[0], got[0], atol=1e-5)  # weights past float32's range: the same direction


def test_slerp_stays_on_the_sphere_between_its_ends():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 16))
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    points = slerp(a, b, 5)
    np.testing.assert_allclose(np.linalg.norm(points, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(points[0], a, atol=1e-5)
    np.testing.assert_allclose(points[-1], b, atol=1e-5)
    angles = np.arccos(np.clip(np.sum(points[1:] * points[:-1], axis=1), -1, 1))
    np.testing.assert_allclose(angles, angles[0], rtol=1e-3)  # evenly spaced


def test_route_goes_from_one_item_to_the_other_without_repeating(flat_index):
    searcher = Searcher.open(flat_index)
    route = find_path(searcher, "v1", "v1500", steps=6)
    ids = [r["id"] for r in route]
    assert ids[0] == "v1" and ids[-1] == "v1500" and len(set(ids)) == len(ids) == 6
    with pytest.raises(TermError, match="steps"):
        find_path(searcher, "v1", "v2", steps=1)


def test_a_route_from_an_item_to_itself_is_that_item(flat_index):
    searcher = Searcher.open(flat_index)
    assert [r["id"] for r in find_path(searcher, "v7", "v7", steps=6)] == ["v7"]
    with pytest.raises(TermError, match="nope"):
        find_path(searcher, "nope", "nope")


@pytest.mark.slow  # three `latent` processes (~19 s of CPU): out of `make test-fast`
def test_latent_path_and_search_terms_on_the_command_line(flat_index):
    proc = run_cli("path", f"index.path={flat_index}", "from=v1", "to=v1500", "steps=4", "output=json")
    assert proc.returncode == 0, proc.stderr
    route = json.loads(proc.stdout)["route"]
    assert route[0]["id"] == "v1" and route[-1]["id"] == "v1500"
    proc = run_cli("search", f"index.path={flat_index}", "query.terms=id:v5 - 0.1*id:v6", "k=3")
    assert proc.returncode == 0 and "v5" in proc.stdout.splitlines()[1], proc.stdout + proc.stderr
    bad = run_cli("search", f"index.path={flat_index}", "query.terms=id:v5 +", "k=3")
    assert bad.returncode == 2 and "terms" in bad.stderr
