"""gen-logits against a plain loop that saves one float32 .npy of full-resolution logits per image.

Both use the same ancillary model (weights do not change the speed, so an untrained one is
used unless --model is given) on the same weak images; gen-logits runs with its default
batch of 8 images per forward pass and with one (what the plain loop does). Prints a table of
median seconds, images/s and bytes per image over --repeats alternating runs; --json writes
the numbers.

    python benchmarks/gen_logits_bench.py                       # generated demo data, CPU
    python benchmarks/gen_logits_bench.py --data ../shared/data/camvid --num-full 92 --limit 40
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from boxseg.checkpoint import load_model, save_model
from boxseg.data.boxes import BoxSpec, box_channels
from boxseg.data.formats import load_weak, open_dataset
from boxseg.data.split import SplitSpec, split_full_weak
from boxseg.data.synthetic import write_synthetic
from boxseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from boxseg.demo import DEMO_SPEC
from boxseg.gen_logits import GenLogitsOptions, gen_logits
from boxseg.inference import predict_logits
from boxseg.models import build_model
from boxseg.run_dir import model_meta


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def plain_loop(data: Path, model_path: Path, split: SplitSpec, out: Path, limit: int | None) -> int:
    """The naive baseline: one float32 full-resolution .npy per weak image."""
    ds = open_dataset(data)
    model, meta = load_model(model_path, kind="ancillary")
    _, weak = split_full_weak(ds.ids(split.split), split)
    out.mkdir(parents=True, exist_ok=True)
    for image_id in weak[:limit]:
        s = load_weak(ds, split.split, image_id, BoxSpec.from_dict(meta["boxes"]))
        logits = predict_logits(model, meta, s.image, torch.device("cpu"), s.boxes, s.labels)
        np.save(out / f"{image_id}.npy", logits.numpy().astype(np.float32))
    return len(weak[:limit])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help="dataset (default: generate the demo data)")
    ap.add_argument("--model", type=Path, help="ancillary model.pt (default: untrained demo net)")
    ap.add_argument("--num-full", type=int, default=32)
    ap.add_argument("--limit", type=int, help="only the first N weak images (the store holds all)")
    ap.add_argument("--stride", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp(prefix="boxseg-bench-"))
    try:
        data = args.data or write_synthetic(work / "data", 160, 8, size=64)
        ds = open_dataset(data)
        model_path = args.model
        if model_path is None:
            channels = box_channels(ds.num_classes, ds.background)
            net = build_model(DEMO_SPEC, ds.num_classes, channels)
            meta = model_meta("ancillary", DEMO_SPEC, ds, BoxSpec(4), channels, IMAGENET_MEAN,
                              IMAGENET_STD)  # fmt: skip
            model_path = work / "anc.pt"
            save_model(model_path, net.eval(), meta)
        split = SplitSpec("train", args.num_full, 0)
        if args.limit:  # restrict W for both methods: F = everything but the first `limit` W ids
            _, weak = split_full_weak(ds.ids("train"), split)
            keep = set(weak[: args.limit])
            full = [i for i in ds.ids("train") if i not in keep]
            (work / "full.txt").write_text("\n".join(full))
            split = SplitSpec("train", full_list=work / "full.txt")
        batch_sizes = {"boxseg gen-logits": 8, "gen-logits batch 1": 1}
        times: dict[str, list[float]] = {"plain .npy loop": [], **{k: [] for k in batch_sizes}}
        n = 0
        store = GenLogitsOptions(data, str(work / "w.zarr"), split, model_path, stride=args.stride)
        for _ in range(args.repeats):
            shutil.rmtree(work / "npy", ignore_errors=True)
            t = time.perf_counter()
            n = plain_loop(data, model_path, split, work / "npy", None)
            times["plain .npy loop"].append(time.perf_counter() - t)
            for name, batch_size in batch_sizes.items():
                opts = replace(store, batch_size=batch_size, device="cpu", overwrite=True)
                t = time.perf_counter()
                gen_logits(opts, quiet=True)
                times[name].append(time.perf_counter() - t)
        sizes = {"plain .npy loop": dir_bytes(work / "npy")}
        sizes |= {k: dir_bytes(work / "w.zarr") for k in batch_sizes}  # the same store
        base = statistics.median(times["plain .npy loop"])
        rows = []
        print(f"{n} weak images, {args.repeats} runs each, stride {args.stride}, torch threads "
              f"{torch.get_num_threads()}")  # fmt: skip
        header = ("method", "median s", "img/s", "speed", "bytes/img", "size")
        print("{:<20} {:>9} {:>8} {:>6} {:>10} {:>7}".format(*header))
        for name, ts in times.items():
            med = statistics.median(ts)
            row = {
                "method": name,
                "median_s": med,
                "img_per_s": n / med,
                "speed_vs_plain": base / med,
                "bytes_per_image": sizes[name] / n,
                "size_vs_plain": sizes[name] / sizes["plain .npy loop"],
                "runs_s": ts,
            }
            rows.append(row)
            print(f"{name:<20} {med:9.2f} {n / med:8.1f} {base / med:5.2f}x "
                  f"{sizes[name] / n:10.0f} {row['size_vs_plain']:6.3f}x")  # fmt: skip
        if args.json:
            args.json.write_text(
                json.dumps({"images": n, "stride": args.stride, "rows": rows}, indent=2)
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
