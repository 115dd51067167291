"""The data path at Cityscapes size: what one training sample and one gen-logits image cost
without the model, i.e. the ceiling a GPU would see.

Generates a Cityscapes-layout set (2048x1024 images, 19 classes, labelIds + instanceIds with
cars and people as instances) and a stride-4 float16 store of smooth random logits for it,
then measures, each in a fresh process (so peak memory is the sample's own):
- per-sample time (median) and peak memory (peak RSS minus RSS before the first sample) of an
  F sample (image, mask; with boxes also the box raster, as train-anc takes it) and a W
  sample (image, stored logits), before (resize the whole image and the full-resolution
  logits, then crop; boxes derived every time) and after (crop first; boxes derived once per
  process; W ships the cells under its crop, resampled on the training device: that cost is
  timed too, on this CPU), with 0 and 2 DataLoader workers;
- the gen-logits data path with a zero-cost stand-in net (a module that returns zeros of the
  right shape): images/s serial (reading in-process, writes in the caller) against the
  pipeline (2 reader processes, a writer thread).

    python benchmarks/datapath_bench.py                # 8 images, crop 768, scale 0.5-2.0
    python benchmarks/datapath_bench.py --json datapath.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

import boxseg.gen_logits as gl
from boxseg.data import box_cache
from boxseg.data.boxes import BoxSpec, rasterize_boxes
from boxseg.data.formats import load_full, open_dataset
from boxseg.data.torchsets import AugmentSpec, FullTrainSet
from boxseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD, Aligned, to_tensor
from boxseg.io import write_image
from boxseg.passes import forward_passes
from boxseg.store import LogitsStore
from boxseg.weak_targets import StoredLogits, WeakTrainSet

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the "before" path: tests/helpers
from tests.helpers.plain_path import resize_then_crop  # noqa: E402

H, W, K, STRIDE = 1024, 2048, 19, 4
BOX_SPEC = BoxSpec(min_area=16)


def write_cityscapes_like(root: Path, n: int, seed: int = 0) -> Path:
    """n 2048x1024 images in Cityscapes' layout: road, sidewalk, buildings, vegetation, sky,
    and a few cars and people as instances; textured so PNGs compress like photos."""
    rng = np.random.default_rng(seed)
    img_dir, gt_dir = root / "leftImg8bit" / "train" / "bench", root / "gtFine" / "train" / "bench"
    img_dir.mkdir(parents=True, exist_ok=True)
    gt_dir.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        label = np.full((H, W), 7, np.uint8)  # road
        label[: H // 3] = 23  # sky
        label[H // 3 : H // 2] = 11  # building
        label[H // 2 : H // 2 + 80, : W // 3] = 21  # vegetation
        label[H // 2 + 80 : H // 2 + 200] = 8  # sidewalk
        inst = label.astype(np.uint16)
        for j in range(6):  # cars, then people
            cls, (bh, bw) = (26, (160, 300)) if j < 4 else (24, (220, 70))
            y, x = int(rng.integers(H // 2, H - bh)), int(rng.integers(0, W - bw))
            label[y : y + bh, x : x + bw] = cls
            inst[y : y + bh, x : x + bw] = cls * 1000 + j
        base = rng.integers(0, 256, (H // 8, W // 8, 3), dtype=np.uint8)
        image = cv2.resize(base, (W, H), interpolation=cv2.INTER_CUBIC)
        image = cv2.add(image, rng.integers(0, 24, (H, W, 3), dtype=np.uint8))
        stem = f"bench_{k:06d}_000019"
        write_image(img_dir / f"{stem}_leftImg8bit.png", image)
        cv2.imwrite(str(gt_dir / f"{stem}_gtFine_labelIds.png"), label)
        cv2.imwrite(str(gt_dir / f"{stem}_gtFine_instanceIds.png"), inst)
    return root


def write_store(root: Path, location: Path) -> None:
    """A stride-4 float16 store of smooth random logits for every image."""
    ds = open_dataset(root)
    ids = ds.ids("train")
    store = LogitsStore.create(location, ids, np.array([[H, W]] * len(ids)), list(ds.class_names),
                               STRIDE, {"method": "bench"})  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    for i in range(len(ids)):
        coarse = torch.randn(1, K, H // 64, W // 64, generator=gen) * 4
        cells = torch.nn.functional.interpolate(coarse, size=(H // STRIDE, W // STRIDE),
                                                mode="bilinear")[0]  # fmt: skip
        store.write_block(i, [cells])


class FullBefore(FullTrainSet):
    """The F sample as it was: the whole image and mask resized, then cropped; with boxes,
    boxes derived again for every sample."""

    def __getitem__(self, key):
        i, rng = key[0], np.random.default_rng(key[1])
        box_cache.clear()
        s = load_full(self.ds, self.split, self.ids[i], self.box_spec, self.with_boxes)
        p = self.aug.draw(rng, *s.size)
        a, _ = resize_then_crop(Aligned(s.image, s.mask, s.boxes, s.labels), p, self.aug.crop)
        c = self.aug.crop
        out = {"image": to_tensor(a.image, self.mean, self.std),
               "mask": torch.from_numpy(a.mask).long()}  # fmt: skip
        if self.with_boxes:
            raster = rasterize_boxes(a.boxes, a.labels, K, c, c, self.ds.background)
            out["boxes"] = torch.from_numpy(raster)
        return out


class WeakBefore(WeakTrainSet):
    """The W sample as it was: the whole store entry resampled to pixels, then to the scale,
    then cropped, in the worker."""

    def __getitem__(self, key):
        i, rng = key[0], np.random.default_rng(key[1])
        image = self.ds.read_image(self.split, self.ids[i])
        j = self.store.index(self.ids[i])
        p, full = self.aug.draw(rng, H, W), self.store.read_full(j)
        a, logits = resize_then_crop(Aligned(image), p, self.aug.crop, full)
        void = torch.isnan(logits).any(0)
        return {
            "image": to_tensor(a.image, self.mean, self.std),
            "logits": logits.nan_to_num(0.0),
            "valid": torch.from_numpy(a.valid) & ~void,
        }


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


KINDS = {"F": "F sample (image + mask: train-primary)",
         "F+boxes": "F sample with boxes (+ box raster: train-anc)",
         "W": "W sample (image + stored logits)"}  # fmt: skip


def make_set(root: Path, store: Path, kind: str, variant: str, crop: int):
    ds = open_dataset(root)
    ids = ds.ids("train")
    aug = AugmentSpec(crop, (0.5, 2.0), hflip=True)
    if kind.startswith("F"):
        cls = FullBefore if variant == "before" else FullTrainSet
        return cls(ds, "train", ids, BOX_SPEC, aug, kind == "F+boxes", IMAGENET_MEAN,
                   IMAGENET_STD)  # fmt: skip
    cls = WeakBefore if variant == "before" else WeakTrainSet
    return cls(ds, "train", ids, str(store), aug, IMAGENET_MEAN, IMAGENET_STD)


def measure_samples(root: Path, store: Path, kind: str, variant: str, workers: int,
                    samples: int, crop: int) -> dict:  # fmt: skip
    """Seconds per sample and peak memory (MB) of one set, in this (fresh) process: with 0
    workers the median over samples (each image read once first, so caches are warm) and
    the growth of peak RSS; with workers, the steady rate over a second pass of persistent
    workers (time only: a worker's RSS counts pages it shares with its parent)."""
    torch.set_num_threads(1)
    dataset = make_set(root, store, kind, variant, crop)
    n_ids = len(dataset.ids)
    keys = [(k % n_ids, 1000 + k) for k in range(samples)]
    r = {"kind": kind, "variant": variant, "workers": workers}
    if workers == 0:
        base = rss_mb()
        times = []
        for key in keys:
            t = time.perf_counter()
            item = dataset[key]
            times.append(time.perf_counter() - t)
        r |= {"seconds": statistics.median(times[n_ids:] or times), "peak_mb": peak_mb() - base}
        if kind == "W" and variant == "after":  # what the training device then does, here
            batch = torch.utils.data.default_collate([item])
            times = []
            for _ in range(5):
                t = time.perf_counter()
                StoredLogits(False)(batch)
                times.append(time.perf_counter() - t)
            r["device_resample_seconds_cpu"] = statistics.median(times)
        return r
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=workers,
                                         sampler=keys, prefetch_factor=2,
                                         persistent_workers=True)  # fmt: skip
    for _ in loader:  # first pass: workers start, each reads its images once
        pass
    t = time.perf_counter()
    for _ in loader:
        pass
    return r | {"seconds": (time.perf_counter() - t) / len(keys), "peak_mb": None}


class ZeroNet(torch.nn.Module):
    """A zero-cost stand-in for the ancillary net: zeros of the right shape."""

    def forward(self, x: torch.Tensor, boxes: torch.Tensor | None = None) -> torch.Tensor:
        return x.new_zeros(x.shape[0], K, *x.shape[-2:])


def measure_gen_logits(root: Path, out: Path, workers: int, writer_depth: int,
                       batch_size: int) -> dict:  # fmt: skip
    """Images/s of gen-logits' data path (reading, boxes, box rasters and bias, pooling,
    compression, writing) with the zero-cost net, in this (fresh) process."""
    ds = open_dataset(root)
    ids = ds.ids("train")
    meta = {"kind": "ancillary", "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
            "class_names": list(ds.class_names), "background": ds.background,
            "boxes": BOX_SPEC.to_dict()}  # fmt: skip
    store = LogitsStore.create(out, ids, np.array([[H, W]] * len(ids)), list(ds.class_names),
                               STRIDE, {"method": "bench"})  # fmt: skip
    todo = list(range(len(ids)))
    dev = torch.device("cpu")
    passes = forward_passes(store.sizes, todo, batch_size, dev)
    reader = gl.PassReader(ds, "train", store, passes, meta, BOX_SPEC)
    gl.WRITER_DEPTH = writer_depth
    t = time.perf_counter()
    gl._fill(store, todo, gl.net_logits(ZeroNet(), dev, reader, todo, workers), True, "bench")
    seconds = time.perf_counter() - t
    assert LogitsStore.open(out).done_mask().all()
    return {"workers": workers, "writer_thread": writer_depth > 0, "images": len(ids),
            "images_per_s": len(ids) / seconds}  # fmt: skip


def in_fresh_process(args: list[str]) -> dict:
    """Run this script's --one mode in a new interpreter and return its JSON line."""
    out = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True,
                         text=True)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=8, help="images of the sample measurements")
    ap.add_argument("--gen-images", type=int, default=32, help="images of the gen-logits runs")
    ap.add_argument("--samples", type=int, default=24, help="samples per measurement")
    ap.add_argument("--crop", type=int, default=768)
    ap.add_argument("--repeats", type=int, default=3, help="fresh processes per measurement")
    ap.add_argument("--work", type=Path, help="keep the generated data here (default: temp)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--only-gen", action="store_true", help="the gen-logits measurement alone")
    ap.add_argument("--one", nargs="+", help=argparse.SUPPRESS)  # internal: one measurement
    args = ap.parse_args()
    if args.one:
        what, root, path, *rest = args.one
        if what == "sample":
            kind, variant, workers = rest
            r = measure_samples(Path(root), Path(path), kind, variant, int(workers),
                                args.samples, args.crop)  # fmt: skip
        else:
            workers, depth, batch = (int(v) for v in rest)
            r = measure_gen_logits(Path(root), Path(path), workers, depth, batch)
        print(json.dumps(r))
        return

    work = args.work or Path(tempfile.mkdtemp(prefix="datapath-"))
    root, store = work / "cs", work / "w.zarr"
    if not (store / "zarr.json").is_file():
        t = time.perf_counter()
        write_cityscapes_like(root, args.images)
        write_store(root, store)
        print(f"generated {args.images} images {W}x{H} and a stride-{STRIDE} float16 store "
              f"in {time.perf_counter() - t:.0f} s ({work})")  # fmt: skip
    cores = os.cpu_count()
    print(f"{cores} cores, torch {torch.__version__}, crop {args.crop}, scale 0.5-2.0")

    rows = []
    for workers in () if args.only_gen else (0, 2):
        for variant in ("before", "after"):
            for kind in KINDS:
                runs = [in_fresh_process(["--samples", str(args.samples), "--crop",
                                          str(args.crop), "--one", "sample", str(root),
                                          str(store), kind, variant, str(workers)])
                        for _ in range(args.repeats)]  # fmt: skip
                r = runs[0] | {"seconds": statistics.median(x["seconds"] for x in runs)}
                if workers == 0:
                    r["peak_mb"] = statistics.median(x["peak_mb"] for x in runs)
                if "device_resample_seconds_cpu" in r:
                    r["device_resample_seconds_cpu"] = statistics.median(
                        x["device_resample_seconds_cpu"] for x in runs)  # fmt: skip
                rows.append(r)
                mem = "" if r["peak_mb"] is None else f", peak +{r['peak_mb']:5.0f} MB"
                extra = ""
                if "device_resample_seconds_cpu" in r:
                    extra = (f" (+ {r['device_resample_seconds_cpu'] * 1000:.1f} ms to resample "
                             "it to pixels, on this CPU, in the training process)")  # fmt: skip
                print(f"{KINDS[kind]:<46} {variant:<6} {workers} workers: "
                      f"{r['seconds'] * 1000:7.1f} ms{mem}{extra}")  # fmt: skip

    def pick(kind, variant, workers):
        return next(r for r in rows if (r["kind"], r["variant"], r["workers"]) ==
                    (kind, variant, workers))  # fmt: skip

    ratios = {}
    for variant in () if args.only_gen else ("before", "after"):
        for workers in (0, 2):
            f, w = pick("F", variant, workers), pick("W", variant, workers)
            ratios[f"{variant}_{workers}w"] = {"w_over_f_time": w["seconds"] / f["seconds"]}
            line = f"{variant}, {workers} workers: W/F time {w['seconds'] / f['seconds']:.2f}x"
            if workers == 0:
                mem = w["peak_mb"] / max(f["peak_mb"], 1.0)
                ratios[f"{variant}_{workers}w"]["w_over_f_memory"] = mem
                line += f", W/F peak memory {mem:.2f}x"
            print(line)

    gen_root = work / "cs_gen"  # more images: the pipeline's start-up is not what is measured
    if not (gen_root / "leftImg8bit").is_dir():
        write_cityscapes_like(gen_root, args.gen_images, seed=1)
    gen = []
    for workers, depth in ((0, 0), (0, 2), (2, 2)):
        runs = [in_fresh_process(["--one", "gen", str(gen_root),
                                  str(work / f"g{workers}{depth}_{k}.zarr"), str(workers),
                                  str(depth), "2"])
                for k in range(args.repeats)]  # fmt: skip
        r = runs[0] | {"images_per_s": statistics.median(x["images_per_s"] for x in runs)}
        gen.append(r)
        how = f"{workers} reader processes, " + ("writer thread" if depth else "writes in line")
        print(f"gen-logits data path ({how}): {r['images_per_s']:.2f} images/s")
    speedup = gen[-1]["images_per_s"] / gen[0]["images_per_s"]
    print(f"gen-logits pipeline / serial: {speedup:.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"cores": cores, "crop": args.crop, "samples": rows,
                                         "ratios": ratios, "gen_logits": gen,
                                         "gen_logits_speedup": speedup}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
