"""Images/s and peak GPU memory of train-anc, gen-logits and train-primary (benchmark 4d).

Generated data at --size (default 512x512), DeepLabv3+ with each --backbones entry, --steps
training steps per trainer and the whole W set for gen-logits. Peak memory is
torch.cuda.max_memory_allocated per stage. Prints a table; --json writes it.

    python benchmarks/gpu_bench.py --json gpu.json                   # CUDA: resnet50, resnet101
    python benchmarks/gpu_bench.py --device cpu --size 64 --steps 2 --images 24 --backbones resnet18
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from boxseg.data.boxes import BoxSpec
from boxseg.data.split import SplitSpec
from boxseg.data.synthetic import write_synthetic
from boxseg.engine import TrainConfig
from boxseg.gen_logits import GenLogitsOptions, gen_logits
from boxseg.models import ModelSpec
from boxseg.primary_options import CorrectionOptions, PrimaryOptions, WeakOptions
from boxseg.train_anc import AncOptions, train_anc
from boxseg.train_primary import train_primary


def measured(device: str, fn) -> tuple[float, float | None]:
    """(seconds, peak GiB on CUDA) of fn()."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        return time.perf_counter() - t, torch.cuda.max_memory_allocated() / 2**30
    return time.perf_counter() - t, None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--images", type=int, default=96, help="generated train images (F + W)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--backbones", default="resnet50,resnet101")
    ap.add_argument("--amp", default="bf16")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: pass --device cpu for a smoke run")
    work = Path(tempfile.mkdtemp(prefix="boxseg-gpu-"))
    rows = []
    try:
        data = write_synthetic(work / "data", args.images, 4, size=args.size)
        split = SplitSpec("train", args.images // 4, 0)
        n_weak = args.images - args.images // 4
        cfg = TrainConfig(iters=args.steps, batch_size=args.batch_size, crop=args.size,
                          scale_min=1.0, scale_max=1.0, device=args.device, amp=args.amp,
                          workers=args.workers, checkpoint_every=0, overwrite=True)  # fmt: skip
        for backbone in args.backbones.split(","):
            spec, out = ModelSpec(backbone, 16), work / backbone
            store = str(out / "w.zarr")

            def anc(spec=spec, out=out):
                opts = AncOptions(data, out / "anc", split, spec, cfg, BoxSpec(4), val_split=None)
                train_anc(opts, quiet=True)

            def logits(out=out, store=store):
                model = out / "anc" / "model.pt"
                opts = GenLogitsOptions(data, store, split, model, device=args.device)
                gen_logits(opts, quiet=True)

            def primary(spec=spec, out=out, store=store):
                weak, linear = WeakOptions(logits=store), CorrectionOptions("linear")
                opts = PrimaryOptions(data, out / "p", split, spec, cfg, weak, linear)
                train_primary(replace(opts, val_split=None), quiet=True)

            stages = {
                "train-anc": (anc, args.steps * args.batch_size),
                "gen-logits": (logits, n_weak),
                "train-primary": (primary, 2 * args.steps * args.batch_size),
            }
            for stage, (fn, images) in stages.items():
                seconds, peak = measured(args.device, fn)
                rows.append(
                    {
                        "backbone": backbone,
                        "stage": stage,
                        "images": images,
                        "seconds": seconds,
                        "img_per_s": images / seconds,
                        "peak_gib": peak,
                    }
                )
                shown = f"{peak:.1f} GiB" if peak is not None else "-"
                print(
                    f"{backbone:<10} {stage:<14} {images / seconds:8.1f} img/s  peak {shown}",
                    flush=True,
                )
        device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
        if args.json:
            result = {
                "device": device,
                "args": {k: str(v) for k, v in vars(args).items()},
                "rows": rows,
            }
            args.json.write_text(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
