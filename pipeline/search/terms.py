"""Moving through latent space: queries that weigh several terms ("this photo + 'cyberpunk' - 'daylight'")
and routes between two items (the items nearest evenly spaced points of the great circle between them).

A term is a text, an image, an indexed item (its stored vector) or a raw vector, with a weight; the query
is the normalised weighted sum of the terms' unit vectors. ``parse_terms`` reads the CLI's form:

    id:v12 + 'cyberpunk' - 0.5*'daylight' + image:/photos/cat.jpg
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.errors import LatentError

if TYPE_CHECKING:
    from pipeline.search.searcher import Searcher

KINDS = ("text", "image", "id", "vector")
MAX_TERMS = 16
MAX_STEPS = 1000


class TermError(LatentError):
    """A terms query that cannot be read or has no direction."""


@dataclass
class Term:
    kind: str  # text | image | id | vector
    value: Any
    weight: float = 1.0


_TOKEN = re.compile(
    r"""\s*(?P<sign>[+-])?\s*(?:(?P<weight>\d+(?:\.\d+)?|\.\d+)\s*\*\s*)?
        (?:'(?P<single>[^']*)'|"(?P<double>[^"]*)"|(?P<kind>id|image):(?P<ref>\S+))\s*""",
    re.VERBOSE,
)


def parse_terms(expression: str) -> list[Term]:
    """Terms of ``id:ID``, ``image:PATH`` and quoted texts joined by ``+``/``-`` with optional ``w*`` weights."""
    terms, at = [], 0
    text = expression.strip()
    if not text:
        raise TermError("terms: empty expression")
    while at < len(text):
        match = _TOKEN.match(text, at)
        if match is None or match.end() == at:
            raise TermError(
                f"terms: cannot read {text[at : at + 30]!r} (write terms as id:ID, image:PATH or 'text', joined by "
                f"+ or -, weights as 0.5*'text')"
            )
        if terms and match.group("sign") is None:
            raise TermError(f"terms: expected + or - before {text[at:].strip()[:30]!r}")
        sign = -1.0 if match.group("sign") == "-" else 1.0
        weight = sign * float(match.group("weight") or 1.0)
        if match.group("kind"):
            terms.append(Term(match.group("kind"), match.group("ref"), weight))
        else:
            value = match.group("single") if match.group("single") is not None else match.group("double")
            terms.append(Term("text", value, weight))
        at = match.end()
    return check_terms(terms)


def check_terms(terms: Sequence[Term]) -> list[Term]:
    terms = list(terms)
    if not terms:
        raise TermError("terms: no term")
    if len(terms) > MAX_TERMS:
        raise TermError(f"terms: {len(terms)} terms, at most {MAX_TERMS}")
    for i, term in enumerate(terms):
        if term.kind not in KINDS:
            raise TermError(f"terms[{i}]: kind {term.kind!r}, expected one of {', '.join(KINDS)}")
        if not np.isfinite(term.weight) or term.weight == 0:
            raise TermError(f"terms[{i}]: weight {term.weight!r} must be a non-zero number")
        if term.kind == "text" and not str(term.value).strip():
            raise TermError(f"terms[{i}]: empty text")
    return terms


def _unit(vector: np.ndarray, what: str) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    if not np.isfinite(norm) or norm == 0:
        raise TermError(f"{what}: a zero or non-finite vector has no direction")
    return vector / norm


def term_vectors(searcher: Searcher, terms: Sequence[Term]) -> np.ndarray:
    """Each term's unit vector (texts and images encoded in one batch each), in the terms' order."""
    out: list[np.ndarray | None] = [None] * len(terms)
    for kind, encode in (("text", searcher.encode_texts), ("image", searcher.encode_images)):
        which = [i for i, t in enumerate(terms) if t.kind == kind]
        if which:
            for i, vector in zip(which, encode([terms[i].value for i in which])):
                out[i] = vector
    for i, term in enumerate(terms):
        if term.kind == "id":
            vector = searcher.vector(str(term.value))
            if vector is None:
                raise TermError(f"terms[{i}]: id {term.value!r} is not in the index (or has no stored vector)")
            out[i] = vector
        elif term.kind == "vector":
            vector = np.asarray(term.value, dtype=np.float32).reshape(-1)
            if vector.shape != (searcher.dim,):
                raise TermError(f"terms[{i}]: a vector of {searcher.dim} numbers expected, got {vector.shape}")
            out[i] = vector
    return np.stack([_unit(np.asarray(v, np.float32), f"terms[{i}]") for i, v in enumerate(out)])


def combine_terms(searcher: Searcher, terms: Sequence[Term]) -> np.ndarray:
    """The query vector of ``terms``: the normalised weighted sum of their unit vectors (1 x dim float32)."""
    terms = check_terms(terms)
    vectors = term_vectors(searcher, terms)
    weights = np.array([t.weight for t in terms], dtype=np.float64)
    weights /= np.abs(weights).max()  # the direction is the same; huge weights (1e38) no longer overflow float32
    combined = (weights[:, None] * vectors).sum(axis=0)
    if np.linalg.norm(combined) < 1e-6:
        raise TermError("terms: the weighted terms cancel out (their sum has no direction)")
    return _unit(combined, "terms").reshape(1, -1).astype(np.float32)


def slerp(a: np.ndarray, b: np.ndarray, steps: int) -> np.ndarray:
    """``steps`` points evenly spaced on the great circle from unit ``a`` to unit ``b`` (both ends included)."""
    a, b = _unit(np.asarray(a, np.float64), "from"), _unit(np.asarray(b, np.float64), "to")
    t = np.linspace(0.0, 1.0, steps)[:, None]
    omega = np.arccos(np.clip(float(a @ b), -1.0, 1.0))
    if omega < 1e-6:
        return np.repeat(a[None], steps, axis=0).astype(np.float32)
    if np.pi - omega < 1e-6:
        raise TermError("path: the two items point in opposite directions (no single great circle joins them)")
    points = (np.sin((1 - t) * omega) * a + np.sin(t * omega) * b) / np.sin(omega)
    return points.astype(np.float32)


def find_path(searcher: Searcher, start: str, end: str, steps: int = 8, k: int = 8) -> list[dict[str, Any]]:
    """The route from item ``start`` to item ``end``: the two items at its ends and, for each of the ``steps - 2``
    points of the great circle between their vectors, the nearest item not already on the route (so the
    route holds at most ``steps`` distinct items; "score" is the item's similarity to its point). From an
    item to itself the route is that item alone."""
    if not 2 <= steps <= MAX_STEPS:
        raise TermError(f"steps={steps}: must be in 2..{MAX_STEPS}")
    if str(start) == str(end):
        if searcher.directory.label_of(str(start)) is None:
            raise TermError(f"from={start}: not in the index")
        return [{"step": 0, **(searcher.item(str(start)) or {"id": str(start)}), "score": 1.0}]
    ends = []
    for key, id in (("from", start), ("to", end)):
        vector = searcher.vector(str(id))
        if vector is None:
            raise TermError(f"{key}={id}: not in the index (or the index cannot give back its vector)")
        ends.append(vector)
    points = slerp(ends[0], ends[1], steps)
    inner = points[1:-1]
    route: list[dict[str, Any]] = [{"step": 0, **(searcher.item(str(start)) or {"id": str(start)}), "score": 1.0}]
    seen: set[str] = {str(start), str(end)}
    if len(inner):
        result = searcher.search(vectors=inner, k=min(k + steps, searcher.ntotal))
        for step, hits in enumerate(result.items, start=1):
            choice = next((h for h in hits if h["id"] not in seen), None)
            if choice is not None:
                seen.add(choice["id"])
                route.append({"step": step, **choice})
    route.append({"step": steps - 1, **(searcher.item(str(end)) or {"id": str(end)}), "score": 1.0})
    return route
