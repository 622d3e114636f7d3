"""What a `latent index` run did: timing of its phases, progress bars, and the summary printed at the end."""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from pipeline.index.plan.choose import human
from pipeline.index.store.format import IndexInfo, Recall


@dataclass
class IndexSummary:
    """What a run did; printed at the end and returned."""

    path: str
    mode: str
    factory: str
    reason: str
    device: str
    input_rows: int
    added: int
    skipped: int
    ntotal: int
    dim: int
    metric: str
    search_params: dict[str, Any]
    recall: Recall | None
    qps: float | None
    memory_bytes: int
    seconds: float
    phases: dict[str, float] = field(default_factory=dict)
    ray_tasks: int = 0
    ray_nodes: list[str] = field(default_factory=list)  # ids of the Ray nodes that ran add tasks
    peak_rss_bytes: int = 0
    warnings: list[str] = field(default_factory=list)
    exact_qps: float | None = None  # exact search's batch throughput on the same queries (measured while adding)
    tried: list[dict[str, Any]] = field(default_factory=list)  # auto: each candidate built, its recall and speed
    replaced: int = 0  # append: rows whose id was indexed with another vector, replaced (on_duplicate_id)
    null_rows: int = 0  # input rows whose vector is null (modality=auto: no caption): not indexed
    column: str = ""  # the embedding column indexed

    def text(self) -> str:
        recall = (
            f"recall@{self.recall.k} {self.recall.value:.4f} (95% interval {self.recall.lower or 0:.4f}"
            f"-{self.recall.upper or 1:.4f}, target {self.recall.target}, {self.recall.queries} "
            f"{self.recall.method or 'held-out'} queries)"
            if self.recall
            else "recall not measured"
        )
        phases = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in self.phases.items())
        speed = f"{self.qps or 0:.0f} queries/s (batch)"
        if self.exact_qps and self.qps and self.factory != "Flat":
            speed += f", {self.qps / self.exact_qps:.1f}x exact search's {self.exact_qps:.0f}"
        lines = [
            f"latent index: {self.mode} {self.path}",
            f"  index     {self.factory}  ({self.reason})",
            f"  vectors   {self.ntotal} x {self.dim} ({self.metric}); added {self.added}, skipped {self.skipped}"
            + (f", replaced {self.replaced}" if self.replaced else "")
            + (f"; {self.null_rows} rows with a null {self.column} left out" if self.null_rows else ""),
            f"  search    {self.search_params or '{}'}: {recall}",
            f"  speed     {speed}",
            f"  memory    index {human(self.memory_bytes)}, peak RSS {human(self.peak_rss_bytes)}",
            f"  time      {self.seconds:.1f}s on {self.device}"
            + (f", add on {self.ray_tasks} Ray tasks across {len(self.ray_nodes)} node(s)" if self.ray_tasks else "")
            + f" ({phases})",
        ]
        for trial in self.tried[:-1]:
            lines.append(f"  tried     {trial['factory']}: {trial['outcome']}")
        lines += [f"  warning   {w}" for w in self.warnings]
        return "\n".join(lines)


def summarize(
    info: IndexInfo,
    *,
    path: str,
    mode: str,
    reason: str,
    device: str,
    input_rows: int,
    added: int,
    skipped: int,
    null_rows: int = 0,
    clock: Clock,
    started: float,
    memory_bytes: int,
    warnings: list[str] | None = None,
    **extra: Any,
) -> IndexSummary:
    """The one place a run's summary is made: from what index.json records and what the run counted
    (``input_rows``: every row of the input, ``null_rows`` of them without a vector)."""
    return IndexSummary(
        path=path,
        mode=mode,
        factory=info.factory,
        reason=reason,
        device=device,
        input_rows=input_rows,
        added=added,
        skipped=skipped,
        null_rows=null_rows,
        column=info.column,
        ntotal=info.ntotal,
        dim=info.dim,
        metric=info.metric,
        search_params=info.search_params,
        recall=info.recall,
        qps=info.qps,
        memory_bytes=memory_bytes,
        seconds=round(time.perf_counter() - started, 2),
        phases={k: round(v, 2) for k, v in clock.phases.items()},
        peak_rss_bytes=peak_rss(),
        warnings=list(warnings or []),
        exact_qps=info.exact_qps,
        **extra,
    )


def progress_bar(enabled: bool, desc: str, total: int | None = None, unit: str = "vec") -> tqdm:
    return tqdm(total=total, desc=f"{desc:<5}", unit=unit, unit_scale=True, disable=not enabled, file=sys.stderr)


class Clock:
    """Seconds spent in each named phase of a run."""

    def __init__(self) -> None:
        self.phases: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.phases[name] = self.phases.get(name, 0.0) + time.perf_counter() - start


def peak_rss() -> int:
    """This process's peak resident memory: VmHWM on Linux (ru_maxrss also counts the image of the parent
    this process was forked from), ru_maxrss elsewhere."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
