"""model.pt: the state dict plus everything needed to rebuild and use the model.

Checkpoints hold only tensors and plain data and are always loaded with weights_only=True.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from boxseg import __version__
from boxseg.errors import BoxsegError
from boxseg.io import load_torch, save_torch
from boxseg.models import BoxPathSpec, DeepLabV3Plus, ModelSpec, build_model

FORMAT = "boxseg-model-v1"
KINDS = ("ancillary", "primary")


def save_model(path: Path, model: DeepLabV3Plus, meta: dict) -> None:
    """Atomically write model.pt. `meta` holds kind, model spec, class names, normalisation...;
    an ancillary net's box path is read off the model itself."""
    bare = unwrap(model)
    state = {k: v.detach().cpu() for k, v in bare.state_dict().items()}
    if getattr(bare, "box_encoder", None) is not None:
        meta = meta | {"box_path": BoxPathSpec(bare.box_encoder.resize, bare.box_direct).to_dict()}
    save_torch(path, {"format": FORMAT, "boxseg_version": __version__, **meta, "state_dict": state})


def read_checkpoint(path: Path | str) -> dict:
    """Load a checkpoint dict safely; a clear error for a missing, torn or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise BoxsegError(f"{path}: checkpoint not found")
    ckpt = load_torch(path, "checkpoint")
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise BoxsegError(f"{path}: not a boxseg model checkpoint")
    return ckpt


def load_model(
    path: Path | str, kind: str | None = None, device: torch.device | str = "cpu"
) -> tuple[DeepLabV3Plus, dict]:
    """Rebuild the model from model.pt (in eval mode). `kind` refuses the other kind of model."""
    ckpt = read_checkpoint(path)
    if kind is not None and ckpt["kind"] != kind:
        have, want = ckpt["kind"], kind
        raise BoxsegError(
            f"{path}: this is {_a(have)} {have} model; {_a(want)} {want} model is needed here"
        )
    model = build_model(
        ModelSpec(**ckpt["model"]),
        len(ckpt["class_names"]),
        ckpt.get("box_channels"),
        box_path=box_path_of(ckpt),
    )
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        lines = [x.strip() for x in str(e).splitlines() if x.strip()]
        raise BoxsegError(
            f"{path}: its weights do not fit the model it describes (made by "
            f"another boxseg version?): {lines[min(1, len(lines) - 1)]}"
        ) from e
    meta = {k: v for k, v in ckpt.items() if k != "state_dict"}
    return model.to(device).eval(), meta


def box_path_of(meta: dict) -> BoxPathSpec:
    """The ancillary net's box path; checkpoints from before it was recorded used the paper's
    nearest resize and no direct path."""
    d = meta.get("box_path")
    return BoxPathSpec(**d) if d else BoxPathSpec.legacy()


def _a(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def file_sha256(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model inside DDP / torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)
