"""train-primary steps/s with W's logits from the store, from the ancillary net run online on
each crop, and from soft targets held in RAM (the store's data-path overhead).

All three train the same primary net (linear self-correction) with the same batches; the
ancillary net is untrained (weights do not change the speed). Runs alternate, --repeats
times each; steps/s is the steady-state rate after --warmup steps (from per-step logs).

Online mode costs what the store mode costs plus one ancillary forward pass on the W batch
(A seconds, timed here on its own), so store/online can reach at most about 1 + A x (store
steps/s): the "bound" column. Prints medians and ratios; --json writes them.

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
import time
from pathlib import Path

import numpy as np
import torch
from gen_logits_bench import plain_loop
from torch import nn

from boxseg.checkpoint import save_model
from boxseg.data.boxes import BoxSpec, box_channels
from boxseg.data.formats import open_dataset
from boxseg.data.split import SplitSpec
from boxseg.data.synthetic import write_synthetic
from boxseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from boxseg.demo import DEMO_SPEC
from boxseg.engine import TrainConfig
from boxseg.gen_logits import GenLogitsOptions, gen_logits
from boxseg.models import build_model
from boxseg.primary_options import CorrectionOptions, PrimaryOptions, WeakOptions
from boxseg.run_dir import model_meta
from boxseg.store import InMemoryLogits
from boxseg.train_primary import train_primary


def steady_steps_per_s(metrics: Path, warmup: int, images_per_step: int) -> float:
    """Steps/s between step `warmup` and the last step, from per-step records (each holds
    img_per_s since the start, so the time at step k is k * images_per_step / img_per_s)."""
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    at = {0: 0.0} | {r["step"]: r["step"] * images_per_step / r["img_per_s"] for r in records}
    last = records[-1]["step"]
    return (last - warmup) / (at[last] - at[warmup])


def forward_seconds(net: nn.Module, batch: int, crop: int, box_ch: int, repeats: int) -> float:
    """Median time of one no-grad forward pass of the ancillary net on a W batch."""
    image, boxes = torch.randn(batch, 3, crop, crop), torch.rand(batch, box_ch, crop, crop)
    times = []
    with torch.no_grad():
        for _ in range(repeats + 2):
            t = time.perf_counter()
            net(image, boxes)
            times.append(time.perf_counter() - t)
    return statistics.median(times[2:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help="dataset (default: generate the demo data)")
    ap.add_argument("--num-full", type=int, default=32)
    ap.add_argument("--size", type=int, default=64, help="generated image size (pixels)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5, help="steps left out of the rate")
    ap.add_argument("--batch-size", type=int, default=8, help="F images per step")
    ap.add_argument("--weak-batch-size", type=int, help="W images per step (default: batch size)")
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
    if not 0 <= args.warmup < args.steps:
        ap.error("--warmup must be in 0..steps-1")
    wbs = args.weak_batch_size or args.batch_size
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
        gen_logits(GenLogitsOptions(data, str(store), split, model, device="cpu"), quiet=True)
        plain_loop(data, model, split, work / "npy", None)
        in_ram = InMemoryLogits(
            {p.stem: torch.from_numpy(np.load(p)) for p in sorted((work / "npy").glob("*.npy"))},
            ds.class_names,
        )
        cfg = TrainConfig(iters=args.steps, batch_size=args.batch_size, crop=args.crop,
                          device="cpu", workers=args.workers, checkpoint_every=0,
                          log_every=1, overwrite=True)  # fmt: skip
        sources = {
            "store (float16, stride 4)": WeakOptions(logits=str(store), batch_size=wbs),
            "online ancillary": WeakOptions(anc_model=model, batch_size=wbs),
            "in RAM (float32 full-res)": WeakOptions(logits=in_ram, batch_size=wbs),
        }
        linear = CorrectionOptions("linear")
        base = PrimaryOptions(data, work, split, DEMO_SPEC, cfg, correction=linear, val_split=None)
        times: dict[str, list[float]] = {k: [] for k in sources}
        for r in range(args.repeats):
            for name, weak in sources.items():
                run = work / f"run{r}"
                train_primary(dataclasses.replace(base, out=run, weak=weak), quiet=True)
                times[name].append(steady_steps_per_s(run / "metrics.jsonl", args.warmup,
                                                      args.batch_size + wbs))  # fmt: skip
        anc_forward = forward_seconds(net.eval(), wbs, args.crop, channels, 10)
        steps = {k: statistics.median(v) for k, v in times.items()}
        store_speed = steps["store (float16, stride 4)"]
        bound = 1 + anc_forward * store_speed
        print(
            f"{args.steps} steps ({args.warmup} warm-up) x {args.repeats} runs, batch "
            f"{args.batch_size} F + {wbs} W, crop {args.crop}, ancillary {args.anc_backbone}, "
            f"torch threads {torch.get_num_threads()}"
        )
        print(f"ancillary forward on the W batch (A): {anc_forward * 1000:.0f} ms; store step: "
              f"{1000 / store_speed:.0f} ms; bound 1 + A/step: {bound:.2f}x")  # fmt: skip
        print(f"{'W logits from':<28} {'steps/s':>8} {'store vs this':>14}")
        rows = []
        for name, v in steps.items():
            rows.append({"source": name, "steps_per_s": v, "store_vs_this": store_speed / v,
                         "runs_steps_per_s": times[name]})  # fmt: skip
            print(f"{name:<28} {v:8.2f} {store_speed / v:13.2f}x")
        if args.json:
            args.json.write_text(json.dumps({"rows": rows, "anc_forward_s": anc_forward,
                "store_online_bound": bound, "args": {
                k: str(v) for k, v in vars(args).items()}}, indent=2))  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
