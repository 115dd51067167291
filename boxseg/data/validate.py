"""Up-front checks of a dataset's files, before any training starts.

Each image file once per process: its header (size in the displayed frame, EXIF orientation
applied as `read_image` applies it) and whether its data decodes to the end (a JPEG decoded at
1/8 scale, a PNG's chunk checksums up to IEND; bytes after the image's end are fine), and each
needed mask decoded once (size, channels, class ids). Readers later read only headers
(`image_size`): the decode check is made here, not per sample. A bad file stops the run at
once with a one-line error, unless the user passes --skip-bad: then bad images are left out,
counted, and listed in a JSON report.
"""

from __future__ import annotations

import sys
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image, UnidentifiedImageError
from rich.progress import track

from boxseg.data.boxes import BoxSpec, pixel_boxes
from boxseg.data.reader import SegDataset
from boxseg.errors import BoxsegError
from boxseg.io import displayed_size, exif_orientation, write_json

if TYPE_CHECKING:  # (the store stands above the dataset checks)
    from boxseg.store import LogitsSource

MAX_CHECKED = 200_000  # file versions remembered as decoded per process (~200 bytes each)
_decoded: set[tuple] = set()


def image_size(path: Path, displayed: bool = True) -> tuple[int, int]:
    """(height, width) of an image file from its header alone: no pixel is decoded, so
    readers (every sample, in every loader process and rank) and size comparisons pay a
    header read, remembered per file version (path, size, modification time). `displayed`:
    the size in the displayed frame (EXIF orientation applied, as `read_image` reads images);
    False for masks, read as stored. BoxsegError naming the file where its header is not a
    readable image's. Whether the data decodes is `check_image_file`'s, run up front."""
    return _header_size(str(path), displayed, *_version(Path(path)))


def check_image_file(path: Path, displayed: bool = True) -> tuple[int, int]:
    """`image_size` of a file whose data also decodes to its end; BoxsegError naming it
    otherwise. The up-front check (`check_sample`); a file version that passed is remembered
    in this process, so a second stage checking the same files decodes none again."""
    version = _version(Path(path))
    size = _header_size(str(path), displayed, *version)
    key = (str(path), *version)
    if key not in _decoded:
        _check_decodes(Path(path))
        if len(_decoded) < MAX_CHECKED:
            _decoded.add(key)
    return size


def _version(path: Path) -> tuple[int, int]:
    """(size, modification time in ns) of a file; BoxsegError naming it if it cannot be read."""
    try:
        st = path.stat()
    except FileNotFoundError as e:
        raise BoxsegError(f"{path}: file not found") from e
    except OSError as e:
        raise BoxsegError(f"{path}: cannot read ({e.strerror or e})") from e
    return st.st_size, st.st_mtime_ns


def _open(path: Path) -> Image.Image:
    """The image file opened by PIL (its header read, no pixels); BoxsegError naming it."""
    try:
        return Image.open(path)
    except FileNotFoundError as e:
        raise BoxsegError(f"{path}: file not found") from e
    except Image.DecompressionBombError as e:
        raise BoxsegError(f"{path}: too large to read ({e})") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise BoxsegError(f"{path}: not a readable image (corrupt or unknown format)") from e


@lru_cache(maxsize=1 << 16)
def _header_size(path: str, displayed: bool, nbytes: int, mtime_ns: int) -> tuple[int, int]:
    """`image_size` of one file version (the version only keys the cache)."""
    with _open(Path(path)) as im:
        h, w = displayed_size(im) if displayed else im.size[::-1]
    if w < 1 or h < 1:
        raise BoxsegError(f"{path}: empty image ({w}x{h})")
    return h, w


def _check_decodes(path: Path) -> None:
    """BoxsegError naming the file unless its data decodes to the image's end (`_decode`)."""
    with _open(path) as im:
        fmt = "JPEG" if im.format == "MPO" else im.format  # MPO: a JPEG with more pictures
        try:
            _decode(im)
        except Exception as e:  # noqa: BLE001 - whatever a decoder raises, it does not decode
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            if "truncated" in reason.lower():
                msg = f"{path}: truncated {fmt} file (its data ends before the image does)"
            else:
                msg = f"{path}: corrupt {fmt} file, it does not decode ({reason})"
            raise BoxsegError(msg) from e


def _decode(im: Image.Image) -> None:
    """Raise (PIL's error) unless the opened image's data is whole. A JPEG is decoded at 1/8
    scale (libjpeg still reads every coefficient, so a file cut short fails, at half a full
    decode's cost); a PNG has its chunks' checksums verified up to IEND (no inflate); any
    other format is decoded. Data after the image's end (a phone's Motion Photo video, maker
    notes) is never read, so never refused."""
    if im.format in ("JPEG", "MPO"):
        im.draft(None, (1, 1))  # the smallest scale libjpeg offers
        im.load()
    elif im.format == "PNG":
        im.verify()
    else:
        im.load()


def turned_hint(image: Path, got: tuple[int, int], displayed: tuple[int, int]) -> str:
    """Where a (height, width) `got` for an image (its mask's size, a box file's record) is its
    `displayed` size turned a quarter and the image carries a quarter-turn EXIF orientation:
    a note saying boxseg works in the displayed frame; "" otherwise."""
    if tuple(got) != tuple(displayed)[::-1]:
        return ""
    try:
        with Image.open(image) as im:
            orientation = exif_orientation(im)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return ""
    if orientation < 5:
        return ""
    return (
        f"; the image has EXIF orientation {orientation}: boxseg reads it turned upright, "
        "as labelling tools show it, so boxes and masks go in that frame (docs/formats.md)"
    )


def check_sample(
    ds: SegDataset, split: str, image_id: str, with_mask: bool
) -> tuple[int, int] | None:
    """The image (and its mask) of one id: present, complete, same size, class ids in range;
    returns, where boxes come from box files, its number of boxes that count and of boxes
    covering no pixel (left out everywhere: `pixel_boxes`); None where they come from masks."""
    h, w = check_image_file(ds.image_path(split, image_id))
    n_boxes = None
    if not ds.boxes_from_masks:  # box files: parsed and checked against the image size
        keep = pixel_boxes(*ds.read_boxes(split, image_id, BoxSpec()), h, w).keep
        n_boxes = int(keep.sum()), int((~keep).sum())
    if not with_mask:
        return n_boxes
    mask_path = ds.mask_path(split, image_id)
    if mask_path.is_file() or ds.boxes_from_masks:
        mh, mw = check_image_file(mask_path, displayed=False)  # masks are read as stored
        if (mh, mw) != (h, w):
            hint = turned_hint(ds.image_path(split, image_id), (mh, mw), (h, w))
            raise BoxsegError(f"{mask_path}: mask is {mw}x{mh} but its image is {w}x{h}{hint}")
    mask = ds.read_mask(split, image_id)  # channels and class ids (or drawn from polygons)
    if mask.shape != (h, w):
        hint = turned_hint(ds.image_path(split, image_id), mask.shape, (h, w))
        raise BoxsegError(
            f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image is {w}x{h}{hint}"
        )
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
        print(
            f"boxseg: skipped {len(bad)} bad {what} images"
            + (f", listed in {report}" if report else "")
        )
    if ids and not good:
        first = bad[0]["problem"]
        raise BoxsegError(f"every {what} image of split '{split}' is bad (first: {first})")
    say_counts(ds, split, what, len(good), boxes, quiet)
    return good


def say_counts(
    ds: SegDataset, split: str, what: str, n_images: int, boxes: list, quiet: bool
) -> None:
    """What a stage found: '<what>: N images of split S, M boxes' (and how many boxes covering
    no pixel were left out); a warning (shown even when quiet) when W's box files hold no box
    at all. `boxes`: `check_sample`'s counts."""
    counted = [n for n in boxes if n is not None]
    n_boxes = sum(n for n, _ in counted)
    empty = sum(e for _, e in counted)
    if not quiet:
        source = f"{n_boxes} boxes" if counted else "boxes from their masks"
        if empty:
            source += f"; {empty} covering no pixel left out"
        print(f"{what}: {n_images} images of split '{split}' ({source})")
    if what == "W" and counted and n_boxes == 0:
        print(
            f"boxseg: warning: the {n_images} W images of split '{split}' have no boxes in "
            f"{ds.root}'s box files: their targets carry no box evidence",
            file=sys.stderr,
        )


def check_sizes(
    ds: SegDataset, split: str, store: LogitsSource, weak_ids: list[str], location: str
) -> None:
    """Every W image has the size its logits were made for (another dataset with the same ids
    would not); image headers only."""
    for image_id in weak_ids:
        h, w = image_size(ds.image_path(split, image_id))
        sh, sw = (int(v) for v in store.sizes[store.index(image_id)])
        if (sh, sw) != (h, w):
            raise BoxsegError(
                f"{location}: logits of {image_id} are for a {sw}x{sh} image, "
                f"{ds.image_path(split, image_id)} is {w}x{h}"
            )
