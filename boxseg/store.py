"""The logits store: a chunked zarr v3 group, one compressed chunk per weak image. Store I/O
only: the cell grid (pooling, int8 codes, decoding) is cells.py, the box constraint
box_constraint.py.

Layout (a zarr v3 group at any local path or zarr store URL):
- `logits`: (N, K, Hc/s, Wc/s): image i's logits as the net (or box rule) gave them, pooled
  to stride s, in the top-left corner of a canvas big enough for the largest image; one chunk
  per image (random access). float16, or with dtype int8 8-bit codes of log-probabilities
  (see `cells.encode_int8`). The box constraint is never baked into the cells.
- `boxes`:  float32 (N, MAX_BOXES, 5): image i's boxes (x1, y1, x2, y2, class; class -1 on
  unused rows), the ones gen-logits saw: every reader applies the constraint with them at
  pixel resolution after decoding (`read_full`, and W's training crops).
- `sizes`:  int32 (N, 2): each image's true (height, width) in pixels.
- `check`:  uint32 (N, 2): CRC-32 of image i's logits chunk and of its box rows, written with
  them: every read verifies them, so a chunk that is missing, cut short or overwritten is one
  clear error naming the image (`gen-logits --redo ID` rewrites it), never zeros trained on.
- `done`:   bool (N,): set only after image i's chunks are written, so a killed run resumes.
- attributes: format, class_names, image_ids, stride, dtype, constraint (the rule, or None),
  checkpoint_sha256, dataset, image_file_sizes (bytes of each image file: with `sizes`, the
  fingerprint a resume must match), boxseg_version.

`location` is a local path, a `file://` URL, or any URL zarr opens through fsspec (`memory://`,
`s3://` with s3fs installed, ...).

Logits at stride s are the mean over each s x s pixel block; `upsample_logits` maps them back to
pixel resolution with bilinear interpolation (half-pixel centres), which puts each stored cell
back at the centre of its block.
"""

from __future__ import annotations

import math
import zlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import zarr
from zarr.codecs import ZstdCodec

from boxseg import __version__
from boxseg.box_constraint import BoxEvidence, ConstraintRule
from boxseg.cells import decode_int8, encode_int8, pool_logits, upsample_logits
from boxseg.errors import BoxsegError
from boxseg.outputs import refuse_inside_inputs

FORMAT = "boxseg-logits-v2"
OLD_FORMATS = ("boxseg-logits-v1",)  # the constraint baked into pooled cells: refused
DTYPES = ("float16", "int8")
MAX_BOXES = 4096  # boxes per image a store holds (unused rows compress to nothing)
NET_METHODS = ("anc", "primary")  # stores written by a net: no void cells (the others paint)
ARRAYS = ("logits", "boxes", "sizes", "check", "done")


def local_path(location: str | Path) -> Path | None:
    """The filesystem path of a local location (a path or file:// URL), else None."""
    location = str(location)
    if location.startswith("file://"):
        return Path(location[len("file://") :])
    return None if "://" in location else Path(location)


def zarr_location(location: str | Path) -> str:
    """What to hand zarr: local paths (file:// URLs too) as plain paths, other URLs as they are."""
    path = local_path(location)
    return str(path) if path is not None else str(location)


Boxes = tuple[np.ndarray, np.ndarray]  # (N x 4 xyxy float32, N int64 labels)


@runtime_checkable
class LogitsSource(Protocol):
    """What readers of W's logits use, whichever holds them: a `LogitsStore` (a zarr group) or
    `InMemoryLogits` (RAM). train-primary's W targets are typed against it."""

    image_ids: list[str]
    class_names: list[str]
    sizes: np.ndarray  # (N, 2): each image's (height, width) in pixels
    stride: int
    dtype: str
    location: str
    attrs: dict
    rule: ConstraintRule | None  # the box constraint readers apply (None: none)
    may_hold_void: bool  # void (NaN) cells possible: box-method stores

    def __len__(self) -> int: ...

    def index(self, image_id: str) -> int: ...

    def done_mask(self) -> np.ndarray: ...

    def read(
        self, i: int, rows: slice | None = None, cols: slice | None = None
    ) -> torch.Tensor: ...

    def read_boxes(self, i: int) -> Boxes: ...

    def read_full(self, i: int, constrained: bool = True) -> torch.Tensor: ...

    def check_matches(self, class_names: list[str], image_ids: list[str]) -> None: ...


class SharedReads:
    """What every `LogitsSource` does alike, built on its own `read`, `read_boxes` and
    attributes: an image decoded to pixels, and the check against a dataset's W."""

    def read_full(self: LogitsSource, i: int, constrained: bool = True) -> torch.Tensor:
        """Image i's logits decoded to pixel resolution (KxHxW float32), made box-consistent
        with its boxes at pixel level (unless the store has no rule, or `constrained` False:
        what the net said)."""
        h, w = (int(v) for v in self.sizes[i])
        logits = upsample_logits(self.read(i), self.stride, h, w, void_free=not self.may_hold_void)
        if not constrained or self.rule is None:
            return logits
        boxes, labels = self.read_boxes(i)
        return self.rule.apply(logits[None], BoxEvidence.whole([boxes], [labels], h, w))[0]

    def check_matches(self: LogitsSource, class_names: list[str], image_ids: list[str]) -> None:
        """Refuse a store made for other classes (or class order) or another weak set."""
        if list(class_names) != self.class_names:
            raise BoxsegError(
                f"{self.location}: the store's classes ({', '.join(self.class_names)}) differ "
                f"from the dataset's ({', '.join(class_names)})"
            )
        known = set(self.image_ids)
        missing = [i for i in image_ids if i not in known]
        if missing:
            raise BoxsegError(
                f"{self.location}: {len(missing)} weak images of this split are not in the store "
                f"(first: {missing[0]}); was it made with other split options?"
            )
        extra = sorted(known - set(image_ids))
        if extra:
            raise BoxsegError(
                f"{self.location}: {len(extra)} images in the store are not weak images of this "
                f"split (first: {extra[0]}); was it made with other split options?"
            )
        done = self.done_mask()
        not_done = [i for i in image_ids if not done[self.index(i)]]  # (in order of the split)
        if not_done:
            raise BoxsegError(
                f"{self.location}: {len(not_done)} weak images have no logits yet (first: "
                f"{not_done[0]}); the gen-logits run was interrupted: run it again to finish"
            )


class LogitsStore(SharedReads):
    """Read and write access to a logits store; see the module docstring for the layout."""

    def __init__(self, group: zarr.Group, location: str):
        self.group = group
        self.location = location
        attrs = dict(group.attrs)
        if attrs.get("format") in OLD_FORMATS:
            raise BoxsegError(
                f"{location}: written by an older boxseg that applied the box "
                "constraint to the pooled cells (it bends box edges); rewrite it "
                "with the same gen-logits command and --overwrite"
            )
        if attrs.get("format") != FORMAT:
            raise BoxsegError(f"{location}: not a boxseg logits store")
        try:
            self.class_names: list[str] = [str(c) for c in attrs["class_names"]]
            self.image_ids: list[str] = [str(i) for i in attrs["image_ids"]]
            self.stride: int = int(attrs["stride"])
        except (KeyError, TypeError, ValueError) as e:
            raise BoxsegError(
                f"{location}: damaged store attributes ({type(e).__name__}: {e}); "
                "rewrite it with the same gen-logits command and --overwrite"
            ) from e
        self.dtype: str = attrs.get("dtype", "float16")
        if self.dtype not in DTYPES or self.stride < 1:
            raise BoxsegError(
                f"{location}: damaged store attributes (dtype {self.dtype!r}, stride {self.stride})"
            )
        self.attrs = attrs
        # box-fill, GrabCut and SAM stores mark unlabelled pixels void (NaN); a net's never do
        self.may_hold_void = attrs.get("method", "anc") not in NET_METHODS
        try:
            self._open_arrays(group, attrs)
        except BoxsegError:
            raise
        except Exception as e:  # noqa: BLE001 - damaged metadata or chunks, whatever the codec says
            why = (str(e).splitlines() or [type(e).__name__])[0][:100]
            raise BoxsegError(
                f"{location}: damaged store ({why}); rewrite it with the same "
                "gen-logits command and --overwrite"
            ) from e

    def _open_arrays(self, group: zarr.Group, attrs: dict) -> None:
        rule = attrs.get("constraint")
        self.rule = None if rule is None else ConstraintRule.from_dict(rule)
        self._index = {k: i for i, k in enumerate(self.image_ids)}
        self.logits = group["logits"]
        self.boxes = group["boxes"]
        self.sizes = np.asarray(group["sizes"][:], dtype=np.int64).reshape(-1, 2)  # in memory
        self.done = group["done"]
        self.check = group["check"] if "check" in group else None  # (stores of 0.2.0: none)
        n = len(self.image_ids)
        if not (
            self.logits.shape[0]
            == self.boxes.shape[0]
            == len(self.sizes)
            == self.done.shape[0]
            == n
        ) or self.logits.shape[1] != len(self.class_names):
            raise BoxsegError(
                f"{self.location}: damaged store (array shapes do not match its "
                f"{n} images and {len(self.class_names)} classes); rewrite it with "
                "the same gen-logits command and --overwrite"
            )
        self._known_done = self.done_mask()  # saves a read per image on the training hot path

    @staticmethod
    def create(
        location: str | Path,
        image_ids: list[str],
        sizes: np.ndarray,
        class_names: list[str],
        stride: int,
        attributes: dict,
        dtype: str = "float16",
        rule: ConstraintRule | None = None,
    ) -> LogitsStore:
        """A new, empty store (all done flags False) sized for the given images; `rule`: the
        box constraint its readers apply (None: logits read as stored)."""
        if stride < 1:
            raise BoxsegError(f"--stride {stride}: must be a positive integer")
        if dtype not in DTYPES:
            raise BoxsegError(f"--dtype {dtype}: choose float16 or int8")
        k = len(class_names)
        hc = math.ceil(int(sizes[:, 0].max()) / stride)
        wc = math.ceil(int(sizes[:, 1].max()) / stride)
        attrs = {
            "format": FORMAT,
            "class_names": list(class_names),
            "image_ids": list(image_ids),
            "stride": stride,
            "dtype": dtype,
            "boxseg_version": __version__,
            "constraint": None if rule is None else rule.to_dict(),
            **attributes,
        }
        try:  # the attributes (with `format`) go in last: a store killed while being
            group = zarr.open_group(zarr_location(location), mode="w")  # is seen as unfinished
        except OSError as e:
            raise BoxsegError(f"{location}: cannot create the store ({e})") from e
        n = len(image_ids)
        group.create_array(
            "logits",
            shape=(n, k, hc, wc),
            chunks=(1, k, hc, wc),
            dtype="float16" if dtype == "float16" else "uint8",
            compressors=ZstdCodec(level=3),
            fill_value=0,
            chunk_key_encoding={"name": "default", "separator": "."},  # one file per image, no dirs
        )
        group.create_array(
            "boxes",
            shape=(n, MAX_BOXES, 5),
            chunks=(1, MAX_BOXES, 5),
            dtype="float32",
            compressors=ZstdCodec(level=3),
            fill_value=-1,
            chunk_key_encoding={"name": "default", "separator": "."},
        )
        group.create_array("sizes", data=np.asarray(sizes, dtype=np.int32))
        group.create_array(
            "check",
            shape=(n, 2),
            chunks=(1, 2),
            dtype="uint32",
            fill_value=0,
            chunk_key_encoding={"name": "default", "separator": "."},
        )
        group.create_array(
            "done",
            shape=(n,),
            chunks=(1,),
            dtype="bool",
            fill_value=False,
            chunk_key_encoding={"name": "default", "separator": "."},
        )
        group.attrs.update(attrs)
        return LogitsStore(group, str(location))

    @staticmethod
    def state(location: str | Path) -> str:
        """'absent' (nothing there, or an empty directory), 'complete' (created, maybe not yet
        filled), 'unfinished' (killed while being created: safe to create anew), 'old' (an
        older boxseg's store) or 'foreign' (anything else: never overwritten). Local paths and
        URLs alike."""
        path = local_path(location)
        if path is not None:
            if not path.exists() or (path.is_dir() and not any(path.iterdir())):
                return "absent"
            if not (path / "zarr.json").is_file():
                return "foreign"  # a file, or a directory of other things
        try:
            group = zarr.open_group(zarr_location(location), mode="r")
        except FileNotFoundError:  # (zarr >= 3.0.9: its GroupNotFoundError, a subclass)
            return "absent" if path is None else "foreign"
        except (ValueError, KeyError, OSError):
            return "foreign"
        if group.attrs.get("format") == FORMAT:
            return "complete"
        if group.attrs.get("format") in OLD_FORMATS:
            return "old"
        ours = not dict(group.attrs) and set(group.keys()) <= set(ARRAYS)
        return "unfinished" if ours else "foreign"

    @staticmethod
    def open(location: str | Path, mode: str = "r") -> LogitsStore:
        """Open an existing store; a clear error if there is none or it is not ours."""
        location = str(location)
        path = local_path(location)
        if path is not None and not (path / "zarr.json").is_file():
            raise BoxsegError(f"{location}: no logits store here")
        try:
            group = zarr.open_group(zarr_location(location), mode=mode)
        except FileNotFoundError as e:  # (zarr >= 3.0.9: its GroupNotFoundError, a subclass)
            raise BoxsegError(f"{location}: no logits store here") from e
        except (ValueError, KeyError, OSError) as e:
            raise BoxsegError(f"{location}: cannot open the logits store ({e})") from e
        try:
            names = set(group.keys())
        except Exception as e:  # noqa: BLE001 - an array's metadata damaged, whatever the error
            why = (str(e).splitlines() or [type(e).__name__])[0][:100]
            raise BoxsegError(
                f"{location}: damaged store ({why}); rewrite it with the same "
                "gen-logits command and --overwrite"
            ) from e
        if not {"logits", "boxes", "sizes", "done"} <= names:
            raise BoxsegError(f"{location}: not a boxseg logits store (arrays missing)")
        return LogitsStore(group, location)

    def __len__(self) -> int:
        return len(self.image_ids)

    def index(self, image_id: str) -> int:
        return self._index[image_id]

    def done_mask(self) -> np.ndarray:
        try:
            return np.asarray(self.done[:], dtype=bool)
        except Exception as e:  # noqa: BLE001 - a damaged flag chunk, whatever the codec says
            why = (str(e).splitlines() or [type(e).__name__])[0][:80]
            raise BoxsegError(
                f"{self.location}: the done flags are damaged ({why}); rewrite "
                "the store with the same gen-logits command and --overwrite"
            ) from e

    def write(self, i: int, logits: torch.Tensor, boxes: Boxes | None = None) -> None:
        """Store image i's logits (KxHxW at pixel resolution, or already pooled to the stride)
        and its boxes ((Nx4 xyxy, N labels); None: none)."""
        self.write_block(i, [logits], [boxes])

    def write_block(
        self, start: int, logits: list[torch.Tensor], boxes: list[Boxes | None] | None = None
    ) -> None:
        """Store images start, start+1, ... in one call (zarr writes their chunks concurrently),
        then set their done flags."""
        canvas = np.zeros((len(logits), *self.logits.shape[1:]), dtype=self.logits.dtype)
        box_rows = np.full((len(logits), *self.boxes.shape[1:]), -1, np.float32)
        for k, b in enumerate(boxes or []):
            if b is None:
                continue
            xyxy, labels = np.asarray(b[0], np.float32).reshape(-1, 4), np.asarray(b[1])
            if len(labels) > box_rows.shape[1]:
                raise BoxsegError(
                    f"{self.image_ids[start + k]}: {len(labels)} boxes, more than "
                    f"a store holds ({box_rows.shape[1]})"
                )
            box_rows[k, : len(labels), :4] = xyxy
            box_rows[k, : len(labels), 4] = labels
        for k, x in enumerate(logits):
            i = start + k
            h, w = (int(v) for v in self.sizes[i])
            hs, ws = math.ceil(h / self.stride), math.ceil(w / self.stride)
            if x.shape[-2:] == (h, w):
                x = pool_logits(x.float(), self.stride)
            if tuple(x.shape[-2:]) != (hs, ws):
                raise ValueError(f"logits of shape {tuple(x.shape)} for an image of {h}x{w}")
            x = x.detach().cpu()
            if self.dtype == "int8":
                canvas[k, :, :hs, :ws] = encode_int8(x)
            else:
                fp16 = float(np.finfo(np.float16).max)  # beyond it a logit would become inf
                canvas[k, :, :hs, :ws] = x.clamp(-fp16, fp16).numpy().astype(np.float16)
        end = start + len(logits)
        sums = np.array(
            [[_crc(canvas[k]), _crc(box_rows[k])] for k in range(len(logits))], np.uint32
        )
        try:
            self.logits[start:end] = canvas
            self.boxes[start:end] = box_rows
            if self.check is not None:
                self.check[start:end] = sums
            self.done[start:end] = True  # only after the chunks are written
        except OSError as e:  # disk full and the like: done flags stay unset, so a rerun resumes
            first, why = self.image_ids[start], e.strerror or e
            raise BoxsegError(
                f"{self.location}: cannot write image {first} ({why}); "
                "free space and run again to resume"
            ) from e
        self._known_done[start:end] = True

    def read(self, i: int, rows: slice | None = None, cols: slice | None = None) -> torch.Tensor:
        """Image i's stored logits at the store's stride (Kx ceil(H/s) x ceil(W/s), float32),
        or just the given rows and columns of its cells (those under a training crop)."""
        if not (self._known_done[i] or bool(self.done[i])):
            raise BoxsegError(
                f"{self.location}: image {self.image_ids[i]} has no logits yet "
                "(an interrupted gen-logits run: run it again to finish)"
            )
        h, w = (int(v) for v in self.sizes[i])
        hs, ws = math.ceil(h / self.stride), math.ceil(w / self.stride)
        rows, cols = rows or slice(0, hs), cols or slice(0, ws)
        canvas = self._verified(self.logits, i, 0, "logits")  # (zarr decodes whole chunks)
        chunk = canvas[:, rows.start : min(rows.stop, hs), cols.start : min(cols.stop, ws)]
        if self.dtype == "int8":
            return decode_int8(chunk)
        return torch.from_numpy(chunk.astype(np.float32))

    def read_boxes(self, i: int) -> Boxes:
        """Image i's boxes as gen-logits saw them: (Nx4 float32 xyxy, N int64 labels)."""
        rows = self._verified(self.boxes, i, 1, "boxes")
        rows = rows[rows[:, 4] >= 0]
        return rows[:, :4].copy(), rows[:, 4].astype(np.int64)

    def _verified(self, array: zarr.Array, i: int, which: int, what: str) -> np.ndarray:
        """Image i's whole chunk of `array`, checked against the CRC written with it."""
        redo = (
            f"rewrite it with gen-logits and --redo {self.image_ids[i]} (same options), or "
            "--overwrite"
        )
        try:
            chunk = np.asarray(array[i])
            want = None if self.check is None else int(self.check[i, which])
        except Exception as e:  # noqa: BLE001 - a torn chunk fails in the codec, whatever it is
            why = (str(e).splitlines() or [type(e).__name__])[0][:80]
            raise BoxsegError(
                f"{self.location}: the {what} of image {self.image_ids[i]} are "
                f"unreadable (chunk damaged: {why}); {redo}"
            ) from e
        if want is not None and _crc(chunk) != want:
            raise BoxsegError(
                f"{self.location}: the {what} of image {self.image_ids[i]} are "
                f"missing or damaged (checksum mismatch); {redo}"
            )
        return chunk

    def redo(self, ids: list[str]) -> None:
        """Clear the done flags of `ids`, so gen-logits computes them again."""
        unknown = [i for i in ids if i not in self._index]
        if unknown:
            raise BoxsegError(f"--redo {unknown[0]}: not an image of the store {self.location}")
        for image_id in ids:
            self.done[self._index[image_id]] = False
            self._known_done[self._index[image_id]] = False


def _crc(array: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(array).tobytes()) & 0xFFFFFFFF


class InMemoryLogits(SharedReads):
    """Soft-label logits held in RAM (float32, pixel resolution), with the reading interface
    of `LogitsStore`: train-primary takes either. Benchmarks use it as the no-storage baseline;
    Python users can train from logits they made themselves; with `boxes` (id -> (Nx4, N))
    and a `rule`, readers make them box-consistent as a store's."""

    def __init__(
        self,
        logits: dict[str, torch.Tensor],
        class_names: list[str],
        boxes: dict[str, Boxes] | None = None,
        rule: ConstraintRule | None = None,
    ):
        self.image_ids = list(logits)
        self._boxes, self.rule = boxes or {}, rule
        self.class_names = list(class_names)
        self._logits = [logits[i].float() for i in self.image_ids]
        self._index = {k: i for i, k in enumerate(self.image_ids)}
        self.sizes = np.array([x.shape[-2:] for x in self._logits], dtype=np.int32)
        self.stride, self.dtype, self.location = 1, "float32", "<logits in memory>"
        self.attrs: dict = {}
        self.may_hold_void = False  # (NaN-free logits expected)

    def __len__(self) -> int:
        return len(self.image_ids)

    def __str__(self) -> str:
        return self.location

    def index(self, image_id: str) -> int:
        return self._index[image_id]

    def done_mask(self) -> np.ndarray:
        return np.ones(len(self), dtype=bool)

    def read(self, i: int, rows: slice | None = None, cols: slice | None = None) -> torch.Tensor:
        return self._logits[i][:, rows or slice(None), cols or slice(None)]

    def read_boxes(self, i: int) -> Boxes:
        empty = (np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
        return self._boxes.get(self.image_ids[i], empty)


class BlockWriter:
    """`with BlockWriter(store) as w: w.write(start, block)`: compresses and writes blocks of
    (logits, boxes) pairs in one background thread, so the next forward pass runs meanwhile.
    At most `depth` blocks wait (memory stays bounded; 0: each is written at once, in the
    caller); a failed write is raised at the next `write` or on leaving. Leaving waits for the
    blocks already handed over: done flags are only set after their chunks, so a kill at any
    moment still resumes."""

    def __init__(self, store: LogitsStore, depth: int = 2):
        self.store, self.depth = store, depth
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="boxseg-writer")
        self.pending: deque[Future] = deque()

    def write(self, start: int, block: list[tuple[torch.Tensor, Boxes | None]]) -> None:
        logits, boxes = [x for x, _ in block], [b for _, b in block]
        if self.depth == 0:  # no overlap (benchmarks' serial baseline)
            self.store.write_block(start, logits, boxes)
            return
        while len(self.pending) >= self.depth:
            self.pending.popleft().result()
        self.pending.append(self.pool.submit(self.store.write_block, start, logits, boxes))

    def __enter__(self) -> BlockWriter:
        return self

    def __exit__(self, *exc) -> None:
        try:
            while self.pending:
                self.pending.popleft().result()
        finally:
            self.pool.shutdown(wait=True)


def open_or_create(
    out: str,
    image_ids: list[str],
    class_names: list[str],
    stride: int,
    dtype: str,
    attrs: dict,
    rule: ConstraintRule | None,
    sizes: np.ndarray,
    overwrite: bool,
    inputs: tuple[Path, ...] = (),
) -> LogitsStore:
    """Resume a store made the same way (ids, classes, stride, dtype, rule, the provenance in
    `attrs`: method, options, checkpoint, box constraint; and the same images: `sizes`, and
    `attrs["image_file_sizes"]`), refuse a mismatched one (`overwrite`: replace it), or create
    a new one. Never replaces what is not a boxseg store, nor writes inside `inputs`; local
    paths and URLs alike."""
    path = local_path(out)
    if path is not None:
        refuse_inside_inputs(path, inputs)
    state = LogitsStore.state(out)
    if state == "foreign":
        kind = "a file" if path is not None and path.is_file() else "not a boxseg logits store"
        raise BoxsegError(
            f"{out}: exists and is {kind}; boxseg replaces only its own stores: "
            "choose another --out"
        )
    if state == "old" and not overwrite:
        LogitsStore.open(out)  # (its own message: rewrite with --overwrite)
    if state == "complete":
        store = LogitsStore.open(out, mode="r+")
        mismatch = _mismatch(store, image_ids, class_names, stride, dtype, rule, attrs, sizes)
        if mismatch is None:
            return store
        if not overwrite:
            raise BoxsegError(
                f"{out}: an existing store {mismatch}; pass --overwrite to "
                "replace it, or another --out"
            )
    return LogitsStore.create(out, image_ids, sizes, class_names, stride, attrs, dtype, rule)


def _mismatch(
    store: LogitsStore, image_ids, class_names, stride, dtype, rule, attrs: dict, sizes: np.ndarray
) -> str | None:
    """How an existing store differs from the one asked for (None: it is the same)."""
    for what, have, want in (
        ("image ids", store.image_ids, image_ids),
        ("classes", store.class_names, class_names),
        ("stride", store.stride, stride),
        ("dtype", store.dtype, dtype),
        ("box constraint rule", store.rule, rule),
        ("method", store.attrs.get("method", "anc"), attrs["method"]),
        ("method options", store.attrs.get("method_options"), attrs.get("method_options")),
        ("checkpoint", store.attrs.get("checkpoint_sha256"), attrs["checkpoint_sha256"]),
        ("box constraint", store.attrs.get("box_constraint"), attrs.get("box_constraint")),
    ):
        if have != want:
            return f"with other {what}"
    differ = np.flatnonzero((store.sizes != np.asarray(sizes)).any(1))
    if len(differ):
        (h, w), (sh, sw) = sizes[differ[0]], store.sizes[differ[0]]
        return (
            f"made from other images: {image_ids[differ[0]]} is {w}x{h} here, {sw}x{sh} in "
            "the store"
        )
    have = store.attrs.get("image_file_sizes")
    want = attrs.get("image_file_sizes")
    if have is not None and want is not None and have != want:
        first = next(k for k, (a, b) in enumerate(zip(have, want, strict=True)) if a != b)
        return f"made from other image files (first: {image_ids[first]})"
    return None
