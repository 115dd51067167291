"""train-primary steps/s with W's logits from the store, from the ancillary net run online on
each crop, and from soft targets held in RAM (the store's data-path overhead).

All three train the same primary net (linear self-correction) with the same batches; the
ancillary net is untrained (weights do not change the speed). Runs alternate, --repeats
times each; prints median steps/s and ratios; --json writes them.

    python benchmarks/train_speed_bench.py                     # generated 64x64 images
    python benchmarks/train_speed_bench.py --size 256 --crop 224 --batch-size 4
    python benchmarks/train_speed_bench.py --anc-backbone resnet50  # a heavier ancillary net
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch
from gen_logits_bench import plain_loop

from boxseg.checkpoint import save_model
from boxseg.data.boxes import BoxSpec, box_channels
from boxseg.data.formats import open_dataset
from boxseg.data.split import SplitSpec
from boxseg.data.synthetic import write_synthetic
from boxseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from boxseg.demo import DEMO_SPEC
from boxseg.engine import TrainConfig
from boxseg.gen_logits import gen_logits
from boxseg.models import build_model
from boxseg.run_dir import model_meta
from boxseg.store import InMemoryLogits
from boxseg.train_primary import train_primary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help="dataset (default: generate the demo data)")
    ap.add_argument("--num-full", type=int, default=32)
    ap.add_argument("--size", type=int, default=64, help="generated image size (pixels)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--crop", type=int, default=64)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--anc-backbone",
        default=DEMO_SPEC.backbone,
        help="the ancillary net's backbone (the primary is the demo's resnet18)",
    )
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp(prefix="boxseg-speed-"))
    try:
        data = args.data or write_synthetic(work / "data", 160, 8, size=args.size)
        ds = open_dataset(data)
        split = SplitSpec("train", args.num_full, 0)
        channels = box_channels(ds.num_classes, ds.background)
        anc_spec = dataclasses.replace(DEMO_SPEC, backbone=args.anc_backbone)
        net = build_model(anc_spec, ds.num_classes, channels)
        meta = model_meta("ancillary", anc_spec, ds, BoxSpec(4), channels, IMAGENET_MEAN,
                          IMAGENET_STD)  # fmt: skip
        model = work / "anc.pt"
        save_model(model, net.eval(), meta)
        store = work / "w.zarr"
        gen_logits(data, model, str(store), split, 4, "cpu", quiet=True)
        plain_loop(data, model, split, work / "npy", None)
        in_ram = InMemoryLogits(
            {p.stem: torch.from_numpy(np.load(p)) for p in sorted((work / "npy").glob("*.npy"))},
            ds.class_names,
        )
        cfg = TrainConfig(iters=args.steps, batch_size=args.batch_size, crop=args.crop,
                          device="cpu", workers=args.workers, checkpoint_every=0)  # fmt: skip
        sources = {"store (float16, stride 4)": {"logits": str(store)},
                   "online ancillary": {"anc_model": model},
                   "in RAM (float32 full-res)": {"logits": in_ram}}  # fmt: skip
        times: dict[str, list[float]] = {k: [] for k in sources}
        for r in range(args.repeats):
            for name, kw in sources.items():
                run = work / f"run{r}"
                train_primary(data, run, split, DEMO_SPEC, cfg, self_corr="linear",
                              val_split=None, quiet=True, **kw)  # fmt: skip
                last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
                times[name].append(last["img_per_s"] / (2 * args.batch_size))  # F + W images
        steps = {k: statistics.median(v) for k, v in times.items()}
        store_speed = steps["store (float16, stride 4)"]
        print(
            f"{args.steps} steps x {args.repeats} runs, batch {args.batch_size} F + "
            f"{args.batch_size} W, crop {args.crop}, torch threads {torch.get_num_threads()}"
        )
        print(f"{'W logits from':<28} {'steps/s':>8} {'store vs this':>14}")
        rows = []
        for name, v in steps.items():
            rows.append({"source": name, "steps_per_s": v, "store_vs_this": store_speed / v,
                         "runs_steps_per_s": times[name]})  # fmt: skip
            print(f"{name:<28} {v:8.2f} {store_speed / v:13.2f}x")
        if args.json:
            args.json.write_text(json.dumps({"rows": rows, "args": {
                k: str(v) for k, v in vars(args).items()}}, indent=2))  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
