"""What `train-anc --weak-boxes` costs per training step, against the same run without it.

Trains the ancillary net of benchmarks/camvid_objects.py's protocol (objects set: 180x240,
crop 160, batch 4, resnet18 with 64 channels) for a few steps with and without the weak-box
terms, alternating the two `--repeats` times in one process so that both see the same
machine load, and prints the median seconds per step of each and their ratio. A step with
the terms draws a W batch as large as F's (its forward, the two terms and their backward),
so the ratio counts W's images as well as the terms themselves.

    python benchmarks/weak_box_bench.py ../shared/data/camvid --out weak-box-bench
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from camvid_objects import objects_dataset  # noqa: E402
from camvid_table import resized_copy  # noqa: E402

from boxseg.box_losses import WeakBoxLoss  # noqa: E402
from boxseg.data.boxes import BoxSpec  # noqa: E402
from boxseg.data.formats import open_dataset  # noqa: E402
from boxseg.data.split import SplitSpec  # noqa: E402
from boxseg.engine import TrainConfig  # noqa: E402
from boxseg.io import write_json  # noqa: E402
from boxseg.models import ModelSpec  # noqa: E402
from boxseg.run_dir import code_version  # noqa: E402
from boxseg.train_anc import AncOptions, train_anc  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path, help="CamVid root (segnet layout)")
    ap.add_argument("--out", type=Path, default=Path("weak-box-bench"))
    ap.add_argument("--steps", type=int, default=20, help="steps a timed run (after 3 warm-up)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    half = resized_copy(args.data, args.out / "camvid_half", ["train", "val"], 0.5)
    data = objects_dataset(half, args.out / "data", ["train", "val"])
    split = SplitSpec("train", round(0.25 * len(open_dataset(data).ids("train"))), 0)
    spec = ModelSpec("resnet18", 16, 64, 64)
    per_step: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(args.repeats):
        for variant in per_step:
            run = args.out / f"run_{variant}"
            times = []
            for steps in (3, 3 + args.steps):  # the difference leaves set-up and warm-up out
                shutil.rmtree(run, ignore_errors=True)
                cfg = TrainConfig(iters=steps, batch_size=4, crop=160, scale_min=0.75,
                                  scale_max=1.25, lr=1e-3, optimizer="adamw",
                                  device=args.device, checkpoint_every=0)  # fmt: skip
                weak = WeakBoxLoss(variant == "on")
                opts = AncOptions(
                    data, run, split, spec, cfg, BoxSpec(16), weak_boxes=weak, val_split=None
                )
                t = time.perf_counter()
                train_anc(opts, quiet=True)
                times.append(time.perf_counter() - t)
            per_step[variant].append((times[1] - times[0]) / args.steps)
    med = {k: statistics.median(v) for k, v in per_step.items()}
    ratio = med["on"] / med["off"]
    print(f"seconds per step (median of {args.repeats}): without {med['off']:.3f}, with "
          f"--weak-boxes {med['on']:.3f}; ratio {ratio:.2f} (commit {code_version()}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads)")  # fmt: skip
    if args.json:
        write_json(args.json, {"seconds_per_step": per_step, "median": med, "ratio": ratio,
                               "commit": code_version(), "torch": torch.__version__,
                               "args": {k: str(v) for k, v in vars(args).items()}})  # fmt: skip


if __name__ == "__main__":
    main()
