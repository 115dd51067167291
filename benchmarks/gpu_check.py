"""The GPU check (issue 41): every stage of the pipeline at Cityscapes size, timed, with its
peak memory, in one run of a few minutes on one GPU.

It writes a generated set in the folder layout users' own data takes (images/, masks/ for F
and val only, classes.txt, train.txt, val.txt and a COCO boxes.json): 2048x1024 images, the
19 Cityscapes class names (no background class), about 150 boxes an image (four "stuff" bands
and many small objects, one connected component each; the boxes are boxseg's own
`boxes_from_mask` of each image's mask); 16 F, 16 W and 4 val images by default. Then it runs,
through boxseg's Python API (the option values the CLI builds), each stage in turn:

    train-anc                   all of F
    train-anc --weak-boxes      all of F, W's boxes too
    gen-logits                  the first ancillary net, W's store (float16, stride 4)
    train-primary store         --logits that store (--self-corr none)
    train-primary online        --anc-model the first ancillary net, no store
    train-anc half              the conv recipe's stage 1: --full-fraction 0.5
    gen-logits half             its store, int8 (conv codes F's logits as it is stored)
    train-primary conv          stages 2 and 3: --self-corr conv --anc-model/--logits the half's
    eval primary                the store's primary net on val, whole images
    eval ancillary              the first ancillary net on val, with the boxes (box constraint)

On CUDA the trainers run with `--amp bf16 --channels-last` and crop 769, batch 8 (gen-logits
and eval have no --amp: they run as users get them). Printed: one Markdown table, a row a
stage: steps, steps/s, images/s, peak GPU memory (torch.cuda.max_memory_allocated, reset per
stage), the process's peak resident memory during the stage (VmHWM, reset per stage through
/proc/self/clear_refs) and the stage's seconds (its whole call: reading, model building,
writing). A trainer's steps/s and images/s are those of its steps but the first and the last
(the first carries the loaders' start and cuDNN's tuning; after the last, fit saves last.pt
and checks the ranks' weights, work no step does): from the moment step 2 asks for its batch
to the moment the last step asks for its own, a device sync at each; they come from wrapping
engine.fit and its next_batch as the trainers call them (a trainer of 2 steps or fewer: to
its return). gen-logits' and eval's rates are images over the whole call.

`--profile-syncs` (CUDA only): torch.cuda.set_sync_debug_mode("warn") over `--log-every` steps
of each train-primary stage (ending before its last step), counting the synchronising calls
the steps make, with where they come from (the engine's one sync a logging window is one).

    python benchmarks/gpu_check.py --json gpu_check.json --profile-syncs   # on a GPU
    python benchmarks/gpu_check.py --dry-run                               # CPU, tiny, < 1 min
"""

from __future__ import annotations

import argparse
import gc
import inspect
import json
import math
import os
import resource
import shutil
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
import torch

import boxseg.train_anc
import boxseg.train_primary
from boxseg.box_losses import WeakBoxLoss
from boxseg.data.boxes import boxes_from_mask
from boxseg.data.cityscapes import TRAIN_CLASSES
from boxseg.data.split import SplitSpec
from boxseg.engine import TrainConfig
from boxseg.evaluate import EvalOptions, run_eval
from boxseg.gen_logits import GenLogitsOptions, gen_logits
from boxseg.io import write_image, write_label_png
from boxseg.models import ModelSpec
from boxseg.primary_options import CorrectionOptions, PrimaryOptions, WeakOptions
from boxseg.train_anc import AncOptions, train_anc
from boxseg.train_primary import train_primary

CLASSES = TRAIN_CLASSES  # Cityscapes' 19 train classes, none of them a background class
STUFF = (10, 2, 1, 0)  # the bands, top to bottom: sky, building, sidewalk, road
OBJECTS = tuple(k for k in range(len(CLASSES)) if k not in STUFF)
STAGES = (
    "train-anc",
    "train-anc --weak-boxes",
    "gen-logits",
    "train-primary store",
    "train-primary online",
    "train-anc half",
    "gen-logits half",
    "train-primary conv",
    "eval primary",
    "eval ancillary",
)
SYNC_WARNING = "synchronizing"  # in torch's sync-debug warnings: "called a synchronizing ..."
DRY_RUN = {"size": "256x128", "boxes": 20, "crop": 64, "batch_size": 2, "steps": 3}
DRY_RUN |= {"num_f": 4, "num_w": 4, "num_val": 2, "backbone": "resnet18", "heads": 32}


# ------------------------------------------------------------------------------------ the data


def draw_mask(rng: np.random.Generator, width: int, height: int, n_boxes: int) -> np.ndarray:
    """A class-index mask: four horizontal stuff bands, then `n_boxes - 4` small objects
    (rectangles and ellipses) of the other classes, one per cell of a grid and inside it, so
    each is its own connected component: about `n_boxes` components in all."""
    mask = np.zeros((height, width), np.uint8)
    edges = np.linspace(0, height, len(STUFF) + 1).astype(int)
    for k, cls in enumerate(STUFF):
        mask[edges[k] : edges[k + 1]] = cls
    n_obj = max(n_boxes - len(STUFF), 0)
    if n_obj == 0:
        return mask
    cols = math.ceil(math.sqrt(n_obj * width / height))
    rows = math.ceil(n_obj / cols)
    cw, ch = width / cols, height / rows
    for cell in rng.choice(rows * cols, n_obj, replace=False):
        r, c = divmod(int(cell), cols)
        w, h = rng.uniform(0.3, 0.7) * cw, rng.uniform(0.3, 0.7) * ch
        x = c * cw + rng.uniform(0.1 * cw, 0.9 * cw - w)
        y = r * ch + rng.uniform(0.1 * ch, 0.9 * ch - h)
        cls = int(rng.choice(OBJECTS))
        if rng.random() < 0.5:
            cv2.rectangle(mask, (int(x), int(y)), (int(x + w), int(y + h)), cls, -1)
        else:
            centre, axes = (int(x + w / 2), int(y + h / 2)), (int(w / 2), int(h / 2))
            cv2.ellipse(mask, centre, axes, 0.0, 0, 360, cls, -1)
    return mask


def paint_image(rng: np.random.Generator, mask: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """An RGB image whose colours follow the mask (each class its colour, shifted per image),
    blurred a little and noisy, so the nets have something to learn."""
    image = palette[mask].astype(np.float32) + rng.normal(0, 20, 3)
    image = cv2.GaussianBlur(image, (5, 5), 0)
    image += rng.normal(0, 10, image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_dataset(
    root: Path, width: int, height: int, n_boxes: int, counts: dict[str, int], seed: int = 0
) -> dict:
    """The folder-layout set under `root` (`counts`: how many F, W and val images); returns
    what it holds, with the boxes an image it came to (boxes_from_mask, min area 16)."""
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 256, (len(CLASSES), 3)).astype(np.uint8)
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("".join(f"{c}\n" for c in CLASSES))
    coco: dict = {"images": [], "annotations": []}
    coco["categories"] = [{"id": k, "name": c} for k, c in enumerate(CLASSES)]
    splits: dict[str, list[str]] = {"train": [], "val": []}
    box_counts = []
    for kind, n in counts.items():
        for j in range(n):
            stem = f"{kind}{j:03d}"
            mask = draw_mask(rng, width, height, n_boxes)
            write_image(root / "images" / f"{stem}.png", paint_image(rng, mask, palette))
            if kind != "w":  # W: boxes only; F and val: masks as well
                write_label_png(root / "masks" / f"{stem}.png", mask)
            boxes, labels = boxes_from_mask(mask, len(CLASSES), min_area=16)
            box_counts.append(len(boxes))
            image_no = len(coco["images"])
            coco["images"].append(
                {"id": image_no, "file_name": f"{stem}.png", "width": width, "height": height}
            )
            for (x1, y1, x2, y2), label in zip(boxes.tolist(), labels.tolist(), strict=True):
                coco["annotations"].append(
                    {
                        "id": len(coco["annotations"]),
                        "image_id": image_no,
                        "category_id": int(label),
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                    }
                )
            splits["val" if kind == "val" else "train"].append(stem)
    for split, stems in splits.items():
        (root / f"{split}.txt").write_text("".join(f"{s}\n" for s in stems))
    (root / "boxes.json").write_text(json.dumps(coco))
    return {
        "size": f"{width}x{height}",
        "images": dict(counts),
        "boxes_per_image": float(np.mean(box_counts)),
        "boxes_min_max": [int(min(box_counts)), int(max(box_counts))],
    }


# ------------------------------------------------------------------------- measuring a stage


def rss_peak_mib() -> float:
    """This process's peak resident memory since the last reset_rss_peak (VmHWM), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the whole run's


def reset_rss_peak() -> bool:
    """Start VmHWM over (Linux: 5 into /proc/self/clear_refs); False where it cannot."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


@dataclass
class LoopClock:
    """Wraps engine.fit where the trainers call it, to time their steps but the first and the
    last (from the batch request of the second to that of the last; to fit's return with no
    step between) and count the images each batch holds; with `profile_syncs`, counts the
    synchronising CUDA calls of `window` steps of the next fit (torch's sync debug mode)."""

    cuda: bool
    profile_syncs: bool = False
    window: int = 10
    steps: int = 0
    images: int = 0  # in the timed steps
    timed_steps: int = 0
    seconds: float = 0.0
    syncs: dict | None = None
    left_out: str = "the first"  # the steps the rates leave out, for the JSON's rates_over
    _t1: float | None = None
    _t2: float | None = None  # when the last step asked for its batch
    _profiled: tuple[int, int] | None = None
    _saved: dict = field(default_factory=dict)

    def __enter__(self) -> LoopClock:
        for module in (boxseg.train_anc, boxseg.train_primary):
            self._saved[module] = module.fit
            module.fit = self._wrap(module.fit)
        return self

    def __exit__(self, *exc) -> None:
        for module, real in self._saved.items():
            module.fit = real
        if self.cuda:
            torch.cuda.set_sync_debug_mode(0)

    def _wrap(self, real: Callable) -> Callable:
        signature = inspect.signature(real)

        def fit(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            iters = int(bound.arguments["iters"])
            bound.arguments["next_batch"] = self._counted(bound.arguments["next_batch"], iters)
            if not self._profiled:
                result = real(*bound.args, **bound.kwargs)
            else:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")  # every sync, not once per place
                    result = real(*bound.args, **bound.kwargs)
                self.syncs = sync_report(caught, self._profiled)
                for w in caught:  # the other warnings, shown as they would have been
                    if SYNC_WARNING not in str(w.message):
                        warnings.showwarning(w.message, w.category, w.filename, w.lineno)
            if self.cuda:
                torch.cuda.synchronize()
            self.steps = iters
            end = self._t2 if self._t2 is not None else time.perf_counter()
            self.seconds = end - self._t1 if self._t1 else float("nan")
            return result

        return fit

    def _counted(self, next_batch: Callable, iters: int) -> Callable:
        first = 1 if iters > 1 else 0  # the first step is left out when there is another
        last = iters - 1 if iters - 1 > first else None  # so is the last, when a step is between
        self._t2 = None
        self.left_out = "the first and the last" if last is not None else "the first"
        if self.profile_syncs and self.cuda and iters >= 3:
            end = iters - 1  # the last step saves the run: not a training step's work
            self._profiled = (max(end - self.window, first + 1), end)

        def counted(step: int) -> dict:
            if step == first:
                if self.cuda:
                    torch.cuda.synchronize()
                self._t1 = time.perf_counter()
            if step == last:  # the clock stops: the last step, the save and checks after it
                if self.cuda:
                    torch.cuda.synchronize()
                self._t2 = time.perf_counter()
            if self._profiled and step == self._profiled[0]:
                torch.cuda.set_sync_debug_mode("warn")
            if self._profiled and step == self._profiled[1]:
                torch.cuda.set_sync_debug_mode(0)
            batch = next_batch(step)
            if step >= first and (last is None or step < last):
                self.timed_steps += 1
                self.images += sum(
                    int(part["image"].shape[0]) for part in batch.values() if part is not None
                )
            return batch

        return counted


def sync_report(caught: list, window: tuple[int, int]) -> dict:
    """The synchronising calls torch warned about in the profiled steps: how many, per step,
    and the places (file:line) they came from, most frequent first."""
    where = Counter(
        f"{Path(w.filename).name}:{w.lineno}" for w in caught if SYNC_WARNING in str(w.message)
    )
    total, steps = sum(where.values()), window[1] - window[0]
    return {
        "steps": [window[0] + 1, window[1]],  # 1-based, inclusive
        "count": total,
        "per_step": total / steps,
        "where": dict(where.most_common(8)),
    }


def measure(name: str, fn: Callable[[], int], cuda: bool, clock: LoopClock | None) -> dict:
    """Run one stage (fn returns the images it went through, for gen-logits and eval) and
    return its row: steps, rates, peaks and seconds."""
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rss_reset = reset_rss_peak()
    start = time.perf_counter()
    images = fn()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    row: dict = {"stage": name, "seconds": seconds}
    if clock is not None:  # a trainer: its steps but the first and the last
        row |= {
            "steps": clock.steps,
            "rates_over": f"{clock.timed_steps} steps (all but {clock.left_out})",
            "steps_per_s": clock.timed_steps / clock.seconds,
            "images_per_s": clock.images / clock.seconds,
        }
        if clock.syncs is not None:
            row["syncs"] = clock.syncs
    else:  # gen-logits, eval: one step an image, over the whole call
        row |= {
            "steps": images,
            "rates_over": "the whole stage, one step an image",
            "steps_per_s": images / seconds,
            "images_per_s": images / seconds,
        }
    row["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    row["peak_gpu_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30 if cuda else None
    row["peak_rss_mib"] = rss_peak_mib()
    row["peak_rss_is_the_stage_s"] = rss_reset
    return row


# ---------------------------------------------------------------------------- the stages


def default_workers(cuda: bool) -> int:
    """DataLoader workers: on CUDA 8 (at most the cores), so 2048x1024 PNGs keep up; on the CPU
    none (the samples are read in the training process, which the peak RSS then includes)."""
    return min(8, os.cpu_count() or 1) if cuda else 0


def stage_functions(args: argparse.Namespace, data: Path, work: Path, device: str) -> dict:
    """name -> a callable running that stage (returning the images it went through)."""
    cuda = device == "cuda"
    width, height = (int(v) for v in args.size.split("x"))
    cfg = TrainConfig(
        iters=args.steps,
        batch_size=args.batch_size,
        crop=min(args.crop, height),
        device=device,
        amp=args.amp or ("bf16" if cuda else "off"),
        channels_last=cuda if args.channels_last is None else args.channels_last,
        workers=default_workers(cuda) if args.workers is None else args.workers,
        log_every=args.log_every,
        checkpoint_every=0,
        overwrite=True,
    )
    heads = args.heads
    model = ModelSpec(args.backbone, 16, heads, heads, min(48, heads))
    split = SplitSpec("train")  # the folder layout: F = the images with masks, W = the rest
    anc, half = work / "anc", work / "anc_half"
    store, half_store = str(work / "w.zarr"), str(work / "w_half.zarr")
    gen_workers = None if cuda else 0
    n_w, n_val = args.num_w, args.num_val

    def anc_opts(out: Path, **kw) -> AncOptions:
        return AncOptions(data, out, split, model, cfg, val_split=None, **kw)

    def primary(out: str, weak: WeakOptions, mode: str = "none") -> None:
        opts = PrimaryOptions(data, work / out, split, model, cfg, weak, CorrectionOptions(mode))
        train_primary(replace(opts, val_split=None), quiet=True)

    def logits(model_pt: Path, out: str, dtype: str) -> int:
        opts = GenLogitsOptions(data, out, split, model_pt, dtype=dtype, device=device)
        gen_logits(replace(opts, workers=gen_workers, overwrite=True), quiet=True)
        return n_w

    def evaluate(model_pt: Path) -> int:
        run_eval(EvalOptions(data, "val", model_pt, device=device), quiet=True)
        return n_val

    return {
        "train-anc": lambda: train_anc(anc_opts(anc), quiet=True),
        "train-anc --weak-boxes": lambda: train_anc(
            anc_opts(work / "anc_weak", weak_boxes=WeakBoxLoss(enabled=True)), quiet=True
        ),
        "gen-logits": lambda: logits(anc / "model.pt", store, "float16"),
        "train-primary store": lambda: primary("p_store", WeakOptions(logits=store)),
        "train-primary online": lambda: primary(
            "p_online", WeakOptions(anc_model=anc / "model.pt")
        ),
        "train-anc half": lambda: train_anc(anc_opts(half, full_fraction=0.5), quiet=True),
        "gen-logits half": lambda: logits(half / "model.pt", half_store, "int8"),
        "train-primary conv": lambda: primary(
            "p_conv", WeakOptions(logits=half_store, anc_model=half / "model.pt"), "conv"
        ),
        "eval primary": lambda: evaluate(work / "p_store" / "model.pt"),
        "eval ancillary": lambda: evaluate(anc / "model.pt"),
    }


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(rows: list[dict]) -> str:
    """The rows as one Markdown table."""
    lines = [
        "| stage | steps | steps/s | images/s | peak GPU (GiB) | peak RSS (MiB) | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = (
            r["stage"],
            str(r["steps"]),
            fmt(r["steps_per_s"]),
            fmt(r["images_per_s"]),
            fmt(r["peak_gpu_gib"]),
            fmt(r["peak_rss_mib"], 0),
            fmt(r["seconds"], 1),
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU (< 1 minute)")
    ap.add_argument("--size", default="2048x1024", help="WIDTHxHEIGHT of the generated images")
    ap.add_argument("--boxes", type=int, default=150, help="boxes an image (about)")
    ap.add_argument("--num-f", type=int, default=16)
    ap.add_argument("--num-w", type=int, default=16)
    ap.add_argument("--num-val", type=int, default=4)
    ap.add_argument("--crop", type=int, default=769)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=30, help="steps with W a trainer (conv: +1/3)")
    ap.add_argument("--backbone", default="resnet50")
    ap.add_argument("--heads", type=int, default=256, help="ASPP and decoder channels")
    ap.add_argument("--amp", choices=("off", "bf16", "fp16"), help="default: bf16 on CUDA")
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    ap.add_argument("--workers", type=int, help="DataLoader workers (default: 8 on CUDA, 0)")
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--profile-syncs", action="store_true", help="CUDA: count syncs a step")
    ap.add_argument("--only", help="comma-separated stages to run (with those they need)")
    ap.add_argument("--work", type=Path, help="folder for the data and runs (default: a temp)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.dry_run:
        for key, value in DRY_RUN.items():
            setattr(args, key, value)
        args.device = "cpu"
    return args


NEEDS = {  # what a stage reads that an earlier stage writes
    "gen-logits": ("train-anc",),
    "train-primary store": ("gen-logits",),
    "train-primary online": ("train-anc",),
    "gen-logits half": ("train-anc half",),
    "train-primary conv": ("gen-logits half",),
    "eval primary": ("train-primary store",),
    "eval ancillary": ("train-anc",),
}


def chosen_stages(only: str | None) -> list[str]:
    """The stages to run, in order: all, or those named and what they need."""
    if not only:
        return list(STAGES)
    wanted = {s.strip() for s in only.split(",")}
    unknown = wanted - set(STAGES)
    if unknown:
        raise SystemExit(f"--only: unknown stage(s) {sorted(unknown)}; choose from {STAGES}")
    todo = list(wanted)
    while todo:
        for need in NEEDS.get(todo.pop(), ()):
            if need not in wanted:
                wanted.add(need)
                todo.append(need)
    return [s for s in STAGES if s in wanted]


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here (--dry-run runs on the CPU)")
    cuda = args.device == "cuda"
    if args.profile_syncs and not cuda:
        print("--profile-syncs: not available on the CPU (torch's sync debug mode is CUDA's)")
    os.environ.setdefault("BOXSEG_QUIET", "1")  # no progress bars between the rows
    work = args.work or Path(tempfile.mkdtemp(prefix="boxseg-gpu-check-"))
    width, height = (int(v) for v in args.size.split("x"))
    t0 = time.perf_counter()
    try:
        counts = {"f": args.num_f, "w": args.num_w, "val": args.num_val}
        data_info = write_dataset(work / "data", width, height, args.boxes, counts)
        data_info["seconds"] = time.perf_counter() - t0
        print(
            f"data: {args.size}, {counts}, {data_info['boxes_per_image']:.1f} boxes an image "
            f"({data_info['seconds']:.1f} s to write)",
            flush=True,
        )
        functions = stage_functions(args, work / "data", work, args.device)
        rows = []
        for name in chosen_stages(args.only):
            trainer = name.startswith("train-")
            profile = args.profile_syncs and name.startswith("train-primary")
            clock = LoopClock(cuda, profile, args.log_every) if trainer else None
            if clock is not None:
                with clock:
                    row = measure(name, functions[name], cuda, clock)
            else:
                row = measure(name, functions[name], cuda, None)
            rows.append(row)
            print(f"{name}: {row['seconds']:.1f} s", file=sys.stderr, flush=True)
        device_name = torch.cuda.get_device_name() if cuda else "cpu"
        total = time.perf_counter() - t0
        amp = args.amp or ("bf16" if cuda else "off")
        print(
            f"\n{device_name}, torch {torch.__version__}, {args.backbone}, crop {args.crop}, "
            f"batch {args.batch_size}, trainers' amp {amp}"
        )
        print(table(rows))
        for row in rows:
            if "syncs" in row:
                s, (first, last) = row["syncs"], row["syncs"]["steps"]
                print(
                    f"{row['stage']}: {s['count']} synchronising calls in steps {first}-{last} "
                    f"({s['per_step']:.1f} a step): {s['where']}"
                )
        print(f"total {total:.0f} s")
        result = {
            "device": device_name,
            "torch": torch.__version__,
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "data": data_info,
            "stages": rows,
            "total_s": total,
        }
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
        return result
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
