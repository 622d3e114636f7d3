"""Search parameters for a target recall: the cheapest setting, in batch throughput, that reaches it.

Recall is measured, never assumed: ``queries`` are corpus vectors held out of the index while it is
tuned (fresh queries, as the user's next one will be), the truth is exact search over the indexed
rows (``GroundTruth``, accumulated while the vectors stream past). A setting reaches the target when
the lower end of the recall's 95% confidence interval does (``wilson_interval``), so the promise holds
beyond the sampled queries. Each knob (nprobe, efSearch, k_factor_rf) only ever trades cost for
recall, so for each re-rank factor (largest first) the smallest nprobe or efSearch reaching the
target is found by doubling then bisection, settings already slower than the best found (or than
exact search) are abandoned, and the fastest setting wins.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np

from pipeline.index.nodes import apply_search_params, hnsw_of, refine_of
from pipeline.index.recall import recall_at_k, without_self

MAX_EF_SEARCH = 4096
K_FACTORS = (1, 2, 4, 8, 16, 32, 64, 128, 256)  # re-rank factors tried, widest first
CONFIDENCE_Z = 1.96  # two-sided 95% interval: the promise fails for at most ~2.5% of tuned indexes


def wilson_interval(recall: float, queries: int, z: float = CONFIDENCE_Z) -> tuple[float, float]:
    """The Wilson score interval of a recall measured as the mean over ``queries`` queries.

    Each query's recall lies in [0, 1], so its variance is at most p(1-p): treating the queries as
    ``queries`` Bernoulli trials (not ``queries x k`` neighbours, which are correlated) is conservative."""
    if queries <= 0:
        return 0.0, 1.0
    denominator = 1 + z * z / queries
    centre = (recall + z * z / (2 * queries)) / denominator
    half = z * math.sqrt(recall * (1 - recall) / queries + z * z / (4 * queries * queries)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class TuneResult:
    params: dict[str, Any]
    recall: float
    qps: float
    reached: bool  # the interval's lower end reaches the target (exact indexes: the recall itself)
    trials: list[dict[str, Any]] = field(default_factory=list)
    lower: float = 0.0  # the recall's 95% Wilson interval over the queries
    upper: float = 1.0
    slower_than: float | None = None  # set when abandoned: every setting reaching the target was slower


@dataclass
class Knobs:
    """The search knobs an index has: a main one (nprobe or efSearch) and a re-rank factor."""

    main: str | None  # "nprobe" | "efSearch" | None (exact index)
    main_min: int
    main_max: int
    k_factors: tuple[int, ...]  # (1,) without re-rank
    extra: Callable[[int], dict[str, Any]] | None = None  # settings tied to the main knob


def knobs_of(index: faiss.Index, k: int) -> Knobs:
    top = faiss.downcast_index(index)
    if isinstance(top, faiss.IndexShards):  # shards of one trained index: the knobs of any of them
        return knobs_of(top.at(0), k)
    k_factors = K_FACTORS if refine_of(index) is not None else (1,)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        quantizer = faiss.downcast_index(ivf.quantizer)
        extra = None
        if isinstance(quantizer, faiss.IndexHNSW):  # the coarse graph must return at least nprobe lists

            def extra(nprobe: int) -> dict[str, Any]:
                return {"quantizer_efSearch": max(2 * nprobe, 64)}

        return Knobs("nprobe", 1, ivf.nlist, k_factors, extra)
    if hnsw_of(index) is not None:  # HNSW explores max(efSearch, k) candidates: start at k
        return Knobs("efSearch", k + 1, MAX_EF_SEARCH, k_factors)
    return Knobs(None, 0, 0, k_factors)


class _Evaluator:
    def __init__(self, index, queries, truth, own, k: int, knobs: Knobs, valid: np.ndarray | None) -> None:
        self.index, self.queries, self.truth, self.own, self.k, self.knobs = index, queries, truth, own, k, knobs
        self.valid = valid
        self.trials: list[dict[str, Any]] = []
        self.cache: dict[tuple, tuple[float, float]] = {}

    def params(self, main: int | None, k_factor: int) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if self.knobs.main is not None and main is not None:
            params[self.knobs.main] = int(main)
            if self.knobs.extra is not None:
                params.update(self.knobs.extra(int(main)))
        if len(self.knobs.k_factors) > 1:
            params["k_factor_rf"] = int(k_factor)
        return params

    def __call__(self, main: int | None, k_factor: int) -> tuple[float, float]:
        """(recall, qps) at a setting."""
        key = (main, k_factor)
        if key not in self.cache:
            params = self.params(main, k_factor)
            apply_search_params(self.index, params)
            start = time.perf_counter()
            _, labels = self.index.search(self.queries, self.k + 1)
            seconds = time.perf_counter() - start
            recall = recall_at_k(without_self(labels, self.own, self.k, self.valid), self.truth)
            self.cache[key] = (recall, len(self.queries) / max(seconds, 1e-9))
            self.trials.append({"params": params, "recall": round(recall, 4), "qps": round(self.cache[key][1], 1)})
        return self.cache[key]


def tune(
    index: faiss.Index,
    queries: np.ndarray,
    truth: np.ndarray,
    own: np.ndarray,
    k: int,
    target: float,
    progress: Callable[[], None] | None = None,
    valid: np.ndarray | None = None,
    floor_qps: float | None = None,
) -> TuneResult:
    """The cheapest setting of ``index``'s knobs whose recall@k on ``queries`` reaches ``target``: the lower
    end of its 95% interval does (a perfect recall counts as reaching it).

    ``truth``: exact neighbours of each query without its own row (``without_self``), ``own``: the
    queries' own labels (-1 for queries not in the index); ``valid``: a mask of the labels the truth
    covers (None: all); ``floor_qps``: exact search's throughput: settings slower than it that miss the
    target are not pursued (``slower_than`` is then set when nothing faster reached it). The index is
    left set to the chosen parameters.
    """
    knobs = knobs_of(index, k)
    evaluate = _Evaluator(index, queries, truth, own, k, knobs, valid)
    n = len(queries)

    def step(main, k_factor):
        result = evaluate(main, k_factor)
        if progress is not None:
            progress()
        return result

    def reaches(recall: float) -> bool:
        return recall >= 1.0 or wilson_interval(recall, n)[0] >= target

    def result(params, recall, qps, reached, slower_than=None) -> TuneResult:
        lower, upper = wilson_interval(recall, n)
        return TuneResult(params, recall, qps, reached, evaluate.trials, lower, upper, slower_than)

    if knobs.main is None:  # nothing to tune (exact search, or codes without knobs): measure it
        recall, _ = step(None, knobs.k_factors[0])
        qps = _best_qps(evaluate, None, knobs.k_factors[0])
        return result(evaluate.params(None, knobs.k_factors[0]), recall, qps, reaches(recall))

    best: tuple[float, int, int] | None = None  # (qps, main, k_factor)
    lower = knobs.main_min
    abandoned = False
    for k_factor in sorted(knobs.k_factors, reverse=True):  # most re-ranking first: it needs the fewest probes
        floor = max(best[0] if best else 0.0, floor_qps or 0.0)

        def ok(value: int, kf: int = k_factor, floor: float = floor) -> bool:
            recall, qps = step(value, kf)
            if not reaches(recall) and qps < floor:
                raise _Slower(value)  # raising the main knob only slows it further: this factor cannot win
            return reaches(recall)

        try:
            lowest = _smallest_reaching(ok, lower, knobs.main_max)
        except _Slower as slower:
            abandoned = True
            lower = slower.value + 1  # less re-ranking needs at least as much of the main knob
            if lower > knobs.main_max:
                break
            continue
        if lowest is None:
            break  # unreachable with this re-rank factor, so with any smaller one too
        lower = lowest
        qps = _best_qps(evaluate, lowest, k_factor)
        if best is None or qps > best[0]:
            best = (qps, lowest, k_factor)
    if best is not None:
        qps, main, k_factor = best
        params = evaluate.params(main, k_factor)
        apply_search_params(index, params)
        return result(params, evaluate(main, k_factor)[0], qps, True)
    # nothing reaches the target (or only slower than exact search): the most accurate setting, as such
    main, k_factor = knobs.main_max, max(knobs.k_factors)
    recall, _ = step(main, k_factor)
    params = evaluate.params(main, k_factor)
    qps = _best_qps(evaluate, main, k_factor)
    slower = floor_qps if abandoned and floor_qps else None
    return result(params, recall, qps, reaches(recall) and slower is None, slower)


class _Slower(Exception):
    def __init__(self, value: int) -> None:
        self.value = value


def _smallest_reaching(ok: Callable[[int], bool], low: int, high: int) -> int | None:
    """About the smallest v in [low, high] with ok(v), for a monotone ok: doubling, then bisection to
    within an eighth (finer steps cost more trials than they save in search time)."""
    v, last_bad = low, low - 1
    while not ok(v):
        if v >= high:
            return None
        last_bad, v = v, min(2 * v, high)
    lo, hi = last_bad + 1, v
    while hi - lo > max(0, hi // 8):
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid + 1
    return hi


def _best_qps(evaluate: _Evaluator, main: int | None, k_factor: int, repeats: int = 3) -> float:
    """Batch throughput at a setting: the best of a few timed runs (the machine may be shared)."""
    apply_search_params(evaluate.index, evaluate.params(main, k_factor))
    return measure_qps(evaluate.index, evaluate.queries, evaluate.k + 1, repeats)


def measure_qps(index: faiss.Index, queries: np.ndarray, k: int, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        index.search(queries, k)
        best = min(best, time.perf_counter() - start)
    return len(queries) / max(best, 1e-9)
