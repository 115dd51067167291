"""On a CPU, is one training process with N threads or N processes with 1 thread each the faster
way through a queue of trainings (the benchmark tables' case)?

Times the table protocol's step (resnet18 DeepLabv3+, 64 channels, batch 8, crop 96: forward,
backward, AdamW) in one process with --threads threads, then in --threads processes at one
thread each, started together; prints each median and the total steps/s of both set-ups.

    python benchmarks/threads_bench.py --threads 2 --steps 15
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def step_times(threads: int, steps: int, warmup: int = 3) -> list[float]:
    """Seconds of each of `steps` training steps (after `warmup`) with `threads` threads."""
    from boxseg.models import ModelSpec, build_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model(ModelSpec("resnet18", 16, 64, 64), 12)
    opt = torch.optim.AdamW(model.parameters(), 2e-3)
    x, y = torch.randn(8, 3, 96, 96), torch.randint(0, 12, (8, 96, 96))
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:  # one single-thread process of the parallel set-up
        print(json.dumps(step_times(1, args.steps)))
        return
    one = statistics.median(step_times(args.threads, args.steps))
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, __file__, "--child", "--steps", str(args.steps)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
             for _ in range(args.threads)]  # fmt: skip
    medians = [statistics.median(json.loads(p.communicate()[0])) for p in procs]
    rate_one, rate_many = 1 / one, sum(1 / m for m in medians)
    print(f"1 process x {args.threads} threads: {one * 1e3:.0f} ms/step, {rate_one:.2f} steps/s")
    print(f"{args.threads} processes x 1 thread: "
          f"{', '.join(f'{m * 1e3:.0f}' for m in medians)} ms/step, {rate_many:.2f} steps/s "
          f"in all ({rate_many / rate_one:.2f}x)")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({
            "threads": args.threads, "steps": args.steps, "one_process_s": one,
            "processes_s": medians, "one_process_steps_per_s": rate_one,
            "processes_steps_per_s": rate_many, "ratio": rate_many / rate_one}, indent=2))


if __name__ == "__main__":
    main()
