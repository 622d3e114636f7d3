"""The one executor of latent's Ray Data jobs: units of work -> stages -> committed outputs.

A job is written once as *units + stages + a writer*; the runner owns everything around them:
the Ray Data plan (read tasks -> an actor pool -> write tasks), resources per stage (decided in
``actor_resources``), the bounded object-store budget, the output lock, the error table and the
max error fraction, the progress bar (rows/s) and the run record, stall detection, clear messages
for Ctrl-C and unwritable outputs, and resume: every input row is committed exactly once, however
often the job is killed and rerun. A small job (``Job.inline``) runs the same stages in the calling
process instead, without Ray (``run_inline``): same statistics, markers and resume.

Resume works at two grains. Committed files are the manifest: a row is done when a committed file
in one of the output's data folders holds its key, and a rerun passes those keys to the read stage
to skip. On top, each unit (a file, a row group, a batch of image files) gets a completion marker
in ``<output>/_latent/units/done/`` once every row its read emitted is committed, so a rerun does
not even read finished units. Rows that a retried task committed twice are removed at the end.

Example, a job that upper-cases a text column of Parquet files (see embed.py and search/knn.py)::

    from pipeline.runner.output import JobOutput
    from pipeline.runner import ActorStage, Job, ReadStage, WriteStage, actor_resources, run_job

    def read(unit: dict, done: pa.Array | None) -> Iterator[pa.Table]:  # CPU task; must yield `key`, `error`
        table = pq.read_table(unit["path"]).select(["id", "text"])
        yield table.append_column("error", pa.nulls(table.num_rows, pa.string()))

    class Upper:  # the actor: built once per actor, called on batches; same rows out as in
        def __init__(self, threads: int | None) -> None: ...
        def __call__(self, batch: pa.Table) -> pa.Table:
            return batch.set_column(1, "text", pc.utf8_upper(batch.column("text")))

    output = JobOutput("out/", data_dirs=("rows", "_errors"), key="id")
    job = Job(
        name="upper", output=output, config=cfg,
        units=[{"unit_id": p, "path": p} for p in paths],          # stable ids: markers survive reruns
        read=ReadStage(read, cpus=1.0),
        process=ActorStage(Upper, {}, actor_resources(None, None, 0.0, "cpu"), batch_size=512),
        write=WriteStage(lambda good: commit_table(good, "out/rows"), rows=65536, errors_schema=ERRORS),
    )
    summary = run_job(job, finish=lambda result: {"rows": result.rows, "errors": result.errors})

``finish`` runs under the lock after the plan (final checks, extra outputs such as knn's groups);
what it returns is recorded as the summary and ``_SUCCESS`` is written. Rows whose ``error`` is
set go to ``<output>/_errors`` (``WriteStage.errors_schema``), the others to ``WriteStage.fn``.
"""

from pipeline.runner.execute import run_job
from pipeline.runner.job import (
    ActorResources,
    ActorStage,
    Job,
    JobInterrupted,
    JobResult,
    ReadStage,
    WriteStage,
    actor_resources,
    check_error_fraction,
    completed_summary,
)
from pipeline.runner.plan import UNIT_COLUMN, build_plan, run_inline
from pipeline.runner.watchdog import unmet_demand

__all__ = [
    "UNIT_COLUMN",
    "ActorResources",
    "ActorStage",
    "Job",
    "JobInterrupted",
    "JobResult",
    "ReadStage",
    "WriteStage",
    "actor_resources",
    "build_plan",
    "check_error_fraction",
    "completed_summary",
    "run_inline",
    "run_job",
    "unmet_demand",
]
