"""Micro-batching: concurrent requests gathered into one Searcher call per query kind.

Requests wait on an asyncio queue; one collector task takes the first, gathers what arrives within
``wait_s`` of it (up to ``max_batch``), and hands the batch to a single worker thread that owns the
Searcher (which is not thread-safe). While the worker runs, new requests queue up and form the next
batch, so under load batches grow by themselves and the encoder sees one call per batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.errors import LatentError

if TYPE_CHECKING:
    from pipeline.search import Searcher

KINDS = ("vectors", "texts", "images", "ids")  # Searcher.search's keywords, plus search by a stored item's id
ENCODED = ("texts", "images")  # kinds that cost an encoder call: worth waiting a little to batch them
# FAISS's exhaustive (Flat, IVF coarse, refine) search of a batch this large or larger goes through BLAS (one
# matrix product per block), below it one query at a time. faiss 1.15.1 here ships the cut at 128,000 queries,
# so every micro-batch took the one-at-a-time path: at 16-32 queries on 1 thread BLAS ran 3-5x the QPS, at
# 1-4 queries it did not (docs/benchmarks.md, "Service"). Set in the server's process only, as the threads are.
BLAS_FROM = 8


class UnknownItem(LatentError):
    """A query by id for an id the index does not hold."""


@dataclass
class _Request:
    kind: str
    query: Any
    k: int
    future: asyncio.Future
    arrived: float = field(default_factory=time.perf_counter)
    where: str | None = None  # a filter (pipeline.search.filter): requests are batched with their equals only


@dataclass
class BatchStats:
    """What the batcher did (for /healthz and the tests): batches run and queries answered per kind."""

    batches: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    queries: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    largest: int = 0


class MicroBatcher:
    """``await batcher.search(kind, query, k)``: one query's hits (a list of metadata rows with "score")."""

    def __init__(self, searcher: Searcher, max_batch: int, wait_s: float, threads: int = 0) -> None:
        self.searcher = searcher
        self.max_batch = max_batch
        self.wait_s = wait_s
        self.stats = BatchStats()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="latent-search")
        self._threads: int | None = threads or None  # FAISS's OpenMP threads (0: chosen in the worker thread)
        self._set = False
        self._queue: asyncio.Queue[_Request] | None = None
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        await self.call(lambda: None)  # start the worker thread now: a limit that forbids it shows at start
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._collect())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=True)

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn`` on the worker thread (anything else that touches the Searcher's encoder or FAISS)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def search(self, kind: str, query: Any, k: int, where: str | None = None) -> list[dict[str, Any]]:
        hits, _ = await self.search_planned(kind, query, k, where)
        return hits

    async def search_planned(
        self, kind: str, query: Any, k: int, where: str | None = None
    ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        """One query's hits and the filtered plan of its batch (None without ``where``; shared by the batch,
        whose requests all have this ``where``)."""
        if kind not in KINDS:
            raise ValueError(f"unknown query kind {kind!r}")
        if self._queue is None:
            raise RuntimeError("MicroBatcher.start() was not awaited")
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Request(kind, query, k, future, where=where))
        return await future

    async def _collect(self) -> None:
        assert self._queue is not None
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch:
                if not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                    continue
                # wait only for kinds that go through the encoder, and only until wait_s after the first arrived
                remaining = batch[0].arrived + self.wait_s - time.perf_counter()
                if remaining <= 0 or not any(r.kind in ENCODED for r in batch):
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
            live = [r for r in batch if not r.future.done()]  # a client that went away cancelled its future
            if not live:
                continue
            try:
                outcomes = await self.call(self._run, live)
            except Exception as err:  # the worker reports per request; this is a bug, surfaced to each caller
                outcomes = [err] * len(live)
            for request, outcome in zip(live, outcomes):
                if request.future.done():
                    continue
                if isinstance(outcome, BaseException):
                    request.future.set_exception(outcome)
                else:
                    request.future.set_result(outcome)

    # --- on the worker thread ---------------------------------------------------------------------

    def _run(self, batch: list[_Request]) -> list[Any]:
        """Each kind's requests in one Searcher call; a result list or an exception per request."""
        outcomes: dict[int, Any] = {}
        for kind, where in dict.fromkeys((r.kind, r.where) for r in batch):
            group = [(i, r) for i, r in enumerate(batch) if r.kind == kind and r.where == where]
            self.stats.batches[kind] += 1
            self.stats.queries[kind] += len(group)
            self.stats.largest = max(self.stats.largest, len(group))
            try:
                for (i, _), hits in zip(group, self._search_group(kind, [r for _, r in group])):
                    outcomes[i] = hits
            except LatentError:
                # one bad query fails the whole call: answer each alone so only that one gets the error
                for i, request in group:
                    try:
                        outcomes[i] = self._search_group(kind, [request])[0]
                    except LatentError as err:
                        outcomes[i] = err
        return [outcomes[i] for i in range(len(batch))]

    def _search_group(
        self, kind: str, requests: list[_Request]
    ) -> list[tuple[list[dict[str, Any]], dict[str, Any] | None]]:
        k = max(r.k for r in requests)  # one search at the largest k; each request keeps its own first k
        queries = [r.query for r in requests]
        if kind == "ids":
            kind, queries = "vectors", [self._vector_of(id) for id in queries]
        if kind == "vectors":
            queries = np.stack([np.asarray(q, dtype=np.float32) for q in queries])
        with self._faiss_threads(len(queries)):
            result = self.searcher.search(**{kind: queries}, k=k, where=requests[0].where)
        return [(hits[: r.k], result.plan) for hits, r in zip(result.items, requests)]

    @contextlib.contextmanager
    def _faiss_threads(self, n: int) -> Iterator[None]:
        """At most ``n`` OpenMP threads for a batch of ``n`` queries: below FAISS's BLAS threshold (20) a search
        runs one query per thread, so the other threads only spin, and on a busy machine their barriers cost a
        lone query 6x (docs/benchmarks.md, "Service")."""
        import faiss

        if not self._set:
            self._set = True
            # one core stays with the event loop (HTTP, JSON, pydantic): with every core in FAISS's OpenMP team,
            # 32 clients on 2 cores got micro-batches of 2.9 and a fifth of the QPS of a separate 1-thread search
            # process (Ray Serve's shard replica) measured in the same run (docs/benchmarks.md, "Service")
            self._threads = self._threads or max(1, min(faiss.omp_get_max_threads(), (os.cpu_count() or 2) - 1))
            faiss.omp_set_num_threads(self._threads)
            faiss.cvar.distance_compute_blas_threshold = BLAS_FROM
        threads = max(1, min(n, self._threads))
        if threads == self._threads:
            yield
            return
        faiss.omp_set_num_threads(threads)
        try:
            yield
        finally:
            faiss.omp_set_num_threads(self._threads)

    def _vector_of(self, id: str) -> np.ndarray:
        vector = self.searcher.vector(id)
        if vector is not None:
            return vector
        if self.searcher.item(id) is None:
            raise UnknownItem(f"no item with id {id!r} in the index")
        raise LatentError(f"this index ({self.searcher.info.factory}) cannot give back the vector of {id!r}")
