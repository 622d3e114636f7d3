"""`latent search`: one query against an index, printed as a ranked table or as JSON."""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np

from pipeline.config import PathCommandConfig, SearchCommandConfig, SearchOutput
from pipeline.search.searcher import QueryError, Searcher, SearchResult

TABLE_COLUMNS = ("rank", "score", "id", "source", "text")
_WIDTHS = {"id": 28, "source": 40, "text": 50}


def _query(cfg: SearchCommandConfig, searcher: Searcher) -> tuple[str, dict[str, Any]]:
    """(what the query is, the keyword arguments of Searcher.search)."""
    q = cfg.query
    pairs = (("text", q.text), ("image", q.image), ("vector", q.vector), ("id", q.id), ("terms", q.terms))
    given = dict(pairs)
    given = {key: value for key, value in given.items() if value is not None}
    if len(given) != 1:
        names = ", ".join(f"query.{key}" for key in given) or "none"
        raise QueryError(
            f"set exactly one of query.text, query.image, query.vector, query.id or query.terms (got {names})"
        )
    ((kind, value),) = given.items()
    if kind == "terms":
        return kind, {"terms": str(value)}
    if kind == "text":
        return kind, {"texts": [str(value)]}
    if kind == "image":
        return kind, {"images": [str(value)]}
    if kind == "vector":
        return kind, {"vectors": np.asarray(list(value), dtype=np.float32)}
    vector = searcher.vector(str(value))
    if vector is None:
        reason = (
            "is not in the index"
            if searcher.item(str(value)) is None
            else "has no stored vector this index can give back"
        )
        raise QueryError(f"query.id={value}: the item {reason}")
    return kind, {"vectors": vector}


def _cell(value: Any, width: int | None) -> str:
    text = "" if value is None else str(value).replace("\n", " ")
    return text if width is None or len(text) <= width else text[: width - 1] + "…"


def render_table(result: SearchResult) -> str:
    """The hits of the first query: rank, score, id, source, text."""
    rows = [
        [str(rank), f"{hit['score']:.4f}", *(_cell(hit.get(c), _WIDTHS[c]) for c in ("id", "source", "text"))]
        for rank, hit in enumerate(result.items[0], start=1)
    ]
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(TABLE_COLUMNS)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(TABLE_COLUMNS, widths)).rstrip()]
    lines += [
        "  ".join(v.rjust(w) if i < 2 else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths))).rstrip() for r in rows
    ]
    if not rows:
        lines.append("(no hits)")
    return "\n".join(lines)


def render_json(result: SearchResult, kind: str, cfg: SearchCommandConfig) -> str:
    hits = [{"rank": rank, **hit} for rank, hit in enumerate(result.items[0], start=1)]
    document = {"index": cfg.index.path, "query": {"kind": kind}, "k": cfg.k, "hits": hits}
    if cfg.where is not None:
        document["where"] = cfg.where
    if result.plan is not None and cfg.verbose:
        document["plan"] = result.plan
    return json.dumps(document, indent=2, default=str)  # passed-through metadata may hold dates, decimals…


def describe_plan(plan: dict[str, Any]) -> str:
    """One line: which plan a filtered search ran, and why (pipeline.search.plan)."""
    params = ", ".join(f"{key}={value}" for key, value in plan["params"].items()) if plan["kind"] == "filtered" else ""
    cost = plan.get("cost") or {}
    costs = f"; estimated exact {cost['exact']:.3g} vs filtered {cost['filtered']:.3g} {cost['unit']}" if cost else ""
    return (
        f"plan: {plan['kind']}{f' ({params})' if params else ''}: {plan['matched']} of {plan['rows']} items match "
        f"({100 * plan['selectivity']:.3g} %){costs}"
    )


def run_search(cfg: SearchCommandConfig) -> SearchResult:
    """Search ``cfg.index.path`` for ``cfg.query`` and print the ranked hits."""
    searcher = Searcher.open(cfg.index.path, cfg.model)
    from pipeline.search.hybrid import check_mode

    check_mode(cfg.mode, True, {} if cfg.mode == "vector" else searcher.info.text)  # a bad mode before any query
    if cfg.mode == "keyword" and cfg.keywords is None and cfg.query.text is None:
        raise QueryError("mode=keyword: set keywords=... or query.text=...")
    kind, query = ("keywords", {}) if cfg.mode == "keyword" and cfg.query.text is None else _query(cfg, searcher)
    hybrid = {"mode": cfg.mode, "keyword_weight": cfg.keyword_weight}
    if cfg.keywords is not None:
        hybrid["keywords"] = [cfg.keywords]
    result = searcher.search(**query, k=cfg.k, where=cfg.where, **hybrid)
    if result.plan is not None and cfg.verbose:
        print(describe_plan(result.plan), file=sys.stderr)
    print(render_json(result, kind, cfg) if cfg.output == SearchOutput.json else render_table(result))
    return result


def run_path(cfg: PathCommandConfig) -> list[dict[str, Any]]:
    """Print the route from item ``cfg.start`` to ``cfg.end`` (pipeline.search.terms.find_path)."""
    from pipeline.search.terms import find_path

    searcher = Searcher.open(cfg.index.path, cfg.model)
    route = find_path(searcher, cfg.start, cfg.end, cfg.steps)
    if cfg.output == SearchOutput.json:
        document = {"index": cfg.index.path, "from": cfg.start, "to": cfg.end, "steps": cfg.steps, "route": route}
        print(json.dumps(document, indent=2, default=str))
    else:
        result = SearchResult(
            scores=np.array([[r["score"] for r in route]], np.float32),
            ids=np.array([[r["id"] for r in route]]),
            items=[route],
        )
        print(render_table(result).replace("rank", "step", 1))
    return route
