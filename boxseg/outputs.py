"""Where boxseg writes. Every output is checked before the first byte goes out, so no command
deletes or overwrites what it did not write (docs/reliability.md, "Nothing lost"):

- an output inside (or equal to) an input directory is refused;
- an existing non-empty directory is written into only when boxseg made it for the same
  command (its `.boxseg` marker, or for runs of older versions their config.json);
- a training run already there needs `--resume` (continue) or `--overwrite` (start over, which
  removes only the files a run writes);
- a single output file (ONNX, plot, JSON report) replaces only a file boxseg wrote.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

from boxseg import __version__
from boxseg.errors import BoxsegError

MARKER = ".boxseg"  # in every directory boxseg creates: {"command": ..., "boxseg_version": ...}
RUN_FILES = (
    "model.pt",
    "last.pt",
    "metrics.jsonl",
    "config.json",
    "skipped_full.json",
    "skipped_weak.json",
)
TRAINERS = ("train-anc", "train-primary")


def _resolved(path: Path) -> Path:
    return Path(path).expanduser().resolve()


def is_within(path: Path, parent: Path) -> bool:
    """True if `path` is `parent` or lies below it (symbolic links resolved)."""
    path, parent = _resolved(path), _resolved(parent)
    return path == parent or parent in path.parents


def refuse_inside_inputs(out: Path, inputs: Iterable[Path | None], option: str = "--out") -> None:
    """One line if `out` is (or lies inside) one of the input directories."""
    for src in inputs:
        if src is not None and Path(src).is_dir() and is_within(out, src):
            raise BoxsegError(
                f"{option} {out}: inside the input directory {src}; boxseg never "
                "writes into its inputs: choose an output outside it"
            )


def written_by(directory: Path) -> str | None:
    """The command that made `directory` (its marker; a run of an older boxseg by its
    config.json), or None if boxseg did not make it."""
    marker = directory / MARKER
    if marker.is_file():
        try:
            return str(json.loads(marker.read_text(encoding="utf-8"))["command"])
        except (ValueError, KeyError, TypeError, OSError, UnicodeDecodeError):
            return None
    config = directory / "config.json"
    if config.is_file() and any((directory / f).is_file() for f in RUN_FILES[:3]):
        try:
            info = json.loads(config.read_text(encoding="utf-8"))
        except (ValueError, OSError, UnicodeDecodeError):
            return None
        if isinstance(info, dict) and "environment" in info and info.get("command") in TRAINERS:
            return str(info["command"])
    return None


def output_dir(
    out: Path,
    command: str,
    inputs: Iterable[Path | None] = (),
    *,
    overwrite: bool = False,
    resume: bool = False,
    option: str = "--out",
) -> Path:
    """Make (or reuse) the output directory of `command` (given as `option`), after the checks
    above; trainers pass `resume`/`overwrite`. Returns the path."""
    out = Path(out)
    refuse_inside_inputs(out, inputs, option)
    if out.exists() and not out.is_dir():
        raise BoxsegError(f"{out}: exists and is not a directory; choose another --out")
    if out.is_dir() and any(out.iterdir()):
        owner = written_by(out)
        if owner is None:
            raise BoxsegError(
                f"{out}: a directory boxseg did not make, with files in it; "
                "choose a new or empty directory for --out"
            )
        if owner != command:
            raise BoxsegError(
                f"{out}: holds the output of boxseg {owner}, not of {command}; choose another --out"
            )
        has_run = any((out / name).exists() for name in RUN_FILES)
        if command in TRAINERS and has_run and not resume:
            if not overwrite:
                raise BoxsegError(
                    f"{out}: a {command} run is already here; pass --resume to "
                    "continue it, or --overwrite to start it over"
                )
            for name in RUN_FILES:
                (out / name).unlink(missing_ok=True)
    try:
        out.mkdir(parents=True, exist_ok=True)
        if not (out / MARKER).is_file():
            marker = {"command": command, "boxseg_version": __version__}
            (out / MARKER).write_text(json.dumps(marker) + "\n", encoding="utf-8")
    except OSError as e:
        raise BoxsegError(f"{out}: cannot create the output directory ({e.strerror or e})") from e
    return out


def output_file(
    out: Path,
    option: str,
    ours: Callable[[Path], bool],
    inputs: Iterable[Path | None] = (),
    overwrite: bool | None = None,
) -> Path:
    """Check a single output file before it is written: not a directory, not under a file,
    not inside an input, and replacing an existing file only if `ours(file)` says boxseg wrote
    it (or with `overwrite`; None: the command has no --overwrite)."""
    out = Path(out)
    refuse_inside_inputs(out, inputs, option)
    if out.is_dir():
        raise BoxsegError(f"{option} {out}: is a directory; give a file name")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise BoxsegError(f"{option} {out}: {parent} is a file, not a directory")
            break
    if out.exists() and not overwrite and not ours(out):
        hint = "" if overwrite is None else ", or pass --overwrite to replace it"
        raise BoxsegError(
            f"{option} {out}: a file boxseg did not write is there; choose another name{hint}"
        )
    return out


def is_boxseg_json(key: str) -> Callable[[Path], bool]:
    """`ours` for JSON reports: a JSON object holding `key` (what boxseg writes there)."""

    def ours(path: Path) -> bool:
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, OSError, UnicodeDecodeError):
            return False
        return isinstance(obj, dict) and key in obj

    return ours


def is_png_with(text_key: str) -> Callable[[Path], bool]:
    """`ours` for PNG pictures: a PNG whose tEXt chunks carry `text_key` (boxseg's plots do)."""

    def ours(path: Path) -> bool:
        try:
            head = path.read_bytes()[:4096]
        except OSError:
            return False
        return head.startswith(b"\x89PNG") and text_key.encode() in head

    return ours
