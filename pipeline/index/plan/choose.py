"""``index.factory=auto``: the FAISS index for a corpus size, dimension, memory budget and target recall.

The rules (measured on this project's 2-core CI machine, docs/benchmarks.md):
- up to FLAT_MAX_VECTORS: exact search (``Flat``); brute force is then as fast as anything else.
- while its estimated build time (``hnsw_build_seconds``: per vector, a fixed part plus a part per
  dimension) stays within what HNSW_MAX_VECTORS 512-d vectors cost, when it fits: ``HNSW32,Flat``, high
  recall at small efSearch; beyond that its build time (graph insertion) dominates the whole job.
- larger: IVF with a 4-bit fast-scan PQ (``IVF<nlist>,PQ<d/4>x4fs``) to find candidates cheaply, then a
  re-rank of ``k_factor_rf * k`` of them against float16 copies of the vectors (``Refine(SQfp16)``): half
  the memory of float32 copies (``RFlat``, chosen only for targets above 0.999) for the same measured
  recall, and exact for embedding datasets, which store float16. ``Refine(SQ8)`` when float16 copies
  do not fit. IVF-Flat is not chosen: at equal memory it searches several times slower than fast-scan
  + re-rank at the same recall (it stays available as a factory string).
- when only codes fit: OPQ rotation + IVF-PQ without re-rank, recall permitting.
Each candidate is sized by ``estimate_index_bytes`` plus the build's working memory. These are the
first choices; recall is then measured (``tune``), and when the data defeats a candidate (isotropic
vectors defeat coarse codes) the build moves on along ``plan_candidates``: finer codes, a graph,
IVF-Flat, exact search, each only if it fits ``index.max_memory``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import faiss
import psutil

from pipeline.errors import LatentError
from pipeline.index.nodes import chain

FLAT_MAX_VECTORS = 20_000
HNSW_MAX_VECTORS = 100_000  # at 512-d: the size whose graph build set the budget below
# HNSW32 insertion costs about A + B * dim microseconds per vector (measured on the 2-core CI-class machine,
# 20k-40k vectors of 32..256 dims, docs/benchmarks.md): most of it is graph bookkeeping, not distances
HNSW_BUILD_US = (245.0, 0.58)
HNSW_FALLBACK_MAX_VECTORS = 2_000_000  # beyond this a graph's build (hours on few cores) is no fallback
HNSW_M = 32
ID_BYTES = 64  # per row, while building: the id column, its sort order and the id map
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


@dataclass
class Choice:
    factory: str
    reason: str
    index_bytes: int  # estimated size of the built index
    build_bytes: int  # estimated working memory of the build on top of the index
    warning: str | None = None


def parse_memory(text: str | int) -> int:
    """Bytes from ``"4G"``, ``"512M"``, ``"1.5GiB"``, ``"3000000"``; ``"auto"``: half the available RAM."""
    value = str(text).strip().lower()
    if value == "auto":
        return psutil.virtual_memory().available // 2
    match = re.fullmatch(r"([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b)?", value)
    if not match:
        raise LatentError(
            f"index.max_memory={text}: expected a size such as 4G, 512M, 1.5GiB, a number of bytes, or auto"
        )
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def make_index(factory: str, dim: int, metric: int) -> faiss.Index:
    """``faiss.index_factory`` with a user-facing error for strings FAISS refuses."""
    try:
        return faiss.index_factory(dim, factory, metric)
    except RuntimeError as err:
        reason = str(err).strip().splitlines()[-1]
        raise LatentError(f"index.factory={factory}: FAISS cannot build it for {dim}-d vectors ({reason})") from err


def _bytes(owner: faiss.Index, n: int) -> int:
    """Bytes of ``owner`` holding ``n`` vectors: its wrappers' parts (rotations, re-rank copies) plus the
    innermost index. ``owner`` stays referenced here: dropping it frees the C++ index."""
    nodes = chain(owner)
    total = 0
    for node in nodes:
        if isinstance(node, faiss.IndexPreTransform):
            for i in range(node.chain.size()):
                t = faiss.downcast_VectorTransform(node.chain.at(i))
                total += 4 * t.d_in * t.d_out if isinstance(t, faiss.LinearTransform) else 0
        elif isinstance(node, faiss.IndexRefine):
            total += _bytes(node.refine_index, n)
    index = nodes[-1]
    if isinstance(index, faiss.IndexIVF):
        block = 32 if isinstance(index, faiss.IndexIVFFastScan) else 1  # fast-scan pads lists to 32 codes
        padding = index.nlist * block * index.code_size
        return total + _bytes(index.quantizer, index.nlist) + n * (index.code_size + 8) + padding + index.nlist * 64
    if isinstance(index, faiss.IndexHNSW):
        m = index.hnsw.nb_neighbors(1)
        return total + _bytes(index.storage, n) + n * ((2 * m + m // max(m - 1, 1) + 1) * 4 + 12)
    if isinstance(index, faiss.IndexFlatCodes):
        return total + n * index.code_size
    return total + (n * index.sa_code_size() if index.sa_code_size() else n * index.d * 4)


def estimate_index_bytes(factory: str, n: int, dim: int, metric: int = faiss.METRIC_INNER_PRODUCT) -> int:
    """Memory of ``factory`` holding ``n`` ``dim``-d vectors, from the structure FAISS builds for it."""
    return int(_bytes(make_index(factory, dim, metric), n))


def train_rows(factory: str, n: int, dim: int, metric: int, train_sample: int) -> int:
    """Training vectors to sample: enough for the coarse quantizer's k-means, at most ``train_sample``."""
    index = make_index(factory, dim, metric)
    if index.is_trained:
        return 0
    ivf = faiss.try_extract_index_ivf(index)
    wanted = 64 * ivf.nlist if ivf is not None else train_sample  # k-means: 64 points per centroid is plenty
    return int(min(n, train_sample, max(wanted, 10_000)))


def build_bytes(n: int, dim: int, trained_on: int, batch_size: int, queries: int) -> int:
    """Working memory of a build besides the index: training sample, read batches, queries, ids."""
    sample = 2 * trained_on * dim * 4  # the sample and k-means' copy of it
    batches = 3 * batch_size * dim * 4  # the Arrow batch, its float32 copy, the index's add buffers
    return sample + batches + queries * dim * 4 + n * ID_BYTES


def nlist_for(n: int) -> int:
    """Inverted lists: a power of two near sqrt(n), so that a probe scans ~sqrt(n) codes."""
    return int(min(65536, max(16, 2 ** round(math.log2(math.sqrt(max(n, 1)))))))


def pq_subquantizers(dim: int, ratio: int = 4) -> int:
    """The largest divisor of ``dim`` not above ``dim / ratio`` (4-bit codes: dim/8 bytes at ratio 4)."""
    target = max(1, dim // ratio)
    return max(m for m in range(1, target + 1) if dim % m == 0)


# recall@10 that each family can reach at some search setting, on CLIP-like data (a ceiling, not a promise)
_CEILING = {"Flat": 1.0, "HNSW": 0.999, "RFlat": 1.0, "Refine(SQfp16)": 0.999, "Refine(SQ8)": 0.98, "PQ": 0.85}


def hnsw_build_seconds(n: int, dim: int) -> float:
    """Estimated build time of ``HNSW32,Flat`` over ``n`` ``dim``-d vectors on the reference machine."""
    per_vector, per_dim = HNSW_BUILD_US
    return n * (per_vector + per_dim * dim) * 1e-6


# a graph is a first choice while its build costs no more than HNSW_MAX_VECTORS 512-d vectors' (~54 s):
# low-dimensional corpora get a graph at more rows (about 2x at 50-d), 512-d ones exactly as before
HNSW_BUILD_BUDGET_S = hnsw_build_seconds(HNSW_MAX_VECTORS, 512)


def candidates(n: int, dim: int, target_recall: float = 0.95) -> list[tuple[str, str, float]]:
    """(factory, why, recall ceiling) in order of preference: first choices, then the fallbacks tried when
    the data defeats them (finer codes, a graph, IVF-Flat, exact search), then what fits a tight budget."""
    found: list[tuple[str, str, float]] = []
    if n <= FLAT_MAX_VECTORS:
        found.append(("Flat", f"exact search: {n} vectors is a small corpus", _CEILING["Flat"]))
    hnsw = (f"HNSW{HNSW_M},Flat", f"graph index: {n} vectors fit in memory", _CEILING["HNSW"])
    first_graph = hnsw_build_seconds(n, dim) <= HNSW_BUILD_BUDGET_S
    if first_graph:
        found.append(hnsw)
    nlist, m, fine = nlist_for(n), pq_subquantizers(dim), pq_subquantizers(dim, 2)
    coarse = f"IVF{nlist},PQ{m}x4fs"
    exact = (f"{coarse},RFlat", "IVF + fast-scan PQ candidates, exact float32 re-rank", _CEILING["RFlat"])
    if target_recall > _CEILING["Refine(SQfp16)"]:
        found.append(exact)
    rerank = "RFlat" if target_recall > _CEILING["Refine(SQfp16)"] else "Refine(SQfp16)"
    found.append((f"{coarse},Refine(SQfp16)", "IVF + fast-scan PQ candidates, float16 re-rank", _CEILING[rerank]))
    if fine != m:
        found.append((f"IVF{nlist},PQ{fine}x4fs,{rerank}", "finer codes: twice the PQ sub-quantizers", 1.0))
    if not first_graph and n <= HNSW_FALLBACK_MAX_VECTORS:
        found.append(hnsw)
    found.append((f"IVF{nlist},Flat", "IVF over exact vectors", 1.0))
    if n > FLAT_MAX_VECTORS:
        found.append(("Flat", "exact search", 1.0))
    found.append(
        (
            f"{coarse},Refine(SQ8)",
            "IVF + fast-scan PQ, 8-bit re-rank (float16 vectors do not fit)",
            _CEILING["Refine(SQ8)"],
        )
    )
    while m >= 2:  # only codes fit: rotate with OPQ so that fewer sub-quantizers lose less
        found.append(
            (f"OPQ{m}_{dim},IVF{nlist},PQ{m}x4fs", "OPQ + IVF-PQ codes only (no re-rank fits)", _CEILING["PQ"])
        )
        m = max((d for d in range(1, m // 2 + 1) if dim % d == 0), default=0)
    seen: set[str] = set()
    return [c for c in found if not (c[0] in seen or seen.add(c[0]))]


def plan_candidates(
    n: int, dim: int, budget: int, target_recall: float, metric: int, train_sample: int, batch_size: int, queries: int
) -> list[Choice]:
    """Every candidate that fits ``budget``, in order of preference (what ``index.factory=auto`` tries)."""
    fitting = []
    for factory, why, ceiling in candidates(n, dim, target_recall):
        index_bytes = estimate_index_bytes(factory, n, dim, metric)
        extra = build_bytes(n, dim, train_rows(factory, n, dim, metric, train_sample), batch_size, queries)
        if index_bytes + extra <= budget:
            choice = Choice(factory, f"{why}; ~{human(index_bytes)} of {human(budget)}", index_bytes, extra)
            if ceiling < target_recall:
                choice.warning = (
                    f"index.max_memory={human(budget)} only fits {factory}, which is unlikely to reach "
                    f"recall@k {target_recall}; raise index.max_memory for a re-ranked index"
                )
            fitting.append(choice)
    return fitting


def exact_bytes(n: int, dim: int, metric: int, batch_size: int, queries: int) -> int:
    """Memory exact search (``Flat``) would need, build included."""
    return estimate_index_bytes("Flat", n, dim, metric) + build_bytes(n, dim, 0, batch_size, queries)


def choose_factory(
    n: int, dim: int, budget: int, target_recall: float, metric: int, train_sample: int, batch_size: int, queries: int
) -> Choice:
    """The first candidate that fits ``budget`` (``plan_candidates``'s first)."""
    fitting = plan_candidates(n, dim, budget, target_recall, metric, train_sample, batch_size, queries)
    if fitting:
        return fitting[0]
    smallest = candidates(n, dim)[-1][0]
    need = estimate_index_bytes(smallest, n, dim, metric) + build_bytes(
        n, dim, train_rows(smallest, n, dim, metric, train_sample), batch_size, queries
    )
    raise LatentError(
        f"index.max_memory={human(budget)} is too small for any index of {n} {dim}-d vectors: the smallest "
        f"({smallest}) needs ~{human(need)}; raise index.max_memory (or lower index.batch_size / train_sample)"
    )
