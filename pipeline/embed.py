"""The embed job: corpus -> read+prepare (CPU tasks) -> encode (actor pool) -> commit shards (tasks).

``build_embed_plan`` is the one place the Ray Data plan is built; ``run_embed`` decides everything
at the edge (model, device, precision, what is already done), runs the plan and summarises.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import partial

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.config import EmbedConfig, Modality
from pipeline.encode.encoder import EmbedBatches
from pipeline.encode.gpu_decode import decode_in_encoder
from pipeline.encode.model import describe_model, resolve_model
from pipeline.encode.preprocess import ImagePrep, prepare_records
from pipeline.errors import LatentError
from pipeline.io.output import OutputDir
from pipeline.io.shards import ERRORS_DIR, ERRORS_SCHEMA, EmbeddingInfo, commit_table
from pipeline.io.sources import Source, filter_done_units, open_source, read_unit, units_to_json
from pipeline.runtime import (
    RunRecord,
    cluster_cpu_nodes,
    cluster_cpus,
    cluster_gpus,
    init_ray,
    resolve_device,
    resolve_precision,
)

log = logging.getLogger(__name__)

READ_BYTES_PER_ROW = 256 * 1024  # a typical web JPEG plus its sidecars
READER_BASE_MEMORY = 768 * 1024**2  # a decode worker's own footprint (torch, torchvision, PIL, pyarrow)
MIN_ROWS_FOR_ERROR_CHECK = 200  # judge the error fraction early only once a sample this large is in


@dataclass
class EmbedSummary:
    output: str
    rows: int  # rows in the dataset (all runs)
    errors: int  # rows recorded as errors (all runs)
    rows_this_run: int
    errors_this_run: int
    wall_seconds: float
    rows_per_second: float  # this run's rows over its whole wall time (start-up included)
    steady_rows_per_second: float = 0.0  # from the first committed shard to the last: the pipeline's pace
    already_complete: bool = False

    def render(self) -> str:
        if self.already_complete:
            return (
                f"latent embed: {self.output} is already complete ({self.rows:,} rows, {self.errors:,} errors); "
                f"nothing to do"
            )
        return "\n".join(
            [
                f"latent embed: done in {self.wall_seconds:.1f} s",
                f"  rows embedded  {self.rows:,} ({self.rows_this_run:,} this run)",
                f"  rows failed    {self.errors:,} ({self.errors_this_run:,} this run)"
                + (f", listed in {self.output}/{ERRORS_DIR}" if self.errors else ""),
                f"  throughput     {self.rows_per_second:,.1f} rows/s overall, " + self._steady(),
                f"  output         {self.output}",
            ]
        )

    def _steady(self) -> str:
        if not self.steady_rows_per_second:  # every row came back in one block: there is no pace to measure
            return "steady pace n/a (too few rows)"
        return f"{self.steady_rows_per_second:,.1f} rows/s steady"


def resolve_modality(requested: Modality, source: Source) -> str:
    if requested == Modality.auto:
        if source.has_images and source.has_texts:
            return "both"
        return "image" if source.has_images else "text"
    if requested in (Modality.image, Modality.both) and not source.has_images:
        raise LatentError(f"modality={requested.value} needs images, but the input has none")
    if requested in (Modality.text, Modality.both) and not source.has_texts:
        raise LatentError(f"modality={requested.value} needs texts, but the input has no captions or text column")
    return requested.value


# -- the stages: plain callables on Arrow tables ----------------------------------------------------


def read_and_prepare(
    units: pa.Table,
    done: pa.Array | None,
    prep: ImagePrep | None,
    needs_text: bool,
    max_pixels: int,
    rows: int,
    keep_bytes: bool = False,
) -> Iterator[pa.Table]:
    """Stage 1 (CPU task): read units' records and decode/preprocess them, ``rows`` at a time.

    ``keep_bytes``: pass the image bytes on undecoded (the encoder decodes them on its GPU)."""
    for unit in units.column("unit").to_pylist():
        for records in read_unit(json.loads(unit), done):
            for start in range(0, records.num_rows, rows):
                yield prepare_records(records.slice(start, rows), prep, needs_text, max_pixels, keep_bytes)


def write_shards(batch: pa.Table, output: str, info: EmbeddingInfo, metadata_fields: list[pa.Field]) -> pa.Table:
    """Stage 3 (task): commit embedded rows as a shard and failed rows as an error file."""
    ok = pc.is_null(batch.column("error"))
    good = batch.filter(ok)
    bad = batch.filter(pc.invert(ok))
    schema = info.shard_schema(metadata_fields)
    if good.num_rows:
        good = good.select(schema.names)
        try:
            good = good.cast(schema)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # a table whose later files infer other types
            good = good.replace_schema_metadata(schema.metadata)
        commit_table(good, output)
    if bad.num_rows:
        commit_table(bad.select(ERRORS_SCHEMA.names).cast(ERRORS_SCHEMA), f"{output.rstrip('/')}/{ERRORS_DIR}")
    return pa.table({"rows": [good.num_rows], "errors": [bad.num_rows]})


# -- the plan ----------------------------------------------------------------------------------------


@dataclass
class EncoderResources:
    actors: int
    gpus_per_actor: float
    cpus_per_actor: float
    threads: int | None


def encoder_resources(cfg: EmbedConfig, device: str) -> EncoderResources:
    res = cfg.resources
    if device == "cuda":
        actors = res.encoder_actors or max(1, int(cluster_gpus() // res.gpus_per_encoder))
        return EncoderResources(actors, res.gpus_per_encoder, res.cpus_per_encoder or 1.0, None)
    # One CPU actor per node (Ray Data spreads its actors): it reserves one CPU but runs torch on all of
    # its node's cores (threads=None: decided in the actor, runtime.node_cpus); decode tasks are short
    # and interleave, so the cores stay busy instead of half of them waiting on a reservation.
    actors = res.encoder_actors or cluster_cpu_nodes()
    cpus = res.cpus_per_encoder or 1.0
    threads = int(res.cpus_per_encoder) if res.cpus_per_encoder else None
    return EncoderResources(actors, 0.0, cpus, threads)


def _row_bytes(prep: ImagePrep, keep_bytes: bool) -> int:
    """What one row weighs between decode and encode: its pixels, or its compressed bytes."""
    return READ_BYTES_PER_ROW if keep_bytes else prep.size[0] * prep.size[1] * 3 + 1024


def _configure_streaming(cfg: EmbedConfig, prep: ImagePrep, keep_bytes: bool = False) -> None:
    """Keep data moving in encoder-batch-sized blocks, with a bounded amount in flight."""
    from ray.data import DataContext, ExecutionResources

    context = DataContext.get_current()
    # Ray Data buffers a task's output up to target_max_block_size (128 MiB) before passing it on; a
    # block of one encoder batch lets each stage start as soon as one batch is ready (steady progress).
    context.target_max_block_size = max(1 << 20, cfg.batch_size * _row_bytes(prep, keep_bytes))
    if cfg.resources.object_store_budget:
        # Decoding is cheaper than encoding: unbounded, readers would buffer the corpus in the object store.
        context.execution_options.resource_limits = ExecutionResources.for_limits(
            object_store_memory=cfg.resources.object_store_budget
        )


def build_embed_plan(
    source: Source,
    done: pa.Array | None,
    prep: ImagePrep | None,
    spec,
    info: EmbeddingInfo,
    cfg: EmbedConfig,
    decode_on_encoder: bool = False,
):
    """The Ray Data plan of the embed job; ``decode_on_encoder``: images travel as bytes, decoded by the encoder."""
    import ray

    _configure_streaming(cfg, prep, decode_on_encoder)
    resources = encoder_resources(cfg, spec.device)
    units = ray.data.from_items(units_to_json(source.units), override_num_blocks=max(1, len(source.units)))
    prepared = units.map_batches(
        partial(
            read_and_prepare,
            done=done if done is not None and len(done) else None,
            prep=prep if info.modality in ("image", "both") else None,
            needs_text=info.modality in ("text", "both"),
            max_pixels=cfg.max_image_pixels,
            rows=cfg.batch_size,
            keep_bytes=decode_on_encoder,
        ),
        batch_size=1,
        batch_format="pyarrow",
        num_cpus=cfg.resources.cpus_per_reader,
        # What a decode task holds: its input bytes and the prepared pixels. Declaring it also keeps
        # decoding in its own parallel tasks: Ray Data fuses a task stage into the next actor stage when
        # their resources are equal (ray#54433), which would serialise decode and encode in one actor.
        memory=READER_BASE_MEMORY + cfg.batch_size * (2 * _row_bytes(prep, decode_on_encoder) + READ_BYTES_PER_ROW),
    )
    embedded = prepared.map_batches(
        EmbedBatches,
        fn_constructor_kwargs={
            "spec": spec,
            "modality": info.modality,
            "dtype": info.dtype,
            "threads": resources.threads,
            "decode_images": decode_on_encoder,
            "max_pixels": cfg.max_image_pixels,
        },
        batch_size=cfg.batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=resources.actors),
        num_gpus=resources.gpus_per_actor or None,
        num_cpus=resources.cpus_per_actor,
    )
    return embedded.map_batches(
        partial(write_shards, output=cfg.output.path, info=info, metadata_fields=source.metadata_fields),
        batch_size=cfg.output.rows_per_shard,
        batch_format="pyarrow",
        num_cpus=0,  # I/O: committing a shard must never wait behind decode tasks for a CPU
    )


# -- the job ----------------------------------------------------------------------------------------


def _progress(total: int | None, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="rows", desc="embed", disable=not enabled, file=sys.stderr, dynamic_ncols=True)


def _check_errors(rows: int, errors: int, limit: float, output: str, final: bool) -> None:
    seen = rows + errors
    if seen and (final or seen >= MIN_ROWS_FOR_ERROR_CHECK) and errors / seen > limit:
        raise LatentError(
            f"{errors:,} of {seen:,} rows failed ({errors / seen:.1%}), more than max_error_fraction={limit}; "
            f"see {output}/{ERRORS_DIR}. Fix the input (or raise max_error_fraction) and rerun: "
            f"finished shards are kept."
        )


def _describe(name: str, pretrained: str | None):
    weights = resolve_model(name, pretrained)
    return weights, describe_model(weights)


def run_embed(cfg: EmbedConfig) -> EmbedSummary:
    """Embed the corpus at ``cfg.input.path`` into ``cfg.output.path``, resuming any earlier run."""
    started = time.perf_counter()
    output = OutputDir(cfg.output.path)
    # Start-up: the weights are resolved and hashed, and the model described, in a thread while Ray
    # starts (both take seconds, mostly waiting); a finished output starts no Ray at all.
    with ThreadPoolExecutor(1, thread_name_prefix="latent-model") as pool:
        model = pool.submit(_describe, cfg.model.name, cfg.model.pretrained)
        source = open_source(cfg.input)
        modality = resolve_modality(cfg.modality, source)
        if not output.complete:
            init_ray(cfg.ray)
        weights, described = model.result()
    info = EmbeddingInfo.create(described.fingerprint, cfg.output.dtype.value, modality)
    output.claim(info)
    if output.complete:
        counts = output.counts()
        summary = EmbedSummary(cfg.output.path, counts.rows, counts.errors, 0, 0, 0.0, 0.0, already_complete=True)
        print(summary.render())
        return summary

    device = resolve_device(cfg.model.device, cluster_gpus())
    spec = weights.on(device, resolve_precision(cfg.model.precision, device))
    log.info("encoding on %s (%s) with %d CPUs in the cluster", device, spec.precision, cluster_cpus())
    record = RunRecord.start(output.state_dir, cfg)
    output.clean_tmp()
    done = output.done_ids()
    source = filter_done_units(source, done)
    prep = ImagePrep.from_transform(described.image_transform, draft=cfg.decode.draft)
    on_encoder = modality != "text" and decode_in_encoder(cfg.decode.device, device, described.image_transform)
    log.info("decoding images %s", "in the encoder (nvJPEG)" if on_encoder else "in CPU tasks (Pillow)")
    plan = build_embed_plan(source, done, prep, spec, info, cfg, decode_on_encoder=on_encoder)

    rows = errors = 0
    first_seen: tuple[float, int] | None = None  # (time, rows) when the first shard came in
    last_seen = 0.0
    with _progress(source.total_rows, cfg.progress) as bar:
        # prefetch_batches=0: with prefetching, each stats block waits for the next one (a shard late).
        for stats in plan.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=0):
            new_rows, new_errors = sum(stats.column("rows").to_pylist()), sum(stats.column("errors").to_pylist())
            rows, errors = rows + new_rows, errors + new_errors
            last_seen = time.perf_counter()
            first_seen = first_seen or (last_seen, rows + errors)
            bar.update(new_rows + new_errors)
            bar.set_postfix(errors=errors, refresh=False)
            _check_errors(rows, errors, cfg.max_error_fraction, cfg.output.path, final=False)

    output.remove_duplicates()
    counts = output.counts()
    _check_errors(counts.rows, counts.errors, cfg.max_error_fraction, cfg.output.path, final=True)
    wall = time.perf_counter() - started
    steady = 0.0
    if first_seen and last_seen > first_seen[0]:
        steady = (rows + errors - first_seen[1]) / (last_seen - first_seen[0])
    summary = EmbedSummary(
        output=cfg.output.path,
        rows=counts.rows,
        errors=counts.errors,
        rows_this_run=rows,
        errors_this_run=errors,
        wall_seconds=round(wall, 3),
        rows_per_second=round((rows + errors) / wall, 2) if wall else 0.0,
        steady_rows_per_second=round(steady, 2),
    )
    output.mark_complete(asdict(summary))
    record.finish(asdict(summary))
    print(summary.render())
    return summary
