"""Submit a latent command to a running Ray cluster through its Jobs API, and follow it to the end.

usage: python jobs/ray/submit.py address=http://HEAD:8265 [runtime_env.working_dir=.] [key=value ...] \\
           -- latent embed input.path=... output.path=...

The same as `latent submit-job` (keys: conf/job.yaml, `latent submit-job --help`). With
runtime_env.working_dir=. this checkout is uploaded and the job runs its code; runtime_env.pip=[...]
installs packages for the job on every node. Exits with 0 when the job succeeded. docs/cluster.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # this checkout's latent, also when not installed

from pipeline.cli import main  # noqa: E402

if __name__ == "__main__":
    main(["submit-job", *sys.argv[1:]])
