"""The embed job: corpus -> read+prepare (CPU tasks) -> encode (actor pool) -> commit shards (tasks).

``embed_job`` writes the job as units + stages + a writer for the runner (pipeline/runner/),
which builds the Ray Data plan, resumes and summarises; ``run_embed`` decides everything at the
edge (model, device, precision) and runs it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from functools import partial

import pyarrow as pa

from pipeline.config import EmbedConfig, InputFormat, Modality
from pipeline.encode.encoder import EmbedBatches
from pipeline.encode.gpu_decode import decode_in_encoder
from pipeline.encode.model import describe_model, resolve_model
from pipeline.encode.preprocess import ImagePrep, prepare_records
from pipeline.errors import LatentError
from pipeline.io.embed_output import OutputDir
from pipeline.io.publish import refuse_output_inside_inputs
from pipeline.io.records import Source
from pipeline.io.shards import ERRORS_DIR, ERRORS_SCHEMA, EmbeddingInfo, commit_table
from pipeline.io.sources import filter_done_units, open_corpus, read_corpus_unit
from pipeline.runner import (
    ActorStage,
    Job,
    JobResult,
    ReadStage,
    WriteStage,
    actor_resources,
    check_error_fraction,
    completed_summary,
    run_job,
)
from pipeline.runtime import (
    cluster_cpus,
    init_ray,
    job_gpus,
    resolve_device,
    resolve_precision,
    runs_inline,
)

log = logging.getLogger(__name__)

READ_BYTES_PER_ROW = 256 * 1024  # a typical web JPEG plus its sidecars
GPU_BATCH = 256  # batch_size null on CUDA
CPU_BATCH = 32  # ... and on a CPU: 256 rows of ViT-B-32 were ~100 s on 2 cores (1.5-2.5 rows/s), 32 are ~15 s
READER_BASE_MEMORY = 768 * 1024**2  # a decode worker's own footprint (torch, torchvision, PIL, pyarrow)


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


def resolve_modality(requested: Modality, source: Source) -> tuple[str, list[str]]:
    """(modality, optional kinds): auto embeds every image, plus the texts that exist (``optional: [text]``)."""
    if requested == Modality.auto:
        if source.has_images and source.has_texts:
            if source.captioned_rows is not None and source.captioned_rows == source.total_rows:
                return "both", []  # every image has its caption
            if source.captioned_rows is not None:
                log.warning(
                    "modality=auto: %d of %d images have a caption: embedding every image, and the captions "
                    "that exist (text_embedding is null in the other rows)",
                    source.captioned_rows,
                    source.total_rows,
                )
            return "both", ["text"]
        return ("image" if source.has_images else "text"), []
    if requested in (Modality.image, Modality.both) and not source.has_images:
        raise LatentError(f"modality={requested.value} needs images, but the input has none (modality=text?)")
    if requested in (Modality.text, Modality.both) and not source.has_texts:
        raise LatentError(
            f"modality={requested.value} needs texts, but the input has no captions or text column "
            f"(modality=image embeds the images alone)"
        )
    return requested.value, []


# -- the stages: plain callables on Arrow tables ----------------------------------------------------


def read_and_prepare(
    unit: dict,
    done: pa.Array | None,
    prep: ImagePrep | None,
    needs_text: bool,
    max_pixels: int,
    rows: int,
    keep_bytes: bool = False,
) -> Iterator[pa.Table]:
    """Stage 1 (CPU task): read a unit's records and decode/preprocess them, ``rows`` at a time.

    ``needs_text``: a row without a text is an error (modality text, or both with every caption required).
    ``keep_bytes``: pass the image bytes on undecoded (the encoder decodes them on its GPU)."""
    for records in read_corpus_unit(unit, done, rows):
        for start in range(0, records.num_rows, rows):
            yield prepare_records(records.slice(start, rows), prep, needs_text, max_pixels, keep_bytes)


def write_shards(good: pa.Table, output: str, info: EmbeddingInfo, metadata_fields: list[pa.Field]) -> None:
    """Stage 3 (task): commit embedded rows as a shard (the runner records failed rows as errors)."""
    schema = info.shard_schema(metadata_fields)
    good = good.select(schema.names)
    try:
        good = good.cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # a table whose later files infer other types
        good = good.replace_schema_metadata(schema.metadata)
    commit_table(good, output)


# -- the job ----------------------------------------------------------------------------------------


def _row_bytes(prep: ImagePrep, keep_bytes: bool) -> int:
    """What one row weighs between decode and encode: its pixels, or its compressed bytes."""
    return READ_BYTES_PER_ROW if keep_bytes else prep.size[0] * prep.size[1] * 3 + 1024


def embed_job(
    source: Source,
    prep: ImagePrep | None,
    spec,
    info: EmbeddingInfo,
    cfg: EmbedConfig,
    output: OutputDir | None = None,
    decode_on_encoder: bool = False,
    inline: bool = False,
) -> Job:
    """The embed job for the runner: units of the corpus, read+prepare -> encoder actors -> shards.

    ``decode_on_encoder``: images travel as bytes and the encoder decodes them (nvJPEG on a GPU);
    ``inline``: the stages run in this process, without Ray (``Job.inline``)."""
    res = cfg.resources
    row_bytes = _row_bytes(prep, decode_on_encoder)
    batch = cfg.batch_size or (GPU_BATCH if spec.device == "cuda" else CPU_BATCH)
    return Job(
        name="embed",
        output=output or OutputDir(cfg.output.path),
        config=cfg,
        units=source.units,
        total_rows=source.total_rows,
        drop_done=lambda units, done: _drop_done_files(source, units, done),
        read=ReadStage(
            partial(
                read_and_prepare,
                prep=prep if info.modality in ("image", "both") else None,
                needs_text=info.modality in ("text", "both") and "text" not in info.optional,
                max_pixels=cfg.max_image_pixels,
                rows=batch,
                keep_bytes=decode_on_encoder,
            ),
            cpus=res.cpus_per_reader,
            # What a decode task holds: its input bytes and the prepared pixels. Declaring it also keeps
            # decoding in its own parallel tasks: Ray Data fuses a task stage into the next actor stage when
            # their resources are equal (ray#54433), which would serialise decode and encode in one actor.
            memory=READER_BASE_MEMORY + batch * (2 * row_bytes + READ_BYTES_PER_ROW),
        ),
        process=ActorStage(
            EmbedBatches,
            {
                "spec": spec,
                "modality": info.modality,
                "dtype": info.dtype,
                "optional": tuple(info.optional),
                "decode_images": decode_on_encoder,
                "max_pixels": cfg.max_image_pixels,
            },
            actor_resources(res.encoder_actors, res.cpus_per_encoder, res.gpus_per_encoder, spec.device, inline),
            batch_size=batch,
        ),
        write=WriteStage(
            partial(write_shards, output=cfg.output.path, info=info, metadata_fields=source.metadata_fields),
            rows=cfg.output.rows_per_shard,
            errors_schema=ERRORS_SCHEMA,
        ),
        max_error_fraction=cfg.max_error_fraction,
        object_store_budget=res.object_store_budget,
        actor_cpus_key="resources.cpus_per_encoder",
        # Ray Data buffers a task's output up to target_max_block_size (128 MiB) before passing it on; a
        # block of one encoder batch lets each stage start as soon as one batch is ready (steady progress).
        block_bytes=max(1 << 20, batch * row_bytes),
        stall_timeout_s=cfg.ray.stall_timeout_s,
        commit_every_s=cfg.output.commit_every_s,
        progress=cfg.progress,
        inline=inline,
    )


def _drop_done_files(source: Source, units: list[dict], done: pa.Array) -> tuple[list[dict], int | None]:
    """Image folders: ids are known before reading, so done files are dropped on the driver."""
    if source.format != InputFormat.images:
        return units, None if source.total_rows is None else max(0, source.total_rows - len(done))
    pending = filter_done_units(replace(source, units=units), done)
    return pending.units, pending.total_rows


def _same_weights(recorded: dict, name: str, pretrained: str | None) -> bool:
    """Whether a recorded model fingerprint names these weights (checked without loading anything)."""
    if pretrained is None or str(pretrained).lower() in ("", "none", "null", "random"):
        pretrained = None
    elif os.path.isfile(pretrained):
        pretrained = os.path.basename(pretrained)  # as the fingerprint records a checkpoint
    return recorded.get("name") == name and recorded.get("pretrained") == pretrained


def _already_complete(cfg: EmbedConfig) -> EmbedSummary | None:
    """The summary of a finished output made with these weights, checked before any model or Ray starts."""
    output = OutputDir(cfg.output.path)
    info = output.recorded_info() if completed_summary(output) is not None else None
    if info is None or not _same_weights(info.model, cfg.model.name, cfg.model.pretrained):
        return None  # unfinished, or another model: the normal path resumes or refuses it
    if cfg.modality != Modality.auto and (info.optional or info.modality != cfg.modality.value):
        return None  # another modality than the one it was written with: the normal path refuses it
    counts = output.counts()
    return EmbedSummary(cfg.output.path, counts.rows, counts.errors, 0, 0, 0.0, 0.0, already_complete=True)


def _describe(name: str, pretrained: str | None):
    weights = resolve_model(name, pretrained)
    return weights, describe_model(weights)


def run_embed(cfg: EmbedConfig) -> EmbedSummary:
    """Embed the corpus at ``cfg.input.path`` into ``cfg.output.path``, resuming any earlier run."""
    refuse_output_inside_inputs({"output.path": cfg.output.path}, {"input.path": cfg.input.path})
    done = _already_complete(cfg)
    if done is not None:
        print(done.render())
        return done
    source = open_corpus(cfg.input)
    modality, optional = resolve_modality(cfg.modality, source)
    output = OutputDir(cfg.output.path)
    output.prepare()
    with output.lock():  # a second writer is refused before any model or Ray starts
        # Start-up: the weights are resolved and hashed, and the model described, in a thread while Ray
        # starts (both take seconds, mostly waiting).
        inline = runs_inline(cfg.ray, source.total_rows)
        with ThreadPoolExecutor(1, thread_name_prefix="latent-model") as pool:
            model = pool.submit(_describe, cfg.model.name, cfg.model.pretrained)
            if not inline:
                init_ray(cfg.ray)
            weights, described = model.result()
        info = EmbeddingInfo.create(described.fingerprint, cfg.output.dtype.value, modality, optional)
        output.claim(info)
        device = resolve_device(cfg.model.device, job_gpus(cfg.ray, inline))
        spec = weights.on(device, resolve_precision(cfg.model.precision, device))
        if inline:
            log.info(
                "encoding on %s (%s) in this process, without Ray (%s rows <= ray.inline_max_rows)",
                device,
                spec.precision,
                f"{source.total_rows:,}",
            )
        else:
            log.info("encoding on %s (%s) with %d CPUs in the cluster", device, spec.precision, cluster_cpus())
        prep = ImagePrep.from_transform(described.image_transform, draft=cfg.decode.draft)
        on_encoder = modality != "text" and decode_in_encoder(cfg.decode.device, device, described.image_transform)
        pillow = "before the encoder (Pillow)" if inline else "in CPU tasks (Pillow)"
        log.info("decoding images %s", "in the encoder (nvJPEG)" if on_encoder else pillow)
        job = embed_job(source, prep, spec, info, cfg, output, decode_on_encoder=on_encoder, inline=inline)

        def finish(result: JobResult) -> dict:
            counts = output.counts()
            check_error_fraction(counts.rows, counts.errors, cfg.max_error_fraction, cfg.output.path, final=True)
            summary = EmbedSummary(
                output=cfg.output.path,
                rows=counts.rows,
                errors=counts.errors,
                rows_this_run=result.rows,
                errors_this_run=result.errors,
                wall_seconds=result.wall_seconds,
                rows_per_second=result.rows_per_second,
                steady_rows_per_second=result.steady_rows_per_second,
            )
            return asdict(summary)

        summary = EmbedSummary(**run_job(job, finish))
    print(summary.render())
    return summary
