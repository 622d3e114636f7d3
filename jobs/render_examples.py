"""Render the example jobs in jobs/k8s and jobs/slurm from pipeline.config.JobConfig (`make jobs`).

The files are checked in so users can read them; tests/test_launch.py checks they equal a fresh
rendering, so they never drift from the config. Render your own with `latent render-job` (docs/cluster.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# file -> (render-job overrides, the latent command)
EXAMPLES: dict[str, tuple[list[str], list[str]]] = {
    "jobs/k8s/latent-embed.yaml": (
        ["kind=k8s", "name=latent-embed"],
        ["latent", "embed", "input.path=s3://my-bucket/photos", "output.path=s3://my-bucket/embeddings"],
    ),
    "jobs/slurm/latent-embed.sbatch": (
        ["kind=slurm", "name=latent-embed", "runtime_env.working_dir=/shared/latent"],
        ["latent", "embed", "input.path=/shared/photos", "output.path=/shared/embeddings"],
    ),
}


def render(path: str) -> str:
    from pipeline.cli import command_override, compose
    from pipeline.launch import render_job

    overrides, command = EXAMPLES[path]
    return render_job(compose("job", command_override([*overrides, "--", *command])))


if __name__ == "__main__":
    for path in EXAMPLES:
        (ROOT / path).write_text(render(path))
        print(f"wrote {path}")
