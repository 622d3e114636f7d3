"""`python tests/tiny_cli.py <command> ...`: the latent CLI with the tests' tiny model registered.

Subprocess tests use it so that they can run the real CLI without downloading a model.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from conftest import register_tiny_model  # noqa: E402

from pipeline.cli import main  # noqa: E402

if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="latent-tiny-") as config_dir:
        register_tiny_model(Path(config_dir))
    main()
