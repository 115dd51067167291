"""`--config FILE` for the stages: TOML (or YAML, with PyYAML installed) holding option values.

Keys are option names (`iters`, `batch-size` or `batch_size`, ...); flags on the command line
override the file. The resolved values of a run land in RUN/config.json as before.
"""

from __future__ import annotations

from pathlib import Path

import typer

from boxseg.errors import BoxsegError
from boxseg.io import read_text

ALIASES = {"backbone": "encoder"}  # option names a config file may still use


def read_config(path: Path) -> dict:
    """The file's options as {python_name: value}."""
    path = Path(path)
    if not path.is_file():
        raise BoxsegError(f"{path}: config file not found")
    text = read_text(path)
    try:
        if path.suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError as e:
                raise BoxsegError(
                    f"{path}: YAML needs PyYAML (pip install pyyaml); or write the config as TOML"
                ) from e
            values = yaml.safe_load(text) or {}
        else:
            try:
                import tomllib
            except ImportError:  # Python 3.10
                try:
                    import tomli as tomllib
                except ImportError as e:
                    raise BoxsegError(
                        f"{path}: TOML needs Python 3.11 or `pip install tomli`"
                    ) from e
            values = tomllib.loads(text)
    except BoxsegError:
        raise
    except Exception as e:  # noqa: BLE001 - any parser's syntax error
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise BoxsegError(f"{path}: not a valid config file ({first})") from e
    if not isinstance(values, dict):
        raise BoxsegError(f"{path}: a config file holds option = value pairs")
    values = {str(k).replace("-", "_"): v for k, v in values.items()}
    return {ALIASES.get(k, k): v for k, v in values.items()}


def apply_config(ctx: typer.Context, param: typer.CallbackParam, value: Path | None) -> Path | None:
    """Eager click callback: the file's values become the defaults of the other options."""
    if value is None:
        return value
    values = read_config(value)
    known = {p.name for p in ctx.command.params if p.name != "config"}
    unknown = sorted(set(values) - known)
    if unknown:
        raise BoxsegError(f"{value}: '{unknown[0]}' is not an option of {ctx.info_name}")
    ctx.default_map = {**(ctx.default_map or {}), **values}
    return value
