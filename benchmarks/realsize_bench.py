"""Real size without surprises (issue 41): peak memory of the box-heavy stages at Cityscapes size
with 5 and with 150 boxes an image, and a crop's store read against the whole image's.

On the CPU, at 2048x1024 images (19 classes, no background class, as Cityscapes), crops of 769
and batch 2, each figure is the peak process memory (`ru_maxrss`) of a fresh child process that
runs one thing through boxseg's own API:

- (a) weak-step: one `train-anc --weak-boxes` step on a W batch: the ancillary net's forward on
  the crops and their box rasters, the box constraint's bias as train-anc adds it, the weak-box
  terms (`box_losses.BoxTerms`) and the backward pass (the F half of a real step is left out:
  it does not depend on the boxes);
- (b) prior-batch: the box constraint with `--box-prior 2` applied to the batch's 2 x K x 769 x
  769 logits, as train-primary's W targets apply it (`weak_targets.Constrained`);
- (c) rank: `rank` (rank.run_rank) of a box-fill store (written by gen-logits) of one W image;
- (d) eval: `eval` (evaluate.run_eval) of an ancillary model (resnet18, small heads) on one
  image with its boxes, box constraint on with `--box-prior 2`.

The batches are what train-anc's W loader gives (`OnlineWeakTrainSet`, scale 1, seeded crops).
Boxes have random sizes and places (seeded). Beside each peak, the baseline: the peak of a child
that imports the same modules and builds the same inputs, then stops (`--baseline inline` reads
it in the measuring child just before the stage runs instead: half the processes). Also (e):
the cells under a 769x769 crop (`LogitsStore.read(i, rows, cols)`, the cells training reads)
against the whole image's cells, from a 2048x1024 stride-4 float16 store, median of `--repeats`
reads in one process, from the ancillary net's store and from the box-fill one.

`--code DIR` (repeatable, `LABEL=DIR`) runs the same children with PYTHONPATH=DIR, so versions
of boxseg compare in one table; every child runs with OMP_NUM_THREADS=1, one at a time. A stage
a version cannot run reads "n/a" with the reason.

    python benchmarks/realsize_bench.py --code before=/work/before41 --code after=. \
        --json realsize.json
    python benchmarks/realsize_bench.py --size 256x128 --crop 96 --boxes 2,6   # a quick look
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
CHECKOUT = HERE.parents[1]
CLASSES = (  # Cityscapes' 19 train classes: every one gets boxes, none is a background
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
)
STAGES = {
    "weak-step": "(a) train-anc --weak-boxes step",
    "prior-batch": "(b) --box-prior 2 W batch",
    "rank": "(c) rank, one W image",
    "eval": "(d) eval, one image, --box-prior 2",
}
MODEL = ("resnet18", 16, 16, 16, 8)  # ModelSpec(backbone, output stride, aspp, decoder, skip)
W_ID, EVAL_ID, F_ID = "w0", "e0", "f0"
RESULT = "RESULT "  # the child's last stdout line: RESULT {json}
BASELINES = {
    "child": "a child that imports and builds the inputs only",
    "inline": "the same child just before the stage",
}
WATCH_S = 0.05  # the parent's memory watch: how often it reads a child's resident memory


# ---------------------------------------------------------------- the parent: data, children


def write_dataset(root: Path, width: int, height: int, n_boxes: int, seed: int) -> None:
    """A folder-layout dataset: W image w0 and F image f0 (a small one, with its mask: rank's
    class weights) in split train, e0 (mask and boxes) in split val; `n_boxes` boxes of random
    sizes (16 pixels to half the image's side, log-uniform) and classes on w0 and e0."""
    import cv2

    root.mkdir(parents=True)
    (root / "images").mkdir()
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("".join(f"{c}\n" for c in CLASSES))
    (root / "train.txt").write_text(f"{F_ID}\n{W_ID}\n")
    (root / "val.txt").write_text(f"{EVAL_ID}\n")
    coco: dict = {"images": [], "annotations": [], "categories": []}
    coco["categories"] = [{"id": k, "name": c} for k, c in enumerate(CLASSES)]
    sizes = {W_ID: (width, height), EVAL_ID: (width, height), F_ID: (min(width, 128), 64)}
    for n, (image_id, (w, h)) in enumerate(sizes.items()):
        rng = np.random.default_rng((seed, n_boxes, n))
        small = rng.integers(0, 256, (max(h // 32, 2), max(w // 32, 2), 3)).astype(np.uint8)
        image = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
        image = np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
        cv2.imwrite(str(root / "images" / f"{image_id}.png"), image)
        count = n_boxes if image_id != F_ID else 3
        lo = math.log(16)
        bw = np.exp(rng.uniform(lo, math.log(max(w / 2, 17)), count))
        bh = np.exp(rng.uniform(lo, math.log(max(h / 2, 17)), count))
        x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
        labels = rng.integers(0, len(CLASSES), count)
        coco["images"].append({"id": n, "file_name": f"{image_id}.png", "width": w, "height": h})
        for j in range(count):
            box = [round(float(v), 2) for v in (x[j], y[j], bw[j], bh[j])]
            coco["annotations"].append(
                {
                    "id": len(coco["annotations"]),
                    "image_id": n,
                    "category_id": int(labels[j]),
                    "bbox": box,
                }
            )
        if image_id != W_ID:  # masks: the boxes painted, the largest first; void elsewhere
            mask = np.full((h, w), 255, np.uint8)
            for j in np.argsort(-(bw * bh), kind="stable"):
                x1, y1 = int(x[j]), int(y[j])
                mask[y1 : int(y[j] + bh[j]), x1 : int(x[j] + bw[j])] = labels[j]
            cv2.imwrite(str(root / "masks" / f"{image_id}.png"), mask)
    (root / "boxes.json").write_text(json.dumps(coco))


def _rss_mb(pid: int) -> float | None:
    """A live process's resident memory (Linux /proc; None where it cannot be read)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def run_child(task: dict, code: Path, limit_mb: float, timeout_s: float) -> dict:
    """One fresh child (PYTHONPATH=code, one thread) running `task`; its RESULT, or {"error":
    why} when it failed, ran past `timeout_s` or held more than `limit_mb` (then killed: the
    machine's other work must keep its memory)."""
    env = dict(os.environ, PYTHONPATH=str(code), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, str(HERE), "--child", json.dumps(task)]
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=task["workdir"])
        killed = None
        while proc.poll() is None:
            rss = _rss_mb(proc.pid)
            if rss is not None and rss > limit_mb:
                killed = f"held over --limit-mb {limit_mb:.0f} MB (killed)"
            elif time.perf_counter() - t0 > timeout_s:
                killed = f"ran past --timeout {timeout_s:.0f} s (killed)"
            if killed:
                proc.kill()
                proc.wait()
                break
            time.sleep(WATCH_S)
        out.seek(0)
        err.seek(0)
        lines = [x for x in out.read().splitlines() if x.startswith(RESULT)]
        tail = [x for x in err.read().splitlines() if x.strip()]
    if killed:
        return {"error": killed}
    if proc.returncode != 0 or not lines:
        return {"error": (tail or [f"exit status {proc.returncode}"])[-1][:300]}
    return json.loads(lines[-1][len(RESULT) :]) | {"wall_s": time.perf_counter() - t0}


def code_label(code: Path) -> str:
    """The version's commit, with '+changes' when its tracked files differ from it."""
    try:
        head = subprocess.run(
            ["git", "-C", str(code), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(code), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"
    return head + ("+changes" if dirty else "")


def parse_code(text: str) -> tuple[str, Path]:
    """'LABEL=DIR' or 'DIR' (labelled by its folder name)."""
    label, _, path = text.rpartition("=")
    code = Path(path).resolve()
    if not (code / "boxseg" / "__init__.py").is_file():
        raise SystemExit(f"--code {text}: no boxseg package in {code}")
    return label or code.name, code


def measure_version(args, label: str, code: Path, datasets: dict, work: Path, say) -> dict:
    """Every figure of one version: the setup child (model.pt, the stores, the read times),
    then per stage and box count a baseline child (unless inline) and a measuring child."""
    home = work / label
    home.mkdir()
    common = {"code": str(code), "workdir": str(home), "crop": args.crop, "batch": args.batch_size}
    common |= {"seed": args.seed}
    setup = common | {"stage": "setup", "datasets": {str(k): str(v) for k, v in datasets.items()}}
    setup |= {"repeats": args.repeats}
    say(f"{label}: setup (model, box-fill and ancillary stores, reads)")
    done = run_child(setup, code, args.limit_mb, args.timeout)
    out: dict = {"label": label, "code": str(code), "commit": code_label(code), "memory": []}
    out["reads"] = done.get("reads", [])
    out["setup_error"] = done.get("error")
    for stage in STAGES:
        for n in args.boxes:
            row = {"stage": stage, "boxes": n}
            if "error" in done:
                out["memory"].append(row | {"error": f"setup failed: {done['error']}"})
                continue
            task = common | {"stage": stage, "data": str(datasets[n]), "tag": f"{stage}_{n}"}
            task |= {"model": done["model"], "store": done["stores"][str(n)]}
            base = {}
            if args.baseline == "child":
                say(f"{label}: {stage}, {n} boxes: baseline")
                base = run_child(task | {"measure": False}, code, args.limit_mb, args.timeout)
            say(f"{label}: {stage}, {n} boxes")
            got = run_child(task | {"measure": True}, code, args.limit_mb, args.timeout)
            error = got.get("error") or base.get("error")
            if error:
                out["memory"].append(row | {"error": error})
                continue
            baseline = base.get("peak_mb", got["before_mb"])
            row |= {"peak_mb": got["peak_mb"], "baseline_mb": baseline}
            row |= {"stage_mb": got["peak_mb"] - baseline, "inline_baseline_mb": got["before_mb"]}
            row |= {"boxes_seen": got.get("boxes_seen"), "stage_s": got["stage_s"]}
            out["memory"].append(row)
    out["ratios"] = ratios(out["memory"], args.boxes)
    return out


def ratios(rows: list[dict], boxes: list[int]) -> dict:
    """Per stage: the most boxes' peak (and peak - baseline) over the fewest's."""
    lo, hi = min(boxes), max(boxes)
    found = {(r["stage"], r["boxes"]): r for r in rows if "peak_mb" in r}
    out = {}
    for stage in STAGES:
        a, b = found.get((stage, lo)), found.get((stage, hi))
        if a is None or b is None or lo == hi:
            out[stage] = None
            continue
        stage_ratio = b["stage_mb"] / a["stage_mb"] if a["stage_mb"] > 0 else None
        out[stage] = {"peak": b["peak_mb"] / a["peak_mb"], "stage": stage_ratio}
    return out


def _mb(row: dict, key: str) -> str:
    return f"{row[key]:.0f}" if key in row else "n/a"


def _x(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def markdown(result: dict) -> str:
    """The memory table (a row per stage and box count, a 150/5 row per stage; per version its
    peak and peak - baseline), what looks wrong, and the read table."""
    cfg, versions = result["config"], result["versions"]
    lo, hi = min(cfg["boxes"]), max(cfg["boxes"])
    head = ["stage", "boxes an image"]
    for v in versions:
        name = f"{v['label']} ({v['commit']})"
        head += [f"{name} peak MB", f"{name} peak - baseline MB"]
    lines = [
        f"Peak process memory (ru_maxrss of a fresh process; CPU, {cfg['size']} images, "
        f"crops {cfg['crop']}, batch {cfg['batch_size']}, {len(CLASSES)} classes; baseline: "
        f"{BASELINES[cfg['baseline']]})",
        "",
        "| " + " | ".join(head) + " |",
        "|---|---" + "|---:" * (len(head) - 2) + "|",
    ]
    notes = []
    for stage, title in STAGES.items():
        for n in cfg["boxes"]:
            cells = [title, str(n)]
            seen = None
            for v in versions:
                row = next(r for r in v["memory"] if r["stage"] == stage and r["boxes"] == n)
                cells += [_mb(row, "peak_mb"), _mb(row, "stage_mb")]
                seen = seen or row.get("boxes_seen")
                if "error" in row:
                    notes.append(f"- {v['label']}, {title}, {n} boxes: n/a ({row['error']})")
            if seen is not None:
                cells[1] += f" ({', '.join(str(s) for s in seen)} in the crops)"
            lines.append("| " + " | ".join(cells) + " |")
        if lo != hi:
            cells = [title, f"{hi}/{lo}"]
            for v in versions:
                r = v["ratios"][stage]
                cells += [_x(r and r["peak"]), _x(r and r["stage"])]
                if r and r["peak"] > 1.3:
                    notes.append(
                        f"- {v['label']}, {title}: the {hi}-box peak is {r['peak']:.2f}x the "
                        f"{lo}-box peak (over 1.3x)"
                    )
            lines.append("| " + " | ".join(f"**{c}**" for c in cells) + " |")
    if notes:
        lines += ["", *notes]
    lines += [
        "",
        f"Store reads ({cfg['size']} image, stride 4, float16, {len(CLASSES)} classes; median "
        f"of {cfg['repeats']} reads in one process, OMP_NUM_THREADS=1)",
        "",
        "| store | version | crop's cells ms | whole image's cells ms | crop / whole |",
        "|---|---|---:|---:|---:|",
    ]
    for v in versions:
        if v.get("setup_error"):
            lines.append(f"| all | {v['label']} | n/a | n/a | n/a ({v['setup_error']}) |")
        for r in v["reads"]:
            lines.append(
                f"| {r['store']} (crop {r['crop_cells']} cells) | {v['label']} | "
                f"{r['crop_ms']:.2f} | {r['whole_ms']:.2f} | {r['ratio']:.2f} |"
            )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)  # internal: one measurement
    ap.add_argument(
        "--code",
        action="append",
        metavar="[LABEL=]DIR",
        help="a boxseg checkout to measure (repeatable; default: this one)",
    )
    ap.add_argument("--size", default="2048x1024", help="image WIDTHxHEIGHT (2048x1024)")
    ap.add_argument("--crop", type=int, default=769)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--boxes", default="5,150", help="boxes an image, comma separated")
    ap.add_argument("--repeats", type=int, default=20, help="reads timed per store")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--baseline", choices=("child", "inline"), default="child")
    ap.add_argument("--limit-mb", type=float, default=16000, help="kill a child holding more")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds a child may run")
    ap.add_argument("--workdir", type=Path, help="keep the data and stores here (default: temp)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.child:
        return child(json.loads(args.child))
    width, height = (int(v) for v in args.size.lower().split("x"))
    args.boxes = sorted({int(v) for v in args.boxes.split(",")})
    codes = [parse_code(c) for c in args.code or [str(CHECKOUT)]]
    if len({label for label, _ in codes}) != len(codes):
        raise SystemExit("--code: two versions with one label; name them LABEL=DIR")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="realsize_"))
    work.mkdir(parents=True, exist_ok=True)

    def say(text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    try:
        datasets = {n: work / f"data_{n}boxes" for n in args.boxes}
        for n, root in datasets.items():
            if not root.exists():
                write_dataset(root, width, height, n, args.seed)
        versions = [measure_version(args, lab, code, datasets, work, say) for lab, code in codes]
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    config = {
        "size": f"{width}x{height}",
        "crop": args.crop,
        "batch_size": args.batch_size,
        "boxes": args.boxes,
        "repeats": args.repeats,
        "seed": args.seed,
        "baseline": args.baseline,
        "classes": len(CLASSES),
        "model": list(MODEL),
    }
    command = " ".join([Path(sys.executable).name, *sys.argv])
    result = {"config": config, "command": command, "versions": versions}
    print(markdown(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


# ---------------------------------------------------------------- the child: one measurement


def peak_mb() -> float:
    """This process's peak resident memory so far, MB."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes there, KB here


def child(task: dict) -> None:
    """Run one task in this fresh process (`measure` False: stop before the stage) and print
    its RESULT line."""
    import boxseg

    code = Path(task["code"]).resolve()
    if code not in Path(boxseg.__file__).resolve().parents:
        raise SystemExit(f"imported {boxseg.__file__}, not the boxseg of {code}")
    if task["stage"] == "setup":
        print(RESULT + json.dumps(setup(task)), flush=True)
        return
    run, info = PREPARE[task["stage"]](task)
    before = peak_mb()
    t0 = time.perf_counter()
    if task["measure"]:
        run()
    out = info | {"before_mb": before, "peak_mb": peak_mb(), "stage_s": time.perf_counter() - t0}
    print(RESULT + json.dumps(out), flush=True)


def _meta(ds) -> dict:
    """model.pt's meta of the benchmark's ancillary model for dataset `ds`."""
    from boxseg.data.boxes import BoxSpec, box_channels
    from boxseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from boxseg.models import ModelSpec
    from boxseg.run_dir import model_meta

    channels = box_channels(ds.num_classes, ds.background)
    spec = ModelSpec(*MODEL)
    return model_meta("ancillary", spec, ds, BoxSpec(), channels, IMAGENET_MEAN, IMAGENET_STD)


def setup(task: dict) -> dict:
    """model.pt (random weights), per dataset a box-fill store of its W image (gen-logits
    --method box), and for the first an ancillary store (gen-logits --model); then the read
    times of a crop's cells against the whole image's, from both stores of the first."""
    import torch

    from boxseg.checkpoint import save_model
    from boxseg.data.boxes import box_channels
    from boxseg.data.formats import open_dataset
    from boxseg.data.split import SplitSpec
    from boxseg.gen_logits import BoxMethod, GenLogitsOptions, gen_logits
    from boxseg.models import ModelSpec, build_model

    home = Path(task["workdir"])
    datasets = {n: Path(p) for n, p in task["datasets"].items()}
    first = datasets[min(datasets, key=int)]
    ds = open_dataset(first)
    torch.manual_seed(task["seed"])
    channels = box_channels(ds.num_classes, ds.background)
    model = build_model(ModelSpec(*MODEL), ds.num_classes, channels)
    model_path = home / "model.pt"
    save_model(model_path, model, _meta(ds))
    stores = {}
    for n, data in datasets.items():
        stores[n] = str(home / f"boxfill_{n}.zarr")
        opts = GenLogitsOptions(data, stores[n], SplitSpec("train"), box_method=BoxMethod("box"))
        gen_logits(replace_workers(opts), quiet=True)
    anc = str(home / "anc.zarr")
    opts = GenLogitsOptions(first, anc, SplitSpec("train"), model_path=model_path, batch_size=1)
    gen_logits(replace_workers(opts), quiet=True)
    first_key = min(datasets, key=int)
    reads = [
        read_times("ancillary net's logits", anc, task),
        read_times("box-fill", stores[first_key], task),
    ]
    return {"model": str(model_path), "stores": stores, "reads": reads}


def replace_workers(opts):
    """gen-logits options on the CPU with no reader processes (one thing at a time)."""
    import dataclasses

    return dataclasses.replace(opts, workers=0, device="cpu")


def read_times(name: str, location: str, task: dict) -> dict:
    """Median time of reading the cells under seeded training crops (as the W loader finds
    them: `cells.crop_coords`, `cells_spanned`) against reading the whole image's cells, the
    two interleaved, after one read to warm the file cache."""
    from boxseg.cells import cells_spanned, crop_coords
    from boxseg.data.torchsets import AugmentSpec
    from boxseg.data.transforms import window
    from boxseg.store import LogitsStore

    store = LogitsStore.open(location)
    h, w = (int(v) for v in store.sizes[0])
    aug = AugmentSpec(task["crop"], (1.0, 1.0))
    rng = np.random.default_rng(task["seed"])
    store.read(0)
    crop_s, whole_s, shape = [], [], None
    for _ in range(task["repeats"]):
        win = window(h, w, aug.draw(rng, h, w), task["crop"])
        rows, cols = (cells_spanned(c) for c in crop_coords(win, store.stride))
        t0 = time.perf_counter()
        cells = store.read(0, rows, cols)
        t1 = time.perf_counter()
        store.read(0)
        t2 = time.perf_counter()
        crop_s.append(t1 - t0)
        whole_s.append(t2 - t1)
        shape = tuple(cells.shape[-2:])
    crop_ms, whole_ms = statistics.median(crop_s) * 1e3, statistics.median(whole_s) * 1e3
    return {
        "store": name,
        "crop_cells": f"{shape[0]}x{shape[1]}",
        "crop_ms": crop_ms,
        "whole_ms": whole_ms,
        "ratio": crop_ms / whole_ms,
    }


def w_batch(task: dict, ds) -> dict:
    """A collated W batch as train-anc's --weak-boxes loader makes it (`OnlineWeakTrainSet`:
    image, box raster, valid mask, the crop's box evidence): `batch` seeded crops of the W
    image at scale 1."""
    from boxseg.data.boxes import BoxSpec
    from boxseg.data.sampling import collate
    from boxseg.data.torchsets import AugmentSpec
    from boxseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from boxseg.weak_targets import OnlineWeakTrainSet

    aug = AugmentSpec(task["crop"], (1.0, 1.0))
    w_set = OnlineWeakTrainSet(ds, "train", [W_ID], BoxSpec(), aug, IMAGENET_MEAN, IMAGENET_STD)
    return collate([w_set[(0, task["seed"] + k)] for k in range(task["batch"])])


def _boxes_seen(batch: dict) -> list[int]:
    return [int(v) for v in (batch["box_labels"] >= 0).sum(1)]


def prepare_weak_step(task: dict):
    """(a): the W part of a train-anc --weak-boxes step, as train_anc's `step` runs it."""
    import torch

    from boxseg.box_constraint import BoxEvidence, ConstraintRule
    from boxseg.box_losses import BoxTerms, WeakBoxLoss
    from boxseg.data.boxes import box_channels
    from boxseg.data.formats import open_dataset
    from boxseg.models import ModelSpec, build_model

    ds = open_dataset(task["data"])
    batch = w_batch(task, ds)
    torch.manual_seed(task["seed"])
    model = build_model(
        ModelSpec(*MODEL), ds.num_classes, box_channels(ds.num_classes, ds.background)
    )
    model.train()
    rule = ConstraintRule.of(ds.num_classes, ds.background, None)  # train-anc's rule
    terms = BoxTerms(WeakBoxLoss(enabled=True), 1000, ds.background, rule)

    def run() -> None:
        logits = model(batch["image"], batch["boxes"])
        out_w = logits.float() + rule.bias(BoxEvidence.of_batch(batch).to(logits.device))
        loss, _ = terms(out_w, batch, 0)
        loss.backward()

    return run, {"boxes_seen": _boxes_seen(batch)}


def prepare_prior_batch(task: dict):
    """(b): train-primary's W targets with --box-prior 2 on a batch of K x crop x crop logits
    (the rule `rule_of` makes of the ancillary model's meta and the option)."""
    import torch

    from boxseg.box_constraint import BoxConstraint, rule_of
    from boxseg.data.formats import open_dataset
    from boxseg.weak_targets import constrained

    ds = open_dataset(task["data"])
    batch = w_batch(task, ds)
    meta = {
        "kind": "ancillary",
        "class_names": list(ds.class_names),
        "background": ds.background,
        "boxes": {"classes": None},
    }
    rule = rule_of(meta, BoxConstraint(prior=2.0))
    gen = torch.Generator().manual_seed(task["seed"])
    logits = torch.randn(task["batch"], ds.num_classes, task["crop"], task["crop"], generator=gen)
    targets = constrained(lambda b: logits, rule)

    def run() -> None:
        targets(batch)

    return run, {"boxes_seen": _boxes_seen(batch)}


def prepare_rank(task: dict):
    """(c): `boxseg rank` of the box-fill store of the W image."""
    from boxseg.data.split import SplitSpec
    from boxseg.rank import RankOptions, run_rank

    out = Path(task["workdir"]) / f"ranking_{task['tag']}.csv"
    split = SplitSpec("train")
    opts = RankOptions(Path(task["data"]), task["store"], split, out, device="cpu", overwrite=True)

    def run() -> None:
        run_rank(opts, quiet=True)

    return run, {}


def prepare_eval(task: dict):
    """(d): `boxseg eval` of the ancillary model on the one val image with its boxes, box
    constraint on with --box-prior 2, whole image."""
    from boxseg.box_constraint import BoxConstraint
    from boxseg.evaluate import EvalOptions, TestTime, run_eval

    how = TestTime(constraint=BoxConstraint(prior=2.0))
    opts = EvalOptions(Path(task["data"]), "val", Path(task["model"]), test_time=how, device="cpu")

    def run() -> None:
        run_eval(opts, quiet=True)

    return run, {}


PREPARE = {
    "weak-step": prepare_weak_step,
    "prior-batch": prepare_prior_batch,
    "rank": prepare_rank,
    "eval": prepare_eval,
}


if __name__ == "__main__":
    main()
