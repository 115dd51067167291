"""Up-front checks of a dataset's files, before any training starts.

Cheap: image headers and file ends (a truncated JPEG or PNG lacks its end marker), and each
needed mask decoded once (size, channels, class ids). A bad file stops the run at once with a
one-line error, unless the user passes --skip-bad: then bad images are left out, counted, and
listed in a JSON report.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError
from rich.progress import track

from boxseg.data.boxes import BoxSpec
from boxseg.data.reader import SegDataset
from boxseg.errors import BoxsegError
from boxseg.io import write_json

END_MARKERS = {"JPEG": (b"\xff\xd9",), "PNG": (b"IEND\xae\x42\x60\x82",)}


def check_image_file(path: Path) -> tuple[int, int]:
    """(height, width) of a complete, readable image file; BoxsegError naming it otherwise."""
    try:
        with Image.open(path) as im:
            fmt, (w, h) = im.format, im.size
    except FileNotFoundError as e:
        raise BoxsegError(f"{path}: file not found") from e
    except (UnidentifiedImageError, OSError) as e:
        raise BoxsegError(f"{path}: not a readable image (corrupt or unknown format)") from e
    if w < 1 or h < 1:
        raise BoxsegError(f"{path}: empty image ({w}x{h})")
    markers = END_MARKERS.get(fmt)
    if markers:
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - 64))
            tail = f.read()
        if not any(m in tail for m in markers):
            raise BoxsegError(f"{path}: truncated {fmt} file (its end marker is missing)")
    return h, w


def check_sample(ds: SegDataset, split: str, image_id: str, with_mask: bool) -> None:
    """The image (and its mask) of one id: present, complete, same size, class ids in range."""
    h, w = check_image_file(ds.image_path(split, image_id))
    if not ds.boxes_from_masks:  # box files: parsed and checked against the image size
        ds.read_boxes(split, image_id, BoxSpec())
    if not with_mask:
        return
    mask_path = ds.mask_path(split, image_id)
    if mask_path.is_file() or ds.boxes_from_masks:
        mh, mw = check_image_file(mask_path)
        if (mh, mw) != (h, w):
            raise BoxsegError(f"{mask_path}: mask is {mw}x{mh} but its image is {w}x{h}")
    mask = ds.read_mask(split, image_id)  # channels and class ids (or drawn from polygons)
    if mask.shape != (h, w):
        raise BoxsegError(f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but its "
                          f"image is {w}x{h}")  # fmt: skip


def usable_ids(
    ds: SegDataset,
    split: str,
    ids: list[str],
    with_mask: bool,
    skip_bad: bool,
    report: Path | None,
    what: str,
    quiet: bool = True,
) -> list[str]:
    """The ids whose files pass `check_sample`. Without skip_bad the first bad file is an error;
    with it, bad ids are dropped and listed in `report` (JSON)."""
    good, bad = [], []
    for image_id in track(ids, description=f"checking {what}", disable=quiet):
        try:
            check_sample(ds, split, image_id, with_mask)
        except BoxsegError as e:
            if not skip_bad:
                raise BoxsegError(f"{e} (pass --skip-bad to leave bad files out)") from e
            bad.append({"id": image_id, "problem": str(e)})
            continue
        good.append(image_id)
    if bad:
        if report is not None:
            write_json(report, {"split": split, "set": what, "skipped": bad})
        print(f"boxseg: skipped {len(bad)} bad {what} images"
              + (f", listed in {report}" if report else ""))  # fmt: skip
    if ids and not good:
        first = bad[0]["problem"]
        raise BoxsegError(f"every {what} image of split '{split}' is bad (first: {first})")
    return good
