"""Each command's settings: plain dataclasses with their defaults and explanations (the one source of both).

The library takes these dataclasses (or plain arguments) and never imports Hydra or omegaconf: the
CLI (pipeline/cli.py) composes them from the command line, and ``latent <command> --help`` renders
each key's default and explanation from here. A key whose default is ``REQUIRED`` must be set.

One module a command (embed, index, search, serve, map; launch.py: render-job and submit-job), what
several share in common.py, the machinery (``setting``, ``describe``...) in settings.py; every name is
importable from ``pipeline.config``.
"""

from __future__ import annotations

from pipeline.config.common import (
    PRECISION_HELP,
    Device,
    IndexPathConfig,
    InputFormat,
    Modality,
    Precision,
    RayConfig,
    SearchModelConfig,
    SearchOutput,
)
from pipeline.config.embed import (
    DecodeConfig,
    EmbedConfig,
    EmbedResources,
    InputConfig,
    ModelConfig,
    OutputConfig,
    OutputDtype,
)
from pipeline.config.index import (
    DuplicatePolicy,
    IndexBuildConfig,
    IndexCommandConfig,
    IndexInputConfig,
    IndexMode,
    Metric,
    ParallelAddConfig,
    Storage,
    VerifyCommandConfig,
)
from pipeline.config.launch import (
    JobConfig,
    JobHead,
    JobKind,
    JobWorkers,
    K8sJobConfig,
    RuntimeEnvConfig,
    SlurmJobConfig,
)
from pipeline.config.map import (
    CoarseRegions,
    LabelMethod,
    MapCommandConfig,
    MapIndexConfig,
    MapInputConfig,
    MapMethod,
    MapMode,
    MapOutputConfig,
    MapParams,
    MapQualityConfig,
)
from pipeline.config.search import (
    KnnCommandConfig,
    KnnInputConfig,
    KnnOutputConfig,
    KnnResources,
    PathCommandConfig,
    QueryConfig,
    QueryKind,
    SearchCommandConfig,
)
from pipeline.config.serve import (
    ServeAuthConfig,
    ServeBackend,
    ServeConfig,
    ServeCorsConfig,
    ServeMapConfig,
)
from pipeline.config.settings import (
    REQUIRED,
    describe,
    missing_keys,
    setting,
    to_plain,
    to_yaml,
)

# conf/<name>.yaml composes each of these (pipeline/cli.py registers them with Hydra as <name>_schema)
SCHEMAS: dict[str, type] = {
    "embed": EmbedConfig,
    "index": IndexCommandConfig,
    "search": SearchCommandConfig,
    "verify": VerifyCommandConfig,
    "knn": KnnCommandConfig,
    "serve": ServeConfig,
    "job": JobConfig,
    "map": MapCommandConfig,
    "path": PathCommandConfig,
}

__all__ = [
    "CoarseRegions",
    "DecodeConfig",
    "Device",
    "DuplicatePolicy",
    "EmbedConfig",
    "EmbedResources",
    "IndexBuildConfig",
    "IndexCommandConfig",
    "IndexInputConfig",
    "IndexMode",
    "IndexPathConfig",
    "InputConfig",
    "InputFormat",
    "JobConfig",
    "JobHead",
    "JobKind",
    "JobWorkers",
    "K8sJobConfig",
    "KnnCommandConfig",
    "KnnInputConfig",
    "KnnOutputConfig",
    "KnnResources",
    "LabelMethod",
    "MapCommandConfig",
    "MapIndexConfig",
    "MapInputConfig",
    "MapMethod",
    "MapMode",
    "MapOutputConfig",
    "MapParams",
    "MapQualityConfig",
    "Metric",
    "Modality",
    "ModelConfig",
    "OutputConfig",
    "OutputDtype",
    "PRECISION_HELP",
    "ParallelAddConfig",
    "PathCommandConfig",
    "Precision",
    "QueryConfig",
    "QueryKind",
    "REQUIRED",
    "RayConfig",
    "RuntimeEnvConfig",
    "SCHEMAS",
    "SearchCommandConfig",
    "SearchModelConfig",
    "SearchOutput",
    "ServeAuthConfig",
    "ServeBackend",
    "ServeConfig",
    "ServeCorsConfig",
    "ServeMapConfig",
    "SlurmJobConfig",
    "Storage",
    "VerifyCommandConfig",
    "describe",
    "missing_keys",
    "setting",
    "to_plain",
    "to_yaml",
]
