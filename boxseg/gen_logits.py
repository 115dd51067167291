"""`boxseg gen-logits`: run the ancillary net over W with its boxes and fill the logits store.

Resumable: images whose done flag is set are skipped, so a killed run continues where it stopped.
Under torchrun each rank takes a contiguous share of the images still to do and writes their
chunks itself: one chunk (and one done flag) per image, so no two ranks ever write the same file.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from PIL import Image
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from boxseg import distributed
from boxseg.checkpoint import file_sha256, load_model
from boxseg.data.boxes import BoxSpec
from boxseg.data.formats import load_weak, open_dataset
from boxseg.data.split import SplitSpec, split_full_weak
from boxseg.engine import resolve_device
from boxseg.errors import BoxsegError
from boxseg.evaluate import check_classes
from boxseg.inference import predict_logits
from boxseg.store import DTYPES, LogitsStore, local_path, pool_logits

WRITE_BLOCK = 8  # images per store write; a kill loses at most this many


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the file header, without decoding the pixels."""
    try:
        with Image.open(path) as im:
            return im.height, im.width
    except OSError as e:
        raise BoxsegError(f"{path}: not a readable image ({e})") from e


def gen_logits(
    data: Path,
    model_path: Path,
    out: str,
    split: SplitSpec,
    stride: int = 4,
    device: str = "auto",
    overwrite: bool = False,
    quiet: bool = False,
    dtype: str = "float16",
) -> LogitsStore:
    """Write (or finish) the store at `out` for every W image of the split."""
    if stride < 1:
        raise BoxsegError(f"--stride {stride}: must be a positive integer")
    if dtype not in DTYPES:
        raise BoxsegError(f"--dtype {dtype}: choose float16 or int8")
    dev = resolve_device(device)
    ds = open_dataset(data)
    model, meta = load_model(model_path, kind="ancillary", device=dev)
    check_classes(meta, ds, str(model_path))
    _, weak_ids = split_full_weak(ds.ids(split.split), split)
    if not weak_ids:
        raise BoxsegError("the split leaves no weak images (W is empty): lower --num-full")
    sha = file_sha256(model_path)
    box_spec = BoxSpec.from_dict(meta["boxes"])
    if distributed.is_main():  # one rank creates (or checks) the store, then all open it
        store = _open_or_create(out, ds, split, weak_ids, stride, sha, overwrite, dtype)
    distributed.barrier()
    if not distributed.is_main():
        store = LogitsStore.open(out, mode="r+")
    done = store.done_mask()
    todo = [i for i in range(len(store)) if not done[i]]
    todo = [int(i) for i in np.array_split(todo, distributed.world())[distributed.rank()]]
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[ips]:.1f} img/s"),
        TimeRemainingColumn(),
    )
    t0 = time.perf_counter()
    with Progress(*columns, disable=quiet or not distributed.is_main()) as bar:
        task = bar.add_task("gen-logits", total=len(todo), ips=0.0)
        block: list = []  # consecutive images written together: fewer, concurrent writes
        block_start = 0
        for n, i in enumerate(todo, 1):
            if block and block_start + len(block) != i:
                store.write_block(block_start, block)
                block = []
            if not block:
                block_start = i
            s = load_weak(ds, split.split, store.image_ids[i], box_spec)
            block.append(pool_logits(predict_logits(model, meta, s.image, dev, s.boxes, s.labels),
                                     stride))  # fmt: skip
            if len(block) == WRITE_BLOCK:
                store.write_block(block_start, block)
                block = []
            bar.update(task, advance=1, ips=n / (time.perf_counter() - t0))
        if block:
            store.write_block(block_start, block)
    distributed.barrier()  # every rank's share is written before anyone reads the store
    return LogitsStore.open(out)


def _open_or_create(
    out: str,
    ds,
    split: SplitSpec,
    weak_ids: list[str],
    stride: int,
    sha: str,
    overwrite: bool,
    dtype: str,
) -> LogitsStore:
    """Resume a matching store, refuse a mismatched one, or create a new one."""
    path = local_path(out)
    exists = path is not None and (path / "zarr.json").is_file()
    state = LogitsStore.state(out) if exists and not overwrite else None
    if state == "foreign":
        raise BoxsegError(f"{out}: exists and is not a boxseg logits store; "
                          "choose another --out, or pass --overwrite to replace it")  # fmt: skip
    if state == "complete":
        store = LogitsStore.open(out, mode="r+")
        for what, have, want in (
            ("image ids", store.image_ids, weak_ids),
            ("classes", store.class_names, list(ds.class_names)),
            ("stride", store.stride, stride),
            ("dtype", store.dtype, dtype),
            ("checkpoint", store.attrs.get("checkpoint_sha256"), sha),
        ):
            if have != want:
                raise BoxsegError(
                    f"{out}: an existing store with other {what}; "
                    "pass --overwrite to replace it, or another --out"
                )
        return store
    sizes = np.array([image_size(ds.image_path(split.split, i)) for i in weak_ids], np.int32)
    attrs = {"checkpoint_sha256": sha, "dataset": ds.describe() | {"split": split.to_dict()}}
    return LogitsStore.create(out, weak_ids, sizes, list(ds.class_names), stride, attrs, dtype)
