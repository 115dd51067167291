"""The run directory every trainer writes: config.json with the resolved options and environment."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import torch

from boxseg import __version__, distributed
from boxseg.errors import BoxsegError
from boxseg.io import write_json
from boxseg.outputs import output_dir


def prepare_run_dir(out: Path, command: str, data: Path, resume: bool, overwrite: bool) -> Path:
    """Create (or reuse) the run directory: a run already there needs `resume` or `overwrite`,
    a directory boxseg did not make or one inside the dataset is refused (outputs.py)."""
    return output_dir(out, command, [data], overwrite=overwrite, resume=resume)


def check_val_split(ds, val_split: str | None) -> None:
    """A --val-split the dataset does not have is a typo, not a request to skip validation."""
    if val_split and not ds.has_split(val_split):
        try:
            ds.ids(val_split)  # the layout's own message, naming the splits it has
        except BoxsegError as e:
            raise BoxsegError(f"--val-split {val_split}: {e} ('' skips validation)") from e


def code_version() -> str:
    """The code a result came from: `git describe --always --dirty` of the checkout boxseg runs
    from (a commit, `-dirty` if it had uncommitted changes), else the installed version."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            check=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return __version__
    inside = subprocess.run(
        ["git", "rev-parse", "--show-toplevel"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parent,
    )
    top = Path(inside.stdout.strip()) if inside.returncode == 0 else None
    if top is None or not (top / "boxseg" / "__init__.py").is_file():
        return __version__  # a git repository around an installed copy is not ours
    return out.stdout.strip() or __version__


def environment(device: torch.device) -> dict:
    return {
        "boxseg_version": __version__,
        "commit": code_version(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(),
        "device": str(device),
        "cpu_threads": torch.get_num_threads(),  # CPU float sums differ with another count
        "world_size": distributed.world(),
        "cuda_device": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }


def write_config(out: Path, command: str, options: dict, device: torch.device) -> None:
    write_json(
        out / "config.json", {"command": command, **options, "environment": environment(device)}
    )


def model_meta(kind: str, spec, ds, box_spec, box_channels: int | None, mean, std) -> dict:
    """The plain-data part of model.pt: everything needed to rebuild and use the model."""
    return {
        "kind": kind,
        "arch": spec.describe(),  # for people; the model is rebuilt from "model"
        "model": spec.to_dict(),
        "class_names": list(ds.class_names),
        "background": ds.background,
        "box_channels": box_channels,
        "boxes": box_spec.to_dict(),
        "mean": list(mean),
        "std": list(std),
    }


def finish_run(
    out: Path,
    model,
    meta: dict,
    ds,
    val_split: str | None,
    device: torch.device,
    timing: dict,
    iters: int,
    label: str,
    quiet: bool,
) -> dict:
    """Write RUN/model.pt, then score the val split (if any) and log it; return the scores."""
    from boxseg.checkpoint import save_model
    from boxseg.evaluate import evaluate_model
    from boxseg.io import append_jsonl

    save_model(out / "model.pt", model, meta)
    if not (val_split and ds.has_split(val_split)):
        return {}
    result = evaluate_model(model, meta, ds, val_split, device, quiet)
    append_jsonl(
        out / "metrics.jsonl", {"step": iters, f"{val_split}_miou": result["miou"], **timing}
    )
    if not quiet:
        print(f"{label}: {val_split} mIoU {result['miou']:.2f}")
    return result
