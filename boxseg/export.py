"""`boxseg export MODEL --out model.onnx`: a trained model as ONNX, for deployment without
PyTorch (onnxruntime, TensorRT, OpenVINO ...).

torch's exporter (torch.export, `dynamo=True`) at opset `OPSET`, with the batch, height and
width dynamic for a primary model (any size of at least 32 pixels; logits at the input's
size) and the batch dynamic for an ancillary one (exported at a fixed `--size`). Inputs:
`image`, N x 3 x H x W float32, RGB scaled to [0, 1] then normalised with the mean and std
recorded in the file; an ancillary model also takes `boxes`, the N x C x H x W box raster
(`boxseg.data.boxes.rasterize_boxes`). Output: `logits`, N x K x H x W. The file's metadata
(`boxseg`: JSON) holds the kind, class names, mean, std and background class. With
onnxruntime installed, the export is checked against PyTorch on a random input.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from boxseg import __version__
from boxseg.checkpoint import load_model
from boxseg.errors import BoxsegError
from boxseg.outputs import output_file

OPSET = 18
TOLERANCE = 1e-3  # max |onnxruntime - PyTorch| on the logits of a random input


def _modules():
    try:
        import onnx
        import onnxscript  # noqa: F401 - torch's exporter needs it
    except ImportError as e:
        raise BoxsegError(
            f"boxseg export needs onnx and onnxscript ({e.name} is missing): "
            "pip install 'boxseg[export]'"
        ) from e
    return onnx


def _example(meta: dict, height: int = 64, width: int = 96, batch: int = 1, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, 3, height, width, generator=g)
    if meta["kind"] != "ancillary":
        return (image,)
    boxes = (torch.rand(batch, meta["box_channels"], height, width, generator=g) > 0.7).float()
    return image, boxes


def export_onnx(
    model_path: Path,
    out: Path,
    opset: int = OPSET,
    check: bool = True,
    size: tuple[int, int] = (512, 512),
    overwrite: bool = False,
) -> dict:
    """Write MODEL as ONNX at `out` (atomically); returns what was written and, when
    onnxruntime is installed and `check`, the largest difference from PyTorch. A primary
    model takes any image size; an ancillary one a fixed `size` (height, width): its box
    encoder max-pools the box raster to sizes that follow the input's (adaptive pooling),
    which ONNX cannot express for a dynamic size. The batch is dynamic for both. An existing
    file at `out` is replaced only if boxseg exported it (or with `overwrite`)."""
    out = output_file(Path(out), "--out", is_boxseg_onnx, overwrite=overwrite)
    onnx = _modules()
    model, meta = load_model(model_path, device="cpu")
    ancillary = meta["kind"] == "ancillary"
    names = ["image"] + (["boxes"] if ancillary else [])
    if min(size) < 32:
        raise BoxsegError(f"--size {size[0]}x{size[1]}: at least 32 pixels a side")
    dims = {0: torch.export.Dim("batch", min=1, max=4096)}
    if not ancillary:
        dims |= {
            2: torch.export.Dim("height", min=32, max=16384),
            3: torch.export.Dim("width", min=32, max=16384),
        }
    args = _example(meta, *(size if ancillary else (64, 96)))
    try:
        program = torch.onnx.export(
            model,
            args,
            dynamo=True,
            opset_version=opset,
            input_names=names,
            output_names=["logits"],
            dynamic_shapes=tuple(dims for _ in names),
            verbose=False,
        )
    except Exception as e:  # noqa: BLE001 - the exporter's failures are not the user's input
        raise BoxsegError(
            f"{model_path}: ONNX export failed ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''})"
        ) from e
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    except OSError as e:
        raise BoxsegError(f"--out {out}: cannot write there ({e.strerror or e})") from e
    os.close(fd)
    try:
        program.save(tmp)
        proto = onnx.load(tmp)
        info = {
            "kind": meta["kind"],
            "class_names": meta["class_names"],
            "mean": list(meta["mean"]),
            "std": list(meta["std"]),
            "background": meta.get("background"),
            "inputs": names,
            "size": list(size) if ancillary else None,
            "boxseg_version": __version__,
        }
        onnx.helper.set_model_props(proto, {"boxseg": json.dumps(info)})
        onnx.save(proto, tmp)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    result = {
        "path": str(out),
        "opset": opset,
        "inputs": names,
        "kind": meta["kind"],
        "size": list(size) if ancillary else None,
    }
    if check:
        result["max_abs_diff"] = check_onnx(model, meta, out, size if ancillary else (80, 72))
    return result


def is_boxseg_onnx(path: Path) -> bool:
    """True for an ONNX file boxseg exported (its `boxseg` metadata property)."""
    try:
        import onnx

        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - not ONNX at all, or no onnx package: not ours
        return False
    return any(p.key == "boxseg" for p in proto.metadata_props)


def check_onnx(
    model: torch.nn.Module, meta: dict, path: Path, size: tuple[int, int]
) -> float | None:
    """Largest |onnxruntime - PyTorch| over the logits of a random input of another batch
    (and for a primary model another size) than the export's (None without onnxruntime);
    above `TOLERANCE` is an error."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    args = _example(meta, *size, batch=2, seed=1)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    got = session.run(None, {n: a.numpy() for n, a in zip(names, args, strict=True)})[0]
    with torch.no_grad():
        want = model(*args).numpy()
    diff = float(np.abs(got - want).max())
    if not diff <= TOLERANCE:
        raise BoxsegError(
            f"{path}: onnxruntime's logits differ from PyTorch's by {diff:.2e} "
            f"(more than {TOLERANCE:g})"
        )
    return diff
