"""Up-front checks of a dataset's files, before any training starts.

Cheap: image headers and file ends (a truncated JPEG or PNG lacks its end marker), and each
needed mask decoded once (size, channels, class ids). A bad file stops the run at once with a
one-line error, unless the user passes --skip-bad: then bad images are left out, counted, and
listed in a JSON report.
"""

from __future__ import annotations

import sys
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


def check_sample(ds: SegDataset, split: str, image_id: str, with_mask: bool) -> int | None:
    """The image (and its mask) of one id: present, complete, same size, class ids in range;
    returns its number of boxes where they come from box files (None: from its mask)."""
    h, w = check_image_file(ds.image_path(split, image_id))
    n_boxes = None
    if not ds.boxes_from_masks:  # box files: parsed and checked against the image size
        n_boxes = len(ds.read_boxes(split, image_id, BoxSpec())[1])
    if not with_mask:
        return n_boxes
    mask_path = ds.mask_path(split, image_id)
    if mask_path.is_file() or ds.boxes_from_masks:
        mh, mw = check_image_file(mask_path)
        if (mh, mw) != (h, w):
            raise BoxsegError(f"{mask_path}: mask is {mw}x{mh} but its image is {w}x{h}")
    mask = ds.read_mask(split, image_id)  # channels and class ids (or drawn from polygons)
    if mask.shape != (h, w):
        raise BoxsegError(f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but its "
                          f"image is {w}x{h}")  # fmt: skip
    return n_boxes


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
    good, bad, boxes = [], [], []
    for image_id in track(ids, description=f"checking {what}", disable=quiet):
        try:
            boxes.append(check_sample(ds, split, image_id, with_mask))
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
    say_counts(ds, split, what, len(good), boxes, quiet)
    return good


def say_counts(ds: SegDataset, split: str, what: str, n_images: int, boxes: list,
               quiet: bool) -> None:  # fmt: skip
    """What a stage found: '<what>: N images of split S, M boxes'; a warning (shown even when
    quiet) when W's box files hold no box at all."""
    counted = [n for n in boxes if n is not None]
    n_boxes = sum(counted)
    if not quiet:
        source = f"{n_boxes} boxes" if counted else "boxes from their masks"
        print(f"{what}: {n_images} images of split '{split}' ({source})")
    if what == "W" and counted and n_boxes == 0:
        print(f"boxseg: warning: the {n_images} W images of split '{split}' have no boxes in "
              f"{ds.root}'s box files: their targets carry no box evidence", file=sys.stderr)
