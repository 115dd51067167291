"""`boxseg gen-logits`: fill the logits store for W, from the ancillary net (`--method anc`) or
from the boxes alone (`box`: box-fill, `grabcut`: OpenCV GrabCut, see box_labels.py; `sam`:
Segment Anything prompted with the boxes, sam_labels.py). Given a
primary model.pt instead, `--model` writes that net's own logits (method "primary"): the
targets of self-training, the no-box baseline, made from the images alone.

Resumable: images whose done flag is set are skipped, so a killed run continues where it stopped.
The ancillary net runs on up to `--batch-size` same-size images at once: the images of one
group of `batch_size` consecutive store indices, always the whole group (done or not), so every
image's values are the same whether the run was interrupted or not and for any number of ranks.
Under torchrun each rank takes a contiguous share of those groups and writes their chunks
itself: one chunk (and one done flag) per image, so no two ranks ever write the same file.

A pipeline, so that a fast GPU is not kept waiting: `--workers` reader processes (a DataLoader)
read the images and derive the boxes ahead of the net (the net's float inputs are made next to
it); chunks are compressed and written by a background thread while the next pass runs.
Neither changes a value: a store is the same element for element with any number of workers.
GrabCut runs one image per process on every core (`--workers`).
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from boxseg import distributed
from boxseg.box_constraint import BoxConstraint, ConstraintRule, rule_of
from boxseg.box_labels import box_fill, grabcut_fill, labels_to_logits
from boxseg.cells import pool_logits
from boxseg.checkpoint import file_sha256, load_model
from boxseg.data.boxes import BoxSpec
from boxseg.data.formats import SegDataset, load_weak, open_dataset
from boxseg.data.sample import Sample
from boxseg.data.split import SplitSpec, split_dataset
from boxseg.data.validate import image_size, usable_ids
from boxseg.engine import resolve_device
from boxseg.errors import BoxsegError
from boxseg.evaluate import check_classes
from boxseg.inference import predict_batch
from boxseg.passes import forward_passes
from boxseg.sam_labels import load_sam, sam_fill
from boxseg.store import DTYPES, BlockWriter, LogitsStore, open_or_create

WRITE_BLOCK = 8  # images per store write; a kill loses at most this many
WRITER_DEPTH = 2  # blocks waiting for the writer thread (0: write in the caller, no thread)


@dataclass(frozen=True)
class BoxMethod:
    """Options of the box-only methods (recorded in the store's attributes)."""

    method: str = "box"
    confidence: float = 0.9  # probability given to the painted class
    grabcut_iters: int = 5
    grabcut_margin: int = 0  # pixels added around each box for GrabCut's rectangle
    box_min_area: int = 16
    sam_checkpoint: str | None = None  # SAM's weights file (--method sam)
    sam_model: str = "vit_b"  # its architecture: vit_b, vit_l or vit_h

    def validate(self) -> None:
        if not 0 < self.confidence < 1:
            raise BoxsegError(f"--confidence {self.confidence}: must be in (0, 1)")
        if self.grabcut_iters < 1:
            raise BoxsegError(f"--grabcut-iters {self.grabcut_iters}: must be at least 1")
        if self.grabcut_margin < 0:
            raise BoxsegError(f"--grabcut-margin {self.grabcut_margin}: must be >= 0")


@dataclass(frozen=True)
class GenLogitsOptions:
    """Everything `boxseg gen-logits` is asked: the data, the store to write (`out`: a path or
    a store URL) and the F/W split whose W it covers; the source, either the model.pt at
    `model_path` (an ancillary net, its output made box-consistent by `constraint`; or a
    primary net, its own logits) run on `batch_size` images a pass, or the boxes alone
    (`box_method`); the store's `stride` and `dtype`; `workers`: reader processes for a net
    (None: half the cores, at most 4), GrabCut's processes (None: every core); `redo`: image
    ids computed again although done (a damaged chunk). `dataclasses.replace` makes variants."""

    data: Path
    out: str
    split: SplitSpec
    model_path: Path | None = None
    box_method: BoxMethod | None = None
    stride: int = 4
    dtype: str = "float16"
    batch_size: int = 8
    constraint: BoxConstraint = field(default_factory=BoxConstraint)
    workers: int | None = None
    device: str = "auto"
    overwrite: bool = False
    skip_bad: bool = False
    redo: tuple[str, ...] = ()

    def validate(self) -> None:
        """One-line errors for option values that cannot work."""
        self.constraint.validate()
        if self.stride < 1:
            raise BoxsegError(f"--stride {self.stride}: must be a positive integer")
        if self.batch_size < 1:
            raise BoxsegError(f"--batch-size {self.batch_size}: must be at least 1")
        if self.workers is not None and self.workers < 0:
            raise BoxsegError(
                f"--workers {self.workers}: must be 0 (read in the main process) or more"
            )
        if self.dtype not in DTYPES:
            raise BoxsegError(f"--dtype {self.dtype}: choose float16 or int8")
        if self.box_method is not None:
            self.box_method.validate()
        elif self.model_path is None:
            raise BoxsegError(
                "--method anc needs --model (an ancillary model.pt from train-anc, or "
                "a primary model.pt for self-training targets)"
            )


def sam_label_map(ds: SegDataset, split: str, opts: BoxMethod, predictor, image_id: str):
    """One weak image's label map from SAM's masks for its boxes (in this process), the
    number of empty masks, and the boxes."""
    s = load_weak(ds, split, image_id, BoxSpec(opts.box_min_area))
    return *sam_fill(predictor, s.image, s.boxes, s.labels, ds.background), (s.boxes, s.labels)


def box_label_map(ds: SegDataset, split: str, opts: BoxMethod, image_id: str):
    """One weak image's label map from its boxes (run in worker processes for GrabCut), the
    number of boxes that fell back to box-fill, and the boxes."""
    s = load_weak(ds, split, image_id, BoxSpec(opts.box_min_area))
    if opts.method == "box":
        return box_fill(*s.size, s.boxes, s.labels, ds.background), 0, (s.boxes, s.labels)
    return *grabcut_fill(
        s.image, s.boxes, s.labels, ds.background, opts.grabcut_iters, opts.grabcut_margin
    ), (s.boxes, s.labels)


def gen_logits(opts: GenLogitsOptions, quiet: bool = False, sam_predictor=None) -> LogitsStore:
    """Write (or finish) the store at `opts.out` for every W image of the split: from the
    ancillary model (box-consistent unless `opts.constraint` is disabled: box_constraint.py),
    or from the boxes alone (box-fill, GrabCut, or SAM prompted with them: `sam_predictor`, or
    one loaded from `opts.box_method.sam_checkpoint`)."""
    opts.validate()
    split, box_method, model_path = opts.split, opts.box_method, opts.model_path
    dev = distributed.join_group(resolve_device(opts.device))
    ds = open_dataset(opts.data)
    _, weak_ids = split_dataset(ds, split)
    if not weak_ids:
        raise BoxsegError("the split leaves no weak images (W is empty): lower --num-full")
    model = meta = box_spec = rule = None
    if box_method is None:
        model, meta = load_model(model_path, device=dev)
        check_classes(meta, ds, str(model_path))
    elif box_method.method == "sam" and sam_predictor is None:
        sam_predictor = load_sam(box_method.sam_checkpoint, box_method.sam_model, dev)
    # W's masks are read (for boxes) only where boxes come from masks and boxes are used
    uses_boxes = meta is None or meta["kind"] == "ancillary"
    all_weak = weak_ids
    muted = quiet or not distributed.is_main()
    reads_masks = ds.boxes_from_masks and uses_boxes
    weak_ids = usable_ids(ds, split.split, weak_ids, reads_masks, opts.skip_bad, None, "W", muted)
    if meta is not None and meta["kind"] == "ancillary":
        box_spec = BoxSpec.from_dict(meta["boxes"])
        provenance = {
            "method": "anc",
            "checkpoint_sha256": file_sha256(model_path),
            "box_constraint": opts.constraint.to_dict(),
        }
        rule = rule_of(meta, opts.constraint)
    elif meta is not None:  # a primary net: self-training targets, no boxes anywhere
        provenance = {
            "method": "primary",
            "checkpoint_sha256": file_sha256(model_path),
            "box_constraint": None,
        }
    else:
        sam_file = box_method.sam_checkpoint if box_method.method == "sam" else None
        provenance = {
            "method": box_method.method,
            "method_options": asdict(box_method),
            "checkpoint_sha256": file_sha256(sam_file) if sam_file else None,
        }
        rule = ConstraintRule.of(ds.num_classes, ds.background, None)  # painted inside boxes
    provenance["skipped_ids"] = sorted(set(all_weak) - set(weak_ids))
    if distributed.is_main():  # one rank creates (or checks) the store, then all open it
        paths = [ds.image_path(split.split, i) for i in weak_ids]
        sizes = np.array([image_size(p) for p in paths], np.int32).reshape(-1, 2)
        attrs = provenance | {
            "dataset": ds.describe() | {"split": split.to_dict()},
            "image_file_sizes": [p.stat().st_size for p in paths],
        }
        store = open_or_create(
            opts.out,
            weak_ids,
            list(ds.class_names),
            opts.stride,
            opts.dtype,
            attrs,
            rule,
            sizes,
            opts.overwrite,
            (Path(opts.data),),
        )
        if opts.redo:
            store.redo(list(opts.redo))
    distributed.barrier()
    if not distributed.is_main():
        store = LogitsStore.open(opts.out, mode="r+")
    done = store.done_mask()
    todo = rank_share([i for i in range(len(store)) if not done[i]], opts.batch_size)

    if box_method is None:
        passes = forward_passes(store.sizes, todo, opts.batch_size, dev)
        reader = PassReader(ds, split.split, store, passes, meta, box_spec)
        logits = net_logits(model, dev, reader, todo, reader_workers(opts.workers))
        _fill(store, todo, logits, quiet, "gen-logits")
    else:
        label_map = partial(box_label_map, ds, split.split, box_method)
        if box_method.method == "sam":
            label_map = partial(sam_label_map, ds, split.split, box_method, sam_predictor)
        ids = [store.image_ids[i] for i in todo]
        to_logits = partial(
            labels_to_logits, num_classes=ds.num_classes, confidence=box_method.confidence
        )
        with _mapper(box_method.method, opts.workers, len(ids)) as imap:
            maps = imap(label_map, ids)
            fallbacks = [0]

            def results() -> Iterator[tuple[torch.Tensor, tuple]]:
                for labels, n_fallback, boxes in maps:
                    fallbacks[0] += n_fallback
                    yield pool_logits(to_logits(labels), opts.stride), boxes

            _fill(store, todo, results(), quiet, f"gen-logits {box_method.method}")
        if box_method.method == "grabcut" and not quiet and distributed.is_main():
            print(f"gen-logits: GrabCut fell back to box-fill for {fallbacks[0]} boxes")
        if box_method.method == "sam" and not quiet and distributed.is_main():
            print(f"gen-logits: SAM gave an empty mask for {fallbacks[0]} boxes")
    distributed.barrier()  # every rank's share is written before anyone reads the store
    return LogitsStore.open(opts.out)


def weak_sample(ds: SegDataset, split: str, image_id: str, box_spec: BoxSpec | None) -> Sample:
    """A W image with its boxes, or (box_spec None: a primary net's self-training targets) the
    image alone: then neither boxes nor masks are read."""
    if box_spec is None:
        return Sample(image_id, ds.read_image(split, image_id), None, None, None)
    return load_weak(ds, split, image_id, box_spec)


def rank_share(todo: list[int], group_size: int) -> list[int]:
    """This rank's part of `todo` (ascending store indices): a contiguous run of whole groups of
    `group_size` consecutive indices, so the groups (the ancillary net's batches) do not depend
    on the number of ranks."""
    groups = sorted({i // group_size for i in todo})
    mine = np.array_split(np.array(groups, dtype=np.int64), distributed.world())
    keep = {int(g) for g in mine[distributed.rank()]}
    return [i for i in todo if i // group_size in keep]


def reader_workers(workers: int | None) -> int:
    """Reader processes for the net's inputs: `--workers`, or by default half the cores (at
    most 4), leaving the rest to the forward pass."""
    return min(4, (os.cpu_count() or 1) // 2) if workers is None else max(0, workers)


class PassReader(torch.utils.data.Dataset):
    """Item k: what forward pass k needs from disk, read in DataLoader workers: its images
    (N x H x W x 3 uint8, stacked) and their boxes, derived where they come from masks. Only
    that crosses between processes: the net's float inputs (normalised images, box rasters,
    K x H x W each) are made from them next to the net, where a
    GPU would make them, instead of shipping 30 times the bytes. A user mistake comes back as
    the BoxsegError itself (raised by the main process as one line, not a worker's
    traceback)."""

    def __init__(
        self,
        ds: SegDataset,
        split: str,
        store: LogitsStore,
        passes: list[tuple[int, list[int]]],
        meta: dict,
        box_spec: BoxSpec | None,
    ):
        self.ds, self.split, self.passes, self.meta = ds, split, passes, meta
        self.box_spec, self.stride = box_spec, store.stride
        self.image_ids, self.location = store.image_ids, store.location
        self.sizes = {
            i: (int(store.sizes[i][0]), int(store.sizes[i][1])) for _, ids in passes for i in ids
        }

    def __len__(self) -> int:
        return len(self.passes)

    def __getitem__(self, k: int):
        group, ids = self.passes[k]
        try:
            samples = [
                weak_sample(self.ds, self.split, self.image_ids[i], self.box_spec) for i in ids
            ]
            for i, s in zip(ids, samples, strict=True):
                if s.image.shape[:2] != self.sizes[i]:
                    (h, w), (sh, sw) = s.image.shape[:2], self.sizes[i]
                    raise BoxsegError(  # store sizes are this run's header sizes
                        f"{self.ds.image_path(self.split, self.image_ids[i])}: its pixels are "
                        f"{w}x{h} but its header said {sw}x{sh} when this run checked it (the "
                        "file changed during the run, or its header disagrees with its data: "
                        "re-save the image and run again)"
                    )
        except BoxsegError as e:
            return e
        boxes = None if self.box_spec is None else [s.boxes for s in samples]
        labels = None if self.box_spec is None else [s.labels for s in samples]
        images = torch.from_numpy(np.stack([s.image for s in samples]))
        return group, ids, images, boxes, labels


def _as_is(item):
    """The DataLoader's collate for PassReader: items as they are (boxes stay numpy)."""
    return item


def net_logits(
    model: torch.nn.Module,
    device: torch.device,
    reader: PassReader,
    todo: list[int],
    workers: int,
) -> Iterator[tuple[torch.Tensor, tuple | None]]:
    """(stored-resolution logits, (boxes, labels) or None) of the images in `todo`, in order:
    `workers` processes read the next passes' images and boxes while this one runs the net.
    The logits are what the net said: the box constraint is applied by every reader, at pixel
    resolution, with the boxes stored beside them."""
    loader = torch.utils.data.DataLoader(
        reader,
        batch_size=None,
        num_workers=workers,
        collate_fn=_as_is,
        prefetch_factor=2 if workers else None,
    )
    wanted, done, current = set(todo), {}, None
    for item in loader:
        if isinstance(item, BoxsegError):
            raise item
        group, ids, images, boxes, labels = item
        if current is not None and group != current:
            yield from (done.pop(i) for i in sorted(done))
        current = group
        logits = predict_batch(model, reader.meta, list(images.numpy()), device, boxes, labels)
        for k, i in enumerate(ids):
            if i in wanted:
                pooled = pool_logits(logits[k], reader.stride, void_free=True).cpu()
                done[i] = pooled, None if boxes is None else (boxes[k], labels[k])
    yield from (done.pop(i) for i in sorted(done))


class _mapper:
    """`with _mapper(method, workers, n) as imap`: an ordered map over a process pool for
    GrabCut (one image per task), or the plain built-in map for the cheap box-fill."""

    def __init__(self, method: str, workers: int | None, n: int):
        workers = (os.cpu_count() or 1) if workers is None else workers
        self.pool = None
        if method == "grabcut" and workers > 1 and n > 1:
            self.pool = multiprocessing.get_context("spawn").Pool(min(workers, n))

    def __enter__(self) -> Callable:
        if self.pool is None:
            return map
        return lambda fn, items: self.pool.imap(fn, items, chunksize=1)

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.terminate()


def _fill(
    store: LogitsStore,
    todo: list[int],
    logits: Iterator[tuple[torch.Tensor, tuple]],
    quiet: bool,
    description: str,
) -> None:
    """Write each image's (logits at the store's stride, boxes), in todo's order, in blocks of
    consecutive images."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[ips]:.1f} img/s"),
        TimeRemainingColumn(),
    )
    t0 = time.perf_counter()
    with (
        Progress(*columns, disable=quiet or not distributed.is_main()) as bar,
        BlockWriter(store, WRITER_DEPTH) as writer,
    ):
        task = bar.add_task(description, total=len(todo), ips=0.0)
        block: list = []  # consecutive images written together: fewer, concurrent writes
        block_start = 0
        for n, (i, x) in enumerate(zip(todo, logits, strict=True), 1):
            if block and block_start + len(block) != i:
                writer.write(block_start, block)
                block = []
            if not block:
                block_start = i
            block.append(x)
            if len(block) == WRITE_BLOCK:
                writer.write(block_start, block)
                block = []
            bar.update(task, advance=1, ips=n / (time.perf_counter() - t0))
        if block:
            writer.write(block_start, block)
