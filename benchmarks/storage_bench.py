"""Storage options for W's logits: bytes per weak image and the train-primary (linear) mIoU.

Trains one ancillary net, then stores W's logits four ways and trains the same primary net
(linear self-correction, same seed and budget) from each:

- float32 full-resolution .npy per image (the naive baseline; trained from RAM),
- float16 stride 1, float16 stride 4, int8 stride 4 (boxseg stores, via gen-logits).

Each is trained with --seeds seeds (mean reported): the mIoU change from storage is only
meaningful against the seed-to-seed spread, which is printed too. Also measures what storage
does to the soft targets themselves, free of training noise: mean KL(p_naive || p_store) per
pixel and argmax agreement over every W pixel. Prints a table; --json writes it.

    python benchmarks/storage_bench.py                        # generated demo data, ~8 min CPU
    python benchmarks/storage_bench.py --data ../shared/data/camvid --num-full 92 --crop 224 \
        --iters 300 --batch-size 4 --aspp-channels 128 --decoder-channels 128 --scale-min 0.5 \
        --scale-max 1.0 --lr 0.001
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
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
from boxseg.gen_logits import GenLogitsOptions, gen_logits
from boxseg.models import ModelSpec
from boxseg.primary_options import CorrectionOptions, PrimaryOptions, WeakOptions
from boxseg.store import InMemoryLogits, LogitsStore
from boxseg.train_anc import AncOptions, train_anc
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
    ap.add_argument("--seeds", type=int, default=2, help="primary runs per storage (seeds 0..)")
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
                          optimizer="adamw", device="cpu", overwrite=True)  # fmt: skip
        box_spec = BoxSpec(min_area=4)
        opts = AncOptions(data, work / "anc", split, spec, cfg, box_spec, val_split=args.val_split)
        anc = train_anc(opts, quiet=True)
        model = work / "anc" / "model.pt"
        n = plain_loop(data, model, split, work / "npy", None)
        naive = {p.stem: torch.from_numpy(np.load(p)) for p in sorted((work / "npy").glob("*.npy"))}
        base = "float32 full-res .npy"
        sources: dict[str, object] = {base: InMemoryLogits(naive, ds.class_names)}
        sizes = {base: dir_bytes(work / "npy")}
        for name, (stride, dtype) in STORES.items():
            out = work / f"{name.replace(' ', '_')}.zarr"
            # batch 1, as plain_loop: every storage holds the same forward passes' outputs
            opts = GenLogitsOptions(data, str(out), split, model, stride=stride, dtype=dtype)
            gen_logits(dataclasses.replace(opts, batch_size=1, device="cpu"), quiet=True)
            sources[name], sizes[name] = str(out), dir_bytes(out)

        def fidelity(location: str) -> tuple[float, float]:
            """Mean KL(p_naive || p_store) per pixel (nats) and argmax agreement (%) of the soft
            targets over every W pixel: what the storage does to q, free of training noise."""
            store, kl, agree, n_pix = LogitsStore.open(location), 0.0, 0, 0
            for image_id, full in naive.items():
                got = store.read_full(store.index(image_id))
                logp, logq = torch.log_softmax(full, 0), torch.log_softmax(got, 0)
                kl += float((logp.exp() * (logp - logq)).sum(0).sum())
                agree += int((full.argmax(0) == got.argmax(0)).sum())
                n_pix += full.shape[1] * full.shape[2]
            return kl / n_pix, 100 * agree / n_pix

        quality = {base: (0.0, 100.0)} | {k: fidelity(v) for k, v in sources.items() if k != base}

        def primary(source, seed: int) -> float:
            run = work / f"p{len(list(work.glob('p*')))}"
            c = dataclasses.replace(cfg, seed=seed)
            weak, linear = WeakOptions(logits=source), CorrectionOptions("linear")
            opts = PrimaryOptions(data, run, split, spec, c, weak, linear, val_split=args.val_split)
            return train_primary(opts, quiet=True)["miou"]

        seeds = range(args.seeds)
        per_seed = {name: [primary(src, k) for k in seeds] for name, src in sources.items()}
        miou = {name: statistics.mean(v) for name, v in per_seed.items()}
        base_bytes, base_miou = sizes[base], miou[base]
        noise = max(per_seed[base]) - min(per_seed[base])
        rows = []
        print(
            f"{n} weak images; ancillary {args.val_split} mIoU {anc['miou']:.2f}; primary "
            f"linear, mean of seeds {list(seeds)}; baseline seeds differ by {noise:.2f}"
        )
        print(
            f"{'storage':<22} {'bytes/img':>10} {'vs naive':>9} {'KL nats':>8} {'argmax=':>8} "
            f"{'mIoU':>6} {'change':>7}"
        )
        for name in sources:
            row = {"storage": name, "bytes_per_image": sizes[name] / n,
                   "size_vs_naive": sizes[name] / base_bytes, "miou": miou[name],
                   "miou_seeds": per_seed[name],
                   "miou_change": miou[name] - base_miou, "target_kl": quality[name][0],
                   "argmax_agreement": quality[name][1]}  # fmt: skip
            rows.append(row)
            print(f"{name:<22} {row['bytes_per_image']:10.0f} {row['size_vs_naive']:8.4f}x "
                  f"{row['target_kl']:8.5f} {row['argmax_agreement']:7.3f}% "
                  f"{row['miou']:6.2f} {row['miou_change']:+7.2f}")  # fmt: skip
        result = {"images": n, "anc_miou": anc["miou"], "seed_noise": noise, "rows": rows,
                  "seconds": time.perf_counter() - t_start, "args": vars(args) | {
                      "data": str(args.data), "json": str(args.json)}}  # fmt: skip
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
