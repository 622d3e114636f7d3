"""`latent <command> [key=value ...]`: one console script, one Hydra app per command.

Hydra and omegaconf stay here, at the edge: the command line is checked against the command's
dataclass (pipeline/config/: the one source of keys, defaults and explanations), composed by
Hydra, turned into that dataclass and handed to the library.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import shlex
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.config import SCHEMAS, describe
from pipeline.errors import LatentError

CONFIG_PACKAGE = "pipeline.conf"  # conf/ is installed as this package (see pyproject.toml)
CONF_DIR = Path(__file__).resolve().parent / "conf"

# command -> ("module:function" taking the command's dataclass, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "embed": ("pipeline.embed:run_embed", "embed an image/text corpus into Parquet shards"),
    "index": (
        "pipeline.index.builder.build:run_index",
        "build a FAISS index of an embedding dataset, tuned to a target recall",
    ),
    "verify": (
        "pipeline.index.store.verify:run_verify",
        "check an index directory's files against their recorded checksums",
    ),
    "search": ("pipeline.search.command:run_search", "the nearest items of an index to a text, image or vector"),
    "knn": ("pipeline.search.knn:run_knn", "every query of a table x an index -> neighbours Parquet (+ dedup)"),
    "serve": ("pipeline.serve.server:run_serve", "serve an index over HTTP: the search API and a web page"),
    "map": ("pipeline.map.build:run_map", "lay out an embedding dataset or an index in 2-D, with named regions"),
    "path": ("pipeline.search.command:run_path", "the items along the great circle between two items (a route)"),
    "render-job": (
        "pipeline.launch:run_render_job",
        "render a KubeRay RayJob, an sbatch script or a Ray Jobs submission of a command",
    ),
    "submit-job": ("pipeline.launch:run_submit_job", "run a command on a Ray cluster through its Jobs API"),
}
CONFIGS = {"render-job": "job", "submit-job": "job"}  # commands sharing another's conf/<name>.yaml
DOCS = {
    "embed": "docs/embedding-dataset.md",
    "index": "docs/indexing.md, docs/index-directory.md",
    "search": "docs/search.md",
    "verify": "docs/indexing.md#verify",
    "knn": "docs/search.md",
    "serve": "docs/http-api.md",
    "map": "docs/map.md",
    "path": "docs/search.md",
    "job": "docs/cluster.md",
}
ALIASES = {"path": {"from": "start", "to": "end"}}  # keys a Python field cannot be named (`from=ID`)

USAGE = """usage: latent <command> [key=value ...] [-m key=a,b ...]
       latent render-job|submit-job [key=value ...] -- latent <command> [key=value ...]

commands:
{commands}

`latent <command> --help` lists the command's keys, their defaults and what they mean.
"""


class ConfigKeyError(LatentError):
    """A command line override names a key the command does not have."""


def config_name(command: str) -> str:
    return CONFIGS.get(command, command)


def register_configs() -> None:
    """Register each command's dataclass with Hydra as ``<name>_schema`` (conf/<name>.yaml composes it)."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for name, node in SCHEMAS.items():
        store.store(name=f"{name}_schema", node=node)


# -- checking overrides against the schema --------------------------------------------------------------


def presets(name: str) -> dict[str, list[str]]:
    """Config groups a command may select (``model=vit-l-14``): group -> preset names in conf/<group>/."""
    fields = {f.name for f in dataclasses.fields(SCHEMAS[name])}
    return {
        group.name: sorted(p.stem for p in group.glob("*.yaml"))
        for group in sorted(CONF_DIR.iterdir())
        if group.is_dir() and group.name in fields
    }


def _open_keys(cls: type, prefix: str = "") -> list[str]:
    """Keys whose value is a mapping: any sub-key below them is the user's (runtime_env.env_vars.NAME)."""
    found = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(f.default_factory):  # type: ignore[arg-type]
            found += _open_keys(f.default_factory, f"{prefix}{f.name}.")  # type: ignore[arg-type]
        elif isinstance(f.default_factory(), dict) if f.default_factory is not dataclasses.MISSING else False:  # type: ignore[misc]
            found.append(f"{prefix}{f.name}")
    return found


def check_overrides(name: str, overrides: list[str]) -> None:
    """Refuse any override (``key=``, ``+key=``, ``++key=``, ``~key``) of a key the command lacks.

    Hydra would suggest ``+key=value`` for an unknown key, which then composes and is dropped when the
    config becomes its dataclass: the setting is lost without a word. Here it is an error that names
    the closest valid key.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    try:
        parsed = parser.parse_overrides(list(overrides))
    except HydraException as err:
        hint = ""
        for override in overrides:  # the one that fails, in the form that parses
            key, sep, value = override.partition("=")
            try:
                parser.parse_overrides([override])
            except HydraException:
                if sep:
                    shown = f'"{value}"' if '"' not in value and "'" not in value else hydra_quote(value)
                    hint = f"; to give {key.lstrip('+')} that value as typed, quote it: '{key}={shown}'"
                break
        raise ConfigKeyError(f"cannot parse the command line: {' '.join(str(err).split())}{hint}") from err
    keys = [key for key, _, _, _ in describe(SCHEMAS[name])]
    groups = presets(name)
    open_keys = _open_keys(SCHEMAS[name])
    for override in parsed:
        key = override.key_or_group
        if key.startswith(("hydra.", "hydra/")) or key == "hydra":
            continue  # Hydra's own settings (hydra.run.dir, hydra/launcher=...): Hydra checks them
        if key in groups and override.package is None:
            if not override.is_sweep_override() and override.value() not in groups[key]:
                raise ConfigKeyError(
                    f"{key}={override.value()}: no such preset (conf/{key}/ has {', '.join(groups[key])})"
                )
            continue
        if key in keys or any(key.startswith(f"{k}.") for k in open_keys):
            continue
        close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6) or difflib.get_close_matches(
            key.rsplit(".", 1)[-1], [k.rsplit(".", 1)[-1] for k in keys], n=1, cutoff=0.6
        )
        hint = ""
        if close:
            match = next((k for k in keys if k == close[0] or k.endswith(f".{close[0]}")), close[0])
            hint = f" (did you mean {match}?)"
        raise ConfigKeyError(
            f"unknown key '{key}' in '{override.input_line}'{hint}. "
            f"`latent {name if name != 'job' else 'render-job'} --help` lists the keys"
        )


# -- composing -------------------------------------------------------------------------------------


def to_dataclass(cfg: Any) -> Any:
    """A composed Hydra ``DictConfig`` as its schema's dataclass; a missing required key is an error."""
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue

    try:
        return OmegaConf.to_object(cfg)
    except MissingMandatoryValue as err:
        raise ConfigKeyError(f"missing value for key '{err.full_key}': set it, {err.full_key}=...") from err


def compose_dictconfig(name: str, overrides: list[str] | None = None) -> Any:
    """conf/<name>.yaml composed with ``key=value`` overrides (checked first), as Hydra's ``DictConfig``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    overrides = list(overrides or [])
    check_overrides(name, overrides)
    register_configs()
    with initialize_config_module(config_module=CONFIG_PACKAGE, version_base=None):
        return hydra_compose(config_name=name, overrides=overrides)


def compose(name: str, overrides: list[str] | None = None) -> Any:
    """The dataclass of conf/<name>.yaml with ``key=value`` overrides applied, as the CLI composes it."""
    return to_dataclass(compose_dictconfig(name, overrides))


def serve_application(args: dict[str, str]) -> Any:
    """``serve run pipeline.cli:serve_application index.path=… [key=value …]`` (and KubeRay's RayService
    ``serveConfigV2``): the Ray Serve application from `latent serve` keys, composed as the CLI does."""
    from pipeline.serve.ray_app import application_of

    return application_of(compose("serve", [f"{key}={value}" for key, value in args.items()]))


def check_values(name: str, overrides: list[str]) -> None:
    """Compose once before Hydra runs the app, so that a bad value exits 2 with the key it names."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        to_dataclass(compose_dictconfig(name, overrides))
    except (HydraException, OmegaConfBaseException) as err:
        cause = err.__cause__ if isinstance(err.__cause__, OmegaConfBaseException) else err
        key = getattr(cause, "full_key", None)
        if key:  # omegaconf's first line says what is wrong; the rest (full_key, reference_type) is its internals
            raise ConfigKeyError(f"{key}: {str(cause).splitlines()[0].strip()}") from err
        raise ConfigKeyError(" ".join(str(cause).split())) from err


# -- --help ----------------------------------------------------------------------------------------


def _format(value: Any) -> str:
    if hasattr(value, "value") and not isinstance(value, (str, int, float)):
        value = value.value
    if isinstance(value, str) and hasattr(value, "value"):  # a str Enum
        value = value.value
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return value if value else '""'
    return str(value)


def render_help(command: str, values: dict[str, Any] | None = None) -> str:
    """The keys of ``command`` with their values (``values``, nested, else the defaults) and explanations."""
    name = config_name(command)
    lines = [f"latent {command}: {COMMANDS[command][1]}", ""]
    if name == "job":
        lines += [f"usage: latent {command} [key=value ...] -- latent <command> [key=value ...]", ""]
    else:
        required = " ".join(f"{k}=..." for k, d, _, s in describe(SCHEMAS[name]) if not s and d == "???")
        lines += [f"usage: latent {command} {required} [key=value ...] [-m key=a,b ...]", ""]
    lines.append("keys (key: default  # what it means):")
    for key, default, text, section in describe(SCHEMAS[name]):
        depth = key.count(".")
        leaf = key.rsplit(".", 1)[-1]
        if section:
            left = f"{'  ' * depth}{leaf}:"
        else:
            value = default
            if values is not None:
                value = values
                for part in key.split("."):
                    value = value[part]
            left = f"{'  ' * depth}{leaf}: {_format(value)}"
        lines.append(f"  {left:<34} # {text}" if text else f"  {left}")
    groups = presets(name)
    if groups:
        lines += ["", "presets (group=NAME sets several keys at once):"]
        lines += [f"  {group}={' | '.join(names)}" for group, names in groups.items()]
    lines += [
        "",
        "Override any key with key=value; sweep with -m key=a,b. "
        f"Docs: {DOCS[name]}. Hydra's own flags: latent {command} --hydra-help",
    ]
    return "\n".join(lines)


# -- the apps ----------------------------------------------------------------------------------------


FAISS_MISSING = (
    "FAISS is not installed: pick the build for this host's driver, "
    "pip install 'latent[cu12]' (CUDA 12), 'latent[cu13]' (CUDA 13) or 'latent[cpu]' (README: Install)"
)


def _load(target: str) -> Callable:
    module, func = target.split(":")
    try:
        return getattr(importlib.import_module(module), func)
    except ModuleNotFoundError as err:
        if err.name == "faiss":
            raise LatentError(FAISS_MISSING) from err
        raise


def _fail(command: str, err: LatentError) -> None:
    print(f"latent {command}: {err}", file=sys.stderr)
    sys.exit(err.exit_code)


def _hydra_app(command: str) -> Callable[[], None]:
    import hydra
    from omegaconf import DictConfig

    target, _ = COMMANDS[command]

    @hydra.main(config_path=f"pkg://{CONFIG_PACKAGE}", config_name=config_name(command), version_base=None)
    def app(cfg: DictConfig) -> None:
        try:
            config = to_dataclass(cfg)
        except ConfigKeyError as err:
            if command in CONFIGS:
                err = ConfigKeyError(f"{err} (the command goes after `--`: ... -- latent embed ...)")
            _fail(command, err)
        try:
            _load(target)(config)
        except LatentError as err:
            _fail(command, err)
        except KeyboardInterrupt:  # before or after a runner job (the runner says the same within one)
            print(f"latent {command}: interrupted; rerun the same command to resume", file=sys.stderr)
            sys.exit(130)

    return app


def hydra_quote(value: str) -> str:
    """``value`` as one quoted string of Hydra's override grammar (commas, ``#``, brackets kept as typed)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def command_override(argv: list[str]) -> list[str]:
    """``[k=v ..., "--", word ...]`` -> ``[k=v ..., "command='word ...'"]``: the job's command, quoted for Hydra."""
    cut = argv.index("--")
    return [*argv[:cut], f"command={hydra_quote(shlex.join(argv[cut + 1 :]))}"]


_UNQUOTED_BREAKS = set(",#[]{}()'\"=\\")  # characters Hydra's grammar reads as syntax in an unquoted value


def _string_keys(cls: type, prefix: str = "") -> set[str]:
    """Dotted keys of ``cls`` whose type is ``str`` (or ``str | None``): their values are never lists or sweeps."""
    import typing

    hints = typing.get_type_hints(cls)
    found: set[str] = set()
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if dataclasses.is_dataclass(f.default_factory):  # type: ignore[arg-type]
            found |= _string_keys(f.default_factory, f"{prefix}{f.name}.")  # type: ignore[arg-type]
        elif kind is str or (
            typing.get_origin(kind) in (typing.Union, types.UnionType)  # str | None, not list[str]
            and str in typing.get_args(kind)
            and all(a in (str, type(None)) for a in typing.get_args(kind))
        ):
            found.add(f"{prefix}{f.name}")
    return found


def quote_string_values(name: str, argv: list[str]) -> list[str]:
    """``key=IVF256,Flat`` or ``start=abc#0`` as typed, for keys of type str: their value quoted for Hydra,
    which would read it as a list or a comment. Not in sweeps (``-m``), where a comma separates values."""
    if "-m" in argv or "--multirun" in argv:
        return argv
    keys = _string_keys(SCHEMAS[name])
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        plain = key.lstrip("+")
        quoted = len(value) >= 2 and value[0] == value[-1] and value[0] in "'\""
        if sep and plain in keys and not quoted and (_UNQUOTED_BREAKS & set(value) or value != value.strip()):
            arg = f"{key}={hydra_quote(value)}"
        out.append(arg)
    return out


def _alias(arg: str, aliases: dict[str, str]) -> str:
    key, sep, value = arg.partition("=")
    return f"{aliases[key]}={value}" if sep and key in aliases else arg


def main(argv: list[str] | None = None) -> None:
    from pipeline.runtime import configure_process
    from pipeline.stderr_filter import filter_native_stderr

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
    aliases = ALIASES.get(command, {})
    argv = quote_string_values(config_name(command), [_alias(arg, aliases) for arg in argv])
    overrides = [a for a in argv if "=" in a or a.startswith("~")]  # Hydra's flags (-m, --cfg job) aside
    try:
        check_overrides(config_name(command), overrides)
        if "-h" in argv or "--help" in argv:
            values = None
            if overrides:  # the values these overrides give (model=vit-l-14 --help shows its keys)
                from omegaconf import OmegaConf

                dictconfig = compose_dictconfig(config_name(command), overrides)
                values = OmegaConf.to_container(dictconfig, throw_on_missing=False, enum_to_str=True)
            print(render_help(command, values))
            sys.exit(0)
        if not any(a.startswith("-") for a in argv):  # Hydra's own flags (-m, --cfg job …): Hydra decides
            check_values(config_name(command), overrides)
    except LatentError as err:
        if command in CONFIGS and "'command'" in str(err):
            err = ConfigKeyError("no command to run: give it after `--`: latent render-job ... -- latent embed ...")
        _fail(command, err)
    configure_process()
    register_configs()
    sys.argv = [f"latent {command}", *argv]  # Hydra reads sys.argv
    with filter_native_stderr():
        _hydra_app(command)()


if __name__ == "__main__":
    main()
