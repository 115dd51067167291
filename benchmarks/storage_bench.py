"""Storage options for W's logits: bytes per weak image and the train-primary (linear) mIoU.

Trains one ancillary net, then stores W's logits four ways and trains the same primary net
(linear self-correction, same seed and budget) from each:

- float32 full-resolution .npy per image (the naive baseline; trained from RAM),
- float16 stride 1, float16 stride 4, int8 stride 4 (boxseg stores, via gen-logits).

The baseline is trained with a second seed too: the mIoU change from storage is only
meaningful against that seed noise. Prints a table; --json writes it.

    python benchmarks/storage_bench.py                        # generated demo data, ~6 min CPU
    python benchmarks/storage_bench.py --data ../shared/data/camvid --num-full 92 --crop 224 \
        --iters 300 --batch-size 4 --aspp-channels 128 --decoder-channels 128 --scale-min 0.5 \
        --scale-max 1.0 --lr 0.001
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from gen_logits_bench import dir_bytes, plain_loop

from boxseg.data.boxes import BoxSpec
from boxseg.data.formats import open_dataset
from boxseg.data.split import SplitSpec
from boxseg.data.synthetic import write_synthetic
from boxseg.demo import DEMO_SPEC
from boxseg.engine import TrainConfig
from boxseg.gen_logits import gen_logits
from boxseg.models import ModelSpec
from boxseg.store import InMemoryLogits
from boxseg.train_anc import train_anc
from boxseg.train_primary import train_primary

STORES = {  # name: (stride, dtype)
    "float16 stride 1": (1, "float16"),
    "float16 stride 4": (4, "float16"),
    "int8 stride 4": (4, "int8"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help="dataset (default: generate the demo data)")
    ap.add_argument("--num-full", type=int, default=32)
    ap.add_argument("--iters", type=int, default=160)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--crop", type=int, default=64)
    ap.add_argument("--scale-min", type=float, default=0.75)
    ap.add_argument("--scale-max", type=float, default=1.25)
    ap.add_argument("--lr", type=float, default=0.003)
    ap.add_argument("--aspp-channels", type=int, default=DEMO_SPEC.aspp_channels)
    ap.add_argument("--decoder-channels", type=int, default=DEMO_SPEC.decoder_channels)
    ap.add_argument("--val-split", default="val")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="boxseg-storage-"))
    t_start = time.perf_counter()
    try:
        data = args.data or write_synthetic(work / "data", 160, 48, size=64, seed=0)
        ds = open_dataset(data)
        spec = ModelSpec("resnet18", 16, args.aspp_channels, args.decoder_channels, 32)
        split = SplitSpec("train", args.num_full, 0)
        cfg = TrainConfig(iters=args.iters, batch_size=args.batch_size, crop=args.crop,
                          scale_min=args.scale_min, scale_max=args.scale_max, lr=args.lr,
                          optimizer="adamw", device="cpu")  # fmt: skip
        anc = train_anc(data, work / "anc", split, BoxSpec(min_area=4), spec, cfg,
                        val_split=args.val_split, quiet=True)  # fmt: skip
        model = work / "anc" / "model.pt"
        n = plain_loop(data, model, split, work / "npy", None)
        naive = {p.stem: torch.from_numpy(np.load(p)) for p in sorted((work / "npy").glob("*.npy"))}
        base = "float32 full-res .npy"
        sources: dict[str, object] = {base: InMemoryLogits(naive, ds.class_names)}
        sizes = {base: dir_bytes(work / "npy")}
        for name, (stride, dtype) in STORES.items():
            out = work / f"{name.replace(' ', '_')}.zarr"
            gen_logits(data, model, str(out), split, stride, "cpu", quiet=True, dtype=dtype)
            sources[name], sizes[name] = str(out), dir_bytes(out)

        def primary(source, seed: int) -> float:
            run = work / f"p{len(list(work.glob('p*')))}"
            c = TrainConfig(**{**cfg.to_dict(), "seed": seed})
            r = train_primary(data, run, split, spec, c, logits=source, self_corr="linear",
                              val_split=args.val_split, quiet=True)  # fmt: skip
            return r["miou"]

        miou = {name: primary(src, 0) for name, src in sources.items()}
        seed1 = primary(sources[base], 1)
        base_bytes, base_miou = sizes[base], miou[base]
        rows = []
        print(f"{n} weak images; ancillary {args.val_split} mIoU {anc['miou']:.2f}; primary "
              f"linear, seed 0 (baseline seed 1: {seed1:.2f}, seed noise "
              f"{abs(seed1 - base_miou):.2f})")  # fmt: skip
        print(f"{'storage':<22} {'bytes/img':>10} {'vs naive':>9} {'mIoU':>6} {'change':>7}")
        for name in sources:
            row = {"storage": name, "bytes_per_image": sizes[name] / n,
                   "size_vs_naive": sizes[name] / base_bytes, "miou": miou[name],
                   "miou_change": miou[name] - base_miou}  # fmt: skip
            rows.append(row)
            print(f"{name:<22} {row['bytes_per_image']:10.0f} {row['size_vs_naive']:8.4f}x "
                  f"{row['miou']:6.2f} {row['miou_change']:+7.2f}")  # fmt: skip
        result = {"images": n, "anc_miou": anc["miou"], "baseline_seed1_miou": seed1,
                  "seed_noise": abs(seed1 - base_miou), "rows": rows,
                  "seconds": time.perf_counter() - t_start, "args": vars(args) | {
                      "data": str(args.data), "json": str(args.json)}}  # fmt: skip
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
