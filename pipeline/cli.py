"""`latent <command> [key=value ...]`: one console script, one Hydra app per command.

Hydra stays here, at the edge: each app turns its DictConfig into the command's dataclass and
calls the library.
"""

from __future__ import annotations

import importlib
import shlex
import sys
from collections.abc import Callable

import hydra
from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue

from pipeline.config import CONFIG_PACKAGE, register_configs, to_dataclass
from pipeline.errors import LatentError

# command -> ("module:function" taking the command's dataclass, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "embed": ("pipeline.embed:run_embed", "embed an image/text corpus into Parquet shards"),
    "index": (
        "pipeline.index.build:run_index",
        "build a FAISS index of an embedding dataset, tuned to a target recall",
    ),
    "search": ("pipeline.search.command:run_search", "the nearest items of an index to a text, image or vector"),
    "knn": ("pipeline.search.knn:run_knn", "every query of a table x an index -> neighbours Parquet (+ dedup)"),
    "serve": ("pipeline.serve.server:run_serve", "serve an index over HTTP: the search API and a web page"),
    "render-job": (
        "pipeline.launch:run_render_job",
        "render a KubeRay RayJob, an sbatch script or a Ray Jobs submission of a command",
    ),
    "submit-job": ("pipeline.launch:run_submit_job", "run a command on a Ray cluster through its Jobs API"),
}
CONFIGS = {"render-job": "job", "submit-job": "job"}  # commands sharing another's conf/<name>.yaml

USAGE = """usage: latent <command> [key=value ...] [-m key=a,b ...]
       latent render-job|submit-job [key=value ...] -- latent <command> [key=value ...]

commands:
{commands}

`latent <command> --help` lists the command's keys and their defaults.
"""


def _load(target: str) -> Callable:
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


def _hydra_app(command: str) -> Callable[[], None]:
    target, _ = COMMANDS[command]

    @hydra.main(config_path=f"pkg://{CONFIG_PACKAGE}", config_name=CONFIGS.get(command, command), version_base=None)
    def app(cfg: DictConfig) -> None:
        try:
            config = to_dataclass(cfg)
        except MissingMandatoryValue as err:
            how = "after `--`: ... -- latent embed ..." if command in CONFIGS else f"set it: {err.full_key}=..."
            print(f"latent {command}: missing value for key '{err.full_key}' ({how})", file=sys.stderr)
            sys.exit(2)
        try:
            _load(target)(config)
        except LatentError as err:
            print(f"latent {command}: {err}", file=sys.stderr)
            sys.exit(err.exit_code)

    return app


def command_override(argv: list[str]) -> list[str]:
    """``[k=v ..., "--", word ...]`` -> ``[k=v ..., "command='word ...'"]``: the job's command, quoted for Hydra."""
    cut = argv.index("--")
    command = shlex.join(argv[cut + 1 :]).replace("\\", "\\\\").replace("'", "\\'")
    return [*argv[:cut], f"command='{command}'"]


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = "\n".join(f"  {name:<11} {text}" for name, (_, text) in COMMANDS.items())
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE.format(commands=commands))
        sys.exit(0 if argv else 2)
    command = argv.pop(0)
    if command not in COMMANDS:
        print(f"latent: unknown command '{command}'\n\n" + USAGE.format(commands=commands), file=sys.stderr)
        sys.exit(2)
    if command in CONFIGS and "--" in argv:
        argv = command_override(argv)
    register_configs()
    sys.argv = [f"latent {command}", *argv]  # Hydra reads sys.argv
    _hydra_app(command)()


if __name__ == "__main__":
    main()
