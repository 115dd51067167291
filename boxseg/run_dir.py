"""The run directory every trainer writes: config.json with the resolved options and environment."""

from __future__ import annotations

import platform
import sys
from pathlib import Path

import torch

from boxseg import __version__, distributed
from boxseg.errors import BoxsegError
from boxseg.io import write_json


def prepare_run_dir(out: Path) -> Path:
    """Create the run directory (a clear error if it cannot be written)."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BoxsegError(f"{out}: cannot create the run directory ({e.strerror})") from e
    return out


def environment(device: torch.device) -> dict:
    return {
        "boxseg_version": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(),
        "device": str(device),
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
        "arch": "deeplabv3plus",
        "model": spec.to_dict(),
        "class_names": list(ds.class_names),
        "background": ds.background,
        "box_channels": box_channels,
        "boxes": box_spec.to_dict(),
        "mean": list(mean),
        "std": list(std),
    }


def finish_run(out: Path, model, meta: dict, ds, val_split: str | None, device: torch.device,
               timing: dict, iters: int, label: str, quiet: bool) -> dict:  # fmt: skip
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
