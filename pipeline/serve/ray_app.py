"""`latent serve backend=ray`: the HTTP API v1 and the web page on Ray Serve, for sharded indexes.

The application (``build_application``):
- ``Shard``: one deployment per shard of the index directory (``replicas`` replicas each); a replica maps
  its shard file once and answers ``search(queries, k)`` with shard-local labels.
- ``QueryEncoder``: the index's query model for text and image queries, micro-batched across requests
  with ``serve.batch``; on a GPU when the cluster has one.
- ``Ingress``: the FastAPI app of pipeline/serve/app.py, unchanged, around a ``RemoteSearcher``: a
  Searcher whose FAISS index is ``RemoteShards`` (fans a query out to every shard deployment and merges
  the top-k exactly as ``pipeline.index.store.shards.merge_results``) and whose encoder is the encoder
  deployment. Metadata (items.arrow, ids.arrow) is read by the ingress from the index directory.

A query that any shard does not answer (replica dead, restarting, or past ``shard_timeout_s``) fails
with ``ServiceUnavailable`` (HTTP 503) naming the shards: never a partial answer. Ray Serve restarts a
dead replica; the next queries are answered again without restarting the application.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

import numpy as np
from ray import serve

from pipeline.config import ServeConfig
from pipeline.errors import LatentError, ServiceUnavailable
from pipeline.index.nodes import apply_search_params
from pipeline.index.store import shards
from pipeline.index.store.directory import IndexDirectory
from pipeline.index.store.format import IndexInfo
from pipeline.index.store.integrity import check_files
from pipeline.search.plan import Plan
from pipeline.search.query_model import resolve_query_model
from pipeline.search.searcher import Searcher
from pipeline.serve.ray_fit import replica_cpus_that_fit
from pipeline.serve.ray_port import settle_http_port

APP_NAME = "latent"


def _info(path: str) -> IndexInfo:
    return IndexDirectory.open(path, index=_NoIndex()).info


class _NoIndex:
    """Stands in for the FAISS index where only index.json and the metadata are needed."""

    ntotal = 0


def shard_entries(info: IndexInfo, path: str) -> list[shards.ShardEntry]:
    """The index's shards; a one-file index is served as one shard (its index.faiss)."""
    if info.shards:
        return [shards.ShardEntry(**entry) for entry in info.shards]
    return [shards.ShardEntry("index.faiss", 0, info.ntotal)]


@serve.deployment(ray_actor_options={"num_cpus": 1})
class Shard:
    """One shard of the index, mapped once per replica."""

    def __init__(self, path: str, entry: shards.ShardEntry, info: IndexInfo, threads: int) -> None:
        import faiss

        from pipeline.serve.batcher import BLAS_FROM

        faiss.omp_set_num_threads(max(1, threads))
        faiss.cvar.distance_compute_blas_threshold = BLAS_FROM  # it searches the ingress's micro-batches
        # a replica may run on another node (a shared filesystem): check its own file there, as a
        # one-process open does (size, and the checksum of a small file), before answering anything
        recorded = {entry.file: info.files[entry.file]} if info.files and entry.file in info.files else None
        check_files(path, recorded, [entry.file], full=False)
        self.index = shards.read_shard(Path(path), entry, info.dim)
        apply_search_params(self.index, info.search_params)
        self.file = entry.file

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, max(self.index.ntotal, 1)))

    def search_filtered(
        self, queries: np.ndarray, k: int, bits: np.ndarray, where: str, metric: str
    ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """A filtered search of this shard: its slice of the mask (packed bits), planned and run here as a
        one-process search plans and runs it (pipeline.search.plan), with shard-local labels."""
        from pipeline.search.plan import plan_search, run_plan

        mask = np.unpackbits(bits, count=self.index.ntotal, bitorder="little").astype(bool)
        plan = plan_search(self.index, mask, k, where)
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        scores, labels = run_plan(plan, self.index, mask, queries, k, metric)
        return scores, labels, plan.to_dict()

    def reconstruct(self, label: int) -> np.ndarray:
        return shards.reconstruct_local(self.index, label)

    def pid(self) -> int:
        import os

        return os.getpid()


@serve.deployment(ray_actor_options={"num_cpus": 1})
class QueryEncoder:
    """The index's query model; concurrent requests' queries are encoded together (``serve.batch``)."""

    def __init__(self, spec: Any, error: str | None, max_batch: int, wait_s: float) -> None:
        from pipeline.encode.encoder import ClipEncoder

        # the spec was resolved (and checked against the index's fingerprint) once, by the driver
        self.encoder = ClipEncoder(spec) if spec is not None else None
        self.error = error
        self.encode_texts.set_max_batch_size(max_batch)
        self.encode_texts.set_batch_wait_timeout_s(wait_s)
        self.encode_images.set_max_batch_size(max_batch)
        self.encode_images.set_batch_wait_timeout_s(wait_s)

    def image_prep(self) -> Any:
        """The model's image preprocessing (its input size): the ingress sizes query decoding by it."""
        return self.encoder.prep if self.encoder is not None else None

    def problem(self) -> str | None:
        """Why this replica cannot encode queries (None: it can)."""
        return self.error

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.002)
    async def encode_texts(self, calls: list[list[str]]) -> list[np.ndarray]:
        return _split(self.encoder.encode_texts([t for call in calls for t in call]), calls)

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.002)
    async def encode_images(self, calls: list[list[Any]]) -> list[np.ndarray]:
        return _split(self.encoder.encode_images([i for call in calls for i in call]), calls)


def _split(vectors: np.ndarray, calls: list[list[Any]]) -> list[np.ndarray]:
    bounds = np.cumsum([len(c) for c in calls])[:-1]
    return list(np.split(vectors, bounds))


class RemoteShards:
    """Quacks like the FAISS index Searcher searches: ``search(x, k)`` fans out to the shard deployments
    and merges; a shard that does not answer within ``timeout_s`` makes the query fail (503)."""

    def __init__(self, handles: list[Any], entries: list[shards.ShardEntry], info: IndexInfo, timeout_s: float):
        self.handles = handles
        self.entries = entries
        self.ntotal = info.ntotal
        self.d = info.dim
        self.keep_max = info.metric == "ip"
        self.timeout_s = timeout_s

    def _gather(self, calls: list[Any]) -> list[Any]:
        deadline = time.monotonic() + self.timeout_s
        results, missing = [], []
        for entry, call in zip(self.entries, calls):
            try:
                results.append(call.result(timeout_s=max(0.0, deadline - time.monotonic())))
            except Exception as err:  # a dead or restarting replica, a timeout: name the shard
                missing.append(f"{entry.file} ({type(err).__name__})")
        if missing:
            raise ServiceUnavailable(
                f"{len(missing)} of {len(self.entries)} index shards did not answer: {', '.join(missing)}; "
                f"retry shortly (Ray Serve restarts failed replicas)"
            )
        return results

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        results = self._gather([h.search.remote(queries, k) for h in self.handles])
        distances = [_pad(d, k, self.keep_max, np.float32) for d, _ in results]
        labels = [_pad(i, k, None, np.int64) for _, i in results]
        return shards.merge_results(distances, labels, [e.first for e in self.entries], k, self.keep_max)

    def search_filtered(
        self, queries: np.ndarray, k: int, mask: np.ndarray, where: str, metric: str
    ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """Filtered search: every shard plans and runs its slice of ``mask``, the top-k merge exactly (as a
        one-process sharded index does); the plan reports each shard's choice under ``params.shards``."""
        calls = []
        for handle, entry in zip(self.handles, self.entries):
            bits = np.packbits(mask[entry.first : entry.first + entry.ntotal], bitorder="little")
            calls.append(handle.search_filtered.remote(queries, k, bits, where, metric))
        results = self._gather(calls)
        distances = [_pad(d, k, self.keep_max, np.float32) for d, _, _ in results]
        labels = [_pad(i, k, None, np.int64) for _, i, _ in results]
        scores, found = shards.merge_results(distances, labels, [e.first for e in self.entries], k, self.keep_max)
        plans = [p for _, _, p in results]
        kinds = {p["kind"] for p in plans}
        per_shard = [{"file": e.file, "kind": p["kind"], **p["params"]} for e, p in zip(self.entries, plans)]
        plan = Plan(
            kind=next((kind for kind in ("filtered", "exact") if kind in kinds), "none"),
            where=where,
            matched=int(np.count_nonzero(mask)),
            rows=int(mask.size),
            params={"shards": per_shard},
        )
        return scores, found, plan.to_dict()

    def reconstruct(self, label: int) -> np.ndarray:
        for handle, entry in zip(self.handles, self.entries):
            if entry.first <= label < entry.first + entry.ntotal:
                return self._gather_one(entry, handle.reconstruct.remote(label - entry.first))
        raise IndexError(f"label {label} is past the index's rows")

    def _gather_one(self, entry: shards.ShardEntry, call: Any) -> Any:
        try:
            return call.result(timeout_s=self.timeout_s)
        except Exception as err:
            raise ServiceUnavailable(f"index shard {entry.file} did not answer ({type(err).__name__})") from err


def _pad(array: np.ndarray, k: int, keep_max: bool | None, dtype: type) -> np.ndarray:
    """A shard's (n, <=k) result padded to k columns (a shard smaller than k returns fewer)."""
    array = np.asarray(array, dtype=dtype)
    if array.shape[1] >= k:
        return array[:, :k]
    fill = -1 if keep_max is None else (-np.inf if keep_max else np.inf)
    return np.pad(array, ((0, 0), (0, k - array.shape[1])), constant_values=fill)


class RemoteEncoder:
    """The encoder deployment, called like a ClipEncoder (from the ingress's batcher thread)."""

    def __init__(self, handle: Any, timeout_s: float) -> None:
        self.handle = handle
        self.timeout_s = timeout_s

    def _call(self, method: Any, items: list[Any] | None) -> Any:
        try:
            call = method.remote() if items is None else method.remote(list(items))
            return call.result(timeout_s=self.timeout_s)
        except LatentError:
            raise
        except Exception as err:
            raise ServiceUnavailable(f"the query encoder did not answer ({type(err).__name__}: {err})") from err

    def check(self) -> None:
        """LatentError if the encoder deployment cannot encode (no model fingerprint, weights not here)."""
        problem = self._call(self.handle.problem, None)
        if problem:
            raise LatentError(problem)

    @functools.cached_property
    def prep(self) -> Any:
        """The encoder's ImagePrep, asked of the deployment once."""
        return self._call(self.handle.image_prep, None)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        return self._call(self.handle.encode_texts, texts)

    def encode_images(self, images: list[Any]) -> np.ndarray:
        return self._call(self.handle.encode_images, images)


class RemoteSearcher(Searcher):
    """A Searcher over the index directory's metadata whose FAISS search and encoder are deployments."""

    def __init__(self, directory: IndexDirectory, model: Any, encoder: RemoteEncoder | None) -> None:
        super().__init__(directory, model)
        self._remote_encoder = encoder
        self._checked = False

    @property
    def encoder(self) -> Any:
        if self._remote_encoder is None:
            resolve_query_model(self.info, self.model_config, gpus=0)  # raises the reason (no fingerprint…)
        if not self._checked:
            self._remote_encoder.check()
            self._checked = True
        return self._remote_encoder

    def vector(self, id: str) -> np.ndarray | None:
        label = self.directory.label_of(id)
        if label is None:
            return None
        try:
            return np.asarray(self.directory.index.reconstruct(int(label)), dtype=np.float32)
        except (RuntimeError, AttributeError):
            return None


@serve.deployment(ray_actor_options={"num_cpus": 1})
@serve.ingress()
class Ingress:
    """HTTP API v1 and the page: pipeline/serve/app.py's FastAPI app around a RemoteSearcher."""

    def __init__(self, cfg: ServeConfig, shard_handles: list[Any], encoder_handle: Any | None) -> None:
        info = _info(cfg.index.path)
        entries = shard_entries(info, cfg.index.path)
        remote = RemoteShards(shard_handles, entries, info, cfg.shard_timeout_s)
        directory = IndexDirectory.open(cfg.index.path, index=remote)
        encoder = RemoteEncoder(encoder_handle, cfg.shard_timeout_s * 4) if encoder_handle is not None else None
        self.searcher = RemoteSearcher(directory, cfg.model, encoder)
        self.cfg = cfg

    def __serve_build_asgi_app__(self) -> Any:
        from pipeline.serve.app import create_app

        return create_app(self.searcher, self.cfg)


INGRESS_MAX_ONGOING = 256  # requests one ingress replica takes at once: its micro-batcher gathers them


def build_application(cfg: ServeConfig, gpus: int = 0) -> Any:
    """The bound Ray Serve application of ``cfg`` (deployment names: shard-00000…, encoder, ingress)."""
    info = _info(cfg.index.path)
    entries = shard_entries(info, cfg.index.path)
    share = replica_cpus_that_fit(cfg, len(entries), bool(info.embedding is not None and info.embedding.model))
    cpus = {"num_cpus": share}
    handles = [
        Shard.options(name=f"shard-{s:05d}", num_replicas=cfg.replicas, ray_actor_options=cpus).bind(
            cfg.index.path, entry, info, int(share)
        )
        for s, entry in enumerate(entries)
    ]
    encoder = None
    if info.embedding is not None and info.embedding.model:
        try:
            spec, error = resolve_query_model(info, cfg.model, gpus=gpus), None
        except LatentError as err:  # the model cannot be built: vector and id queries still work
            spec, error = None, str(err)
        options: dict[str, Any] = {"name": "encoder", "num_replicas": cfg.encoder_replicas, "ray_actor_options": cpus}
        if gpus:
            options["ray_actor_options"] = {**cpus, "num_gpus": 1}
        encoder = QueryEncoder.options(**options).bind(spec, error, cfg.max_batch, cfg.batch_wait_ms / 1000)
    # the ingress takes many requests at once (Ray Serve's default is 5): its micro-batcher then sends the
    # shards one batch for all of them, where 5 at a time left the other clients queued in the proxy
    ingress = Ingress.options(name="ingress", ray_actor_options=cpus, max_ongoing_requests=INGRESS_MAX_ONGOING)
    return ingress.bind(cfg, handles, encoder)


def application_of(cfg: ServeConfig) -> Any:
    """The application of composed `latent serve` keys on the running cluster (``pipeline.cli:serve_application``,
    the entry point of ``serve run`` and KubeRay, composes them)."""
    return build_application(cfg, _cluster_gpus())


def _cluster_gpus() -> int:
    import ray

    return int(ray.cluster_resources().get("GPU", 0)) if ray.is_initialized() else 0


def start_application(cfg: ServeConfig, app: serve.Application, name: str = APP_NAME) -> None:
    """Start Ray Serve's proxy on ``cfg.host:cfg.port`` and run ``app`` at / (returns once deployed); refused
    when the cluster's Serve already listens elsewhere (``settle_http_port``: ``port=0`` takes its port)."""
    settle_http_port(cfg)
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    # The same two keys as the one-process server: no per-request INFO line forwarded from every replica
    logging = {"log_level": cfg.log_level.upper(), "enable_access_log": cfg.access_log}
    serve.run(app, name=name, route_prefix="/", blocking=False, logging_config=logging)


def run_ray_serve(cfg: ServeConfig) -> None:
    """`latent serve backend=ray`: deploy on the cluster at ``ray.address`` and serve until interrupted."""
    import contextlib
    import threading

    from pipeline.runtime import init_ray

    init_ray(cfg.ray)
    app = build_application(cfg, _cluster_gpus())
    start_application(cfg, app)
    info = _info(cfg.index.path)
    count = len(shard_entries(info, cfg.index.path))
    print(
        f"latent serve: {cfg.index.path} ({info.ntotal:,} items, {count} shard(s) x {cfg.replicas} "
        f"replica(s)) on http://{cfg.host}:{cfg.port}/ (Ray Serve)",
        flush=True,
    )
    with contextlib.suppress(KeyboardInterrupt):
        threading.Event().wait()
    serve.delete(APP_NAME)
    print("latent serve: stopped")
