"""Small file helpers shared by every stage: atomic writes, JSON, images."""

from __future__ import annotations

import json
import os
import tempfile
from io import BytesIO
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image

from boxseg.errors import BoxsegError

# A bad file is reported by boxseg in one line: OpenCV's own WARN/ERROR log lines would only
# come before it (libpng and libjpeg may still print theirs).
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, then rename: readers never see a torn file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise BoxsegError(f"{path.parent}: cannot write here ({e.strerror})") from e
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it private; give it a normal file's mode
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):  # disk full, quota, permissions: the old file is untouched
            raise BoxsegError(
                f"{path}: cannot write ({e.strerror or e}); "
                "the previous version, if any, is unchanged"
            ) from e
        raise


def write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def append_jsonl(path: Path, obj: Any) -> None:
    """Append one JSON line (metrics logs; a torn last line is skipped by readers)."""
    with open(path, "a") as f:
        f.write(json.dumps(obj) + "\n")


def save_torch(path: Path, obj: Any) -> None:
    """torch.save through a temporary file and a rename."""
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_torch(path: Path, what: str) -> Any:
    """torch.load with weights_only=True (tensors and plain data only); a torn, truncated or
    foreign file is one clear error naming `what` it should have been."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torn, truncated or foreign files all land here
        first = str(e).splitlines()[0].split(". ")[0][:80] if str(e) else type(e).__name__
        raise BoxsegError(
            f"{path}: unreadable {what}, truncated or not a torch file ({first})"
        ) from e


def read_text(path: Path) -> str:
    """A text file read the one way boxseg reads them all: UTF-8, with or without a byte-order
    mark, any line ends; a clear error for a missing file or another encoding."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError as e:
        raise BoxsegError(f"{path}: file not found") from e
    except OSError as e:
        raise BoxsegError(f"{path}: cannot read ({e.strerror or e})") from e
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise BoxsegError(
            f"{path}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset "
            f"{e.start}); save it as UTF-8"
        ) from e


EXIF_ORIENTATION = 0x0112
# EXIF orientation -> the turn from the stored pixels to the displayed frame (the transforms
# of PIL's ImageOps.exif_transpose and of OpenCV's IMREAD_COLOR; 1 and unknown values: none)
TO_DISPLAYED = {
    2: lambda a: cv2.flip(a, 1),
    3: lambda a: cv2.rotate(a, cv2.ROTATE_180),
    4: lambda a: cv2.flip(a, 0),
    5: cv2.transpose,
    6: lambda a: cv2.rotate(a, cv2.ROTATE_90_CLOCKWISE),
    7: lambda a: cv2.rotate(cv2.transpose(a), cv2.ROTATE_180),
    8: lambda a: cv2.rotate(a, cv2.ROTATE_90_COUNTERCLOCKWISE),
}


def exif_orientation(im: Image.Image) -> int:
    """The EXIF orientation (1-8) of an opened image, 1 without a valid one. Taken from the
    EXIF block PIL reads with the header (JPEG APP1, PNG eXIf before the pixels), not from XMP:
    the tag viewers and labelling tools turn photos by. One rule for `read_image` and every
    size check, so pixels, sizes, boxes and masks share one frame."""
    raw = im.info.get("exif")
    if not raw:
        return 1
    exif = Image.Exif()
    try:
        exif.load(raw)
        value = exif.get(EXIF_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - a malformed EXIF block is ignored, as OpenCV ignores it
        return 1
    return value if isinstance(value, int) and value in TO_DISPLAYED else 1


def displayed_size(im: Image.Image) -> tuple[int, int]:
    """(height, width) of an opened image in its displayed frame: orientations 5-8 turn it
    a quarter, so width and height swap. Header only."""
    w, h = im.size
    return (w, h) if exif_orientation(im) >= 5 else (h, w)


def _orientation_of(data: bytes) -> int:
    """`exif_orientation` of an image file's bytes (1 where PIL cannot parse its header)."""
    try:
        with Image.open(BytesIO(data)) as im:
            return exif_orientation(im)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return 1


def read_image(path: Path) -> np.ndarray:
    """Read an RGB image as HxWx3 uint8 in its displayed frame (turned by its EXIF
    orientation, `exif_orientation`), the frame labelling tools show and export boxes and
    masks in; a clear error for a missing or unreadable file."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        data = b""
    flags = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION  # turned below, by our one rule
    img = cv2.imdecode(np.frombuffer(data, np.uint8), flags) if data else None
    if img is None:
        raise BoxsegError(f"{path}: missing or not a readable image")
    turn = TO_DISPLAYED.get(_orientation_of(data))
    return cv2.cvtColor(img if turn is None else turn(img), cv2.COLOR_BGR2RGB)


def read_label_png(path: Path) -> np.ndarray:
    """Read a single-channel class-index PNG as HxW uint8, as stored: IMREAD_UNCHANGED never
    applies an EXIF orientation (class ids are data, not a photo)."""
    mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise BoxsegError(f"{path}: missing or not a readable mask image")
    if mask.ndim != 2:
        raise BoxsegError(f"{path}: a mask must be a single-channel class-index image")
    if mask.dtype != np.uint8:  # 16-bit PNGs: range-checked before the cast, never wrapped
        top = int(mask.max()) if mask.size else 0
        if top > 255 or not np.issubdtype(mask.dtype, np.integer):
            raise BoxsegError(
                f"{path}: a {mask.dtype} mask with value {top}; class ids are "
                "0..254 and void 255 (8-bit class-index PNG)"
            )
    return mask.astype(np.uint8)


def write_image(path: Path, rgb: np.ndarray) -> None:
    ok, buf = cv2.imencode(Path(path).suffix or ".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    atomic_write_bytes(path, buf.tobytes())


def write_label_png(path: Path, mask: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", mask.astype(np.uint8))
    assert ok
    atomic_write_bytes(path, buf.tobytes())
