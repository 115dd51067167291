"""Kill boxseg stages with SIGKILL at random moments, run the same command again, and compare
the result with an uninterrupted run's, element for element.

    python scripts/kill_check.py --kills 20            # 20 kill points for each command
    python scripts/kill_check.py --commands train-anc --kills 5 --seed 3

Each command runs on a small generated dataset with OMP_NUM_THREADS=1 (thread counts change
the last bit of float sums, so every run uses the same). Trainers run with --resume and
--checkpoint-every 1: the first launch starts afresh, every later one continues from
RUN/last.pt. Prints one line per kill and exits 1 if any result differs.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

COMMANDS = ("gen-logits", "train-anc", "train-primary")
ENV = os.environ | {"OMP_NUM_THREADS": "1", "BOXSEG_QUIET": "1"}
TINY = ["--backbone", "resnet18", "--aspp-channels", "16", "--decoder-channels", "16",
        "--crop", "32", "--batch-size", "2", "--device", "cpu", "--quiet"]  # fmt: skip


def prepare(work: Path) -> dict[str, Path]:
    """Data, an ancillary model and its store (what gen-logits and train-primary start from)."""
    from boxseg.data.synthetic import write_synthetic

    data = write_synthetic(work / "data", 46, 4, size=32, seed=1)  # W: 40 images
    subprocess.run(argv("train-anc", {"data": data}, work / "anc") + ["--iters", "4"], env=ENV,
                   check=True, timeout=300)  # fmt: skip
    paths = {"data": data, "anc": work / "anc" / "model.pt"}
    subprocess.run(argv("gen-logits", paths, work / "weak.zarr"), env=ENV, check=True, timeout=300)
    return paths | {"store": work / "weak.zarr"}


def argv(command: str, paths: dict, out: Path) -> list[str]:
    base = [sys.executable, "-m", "boxseg", command, str(paths["data"]), "--num-full", "6"]
    if command == "gen-logits":
        return base + ["--model", str(paths["anc"]), "--out", str(out), "--device", "cpu",
                       "--quiet"]  # fmt: skip
    train = ["--out", str(out), *TINY, "--iters", "12", "--checkpoint-every", "1", "--resume",
             "--val-split", ""]  # fmt: skip
    if command == "train-anc":
        return base + train
    return base + train + ["--logits", str(paths["store"]), "--self-corr", "linear"]


def result_of(command: str, out: Path) -> dict[str, np.ndarray]:
    if command == "gen-logits":
        from boxseg.store import LogitsStore

        s = LogitsStore.open(out)
        assert s.done_mask().all(), "store not complete"
        return {"logits": s.logits[:]}
    state = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    return {k: v.numpy() for k, v in state.items()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def progress_of(command: str, out: Path) -> str:
    """What a killed run had left behind: images done in the store, or the checkpoint step."""
    if command == "gen-logits":
        try:
            from boxseg.store import LogitsStore

            done = LogitsStore.open(out).done_mask()
            return f"{int(done.sum())}/{len(done)} images done"
        except Exception:  # noqa: BLE001 - no store yet, or one killed while being created
            return "no complete store yet"
    if (out / "last.pt").is_file():
        return f"last.pt at step {torch.load(out / 'last.pt', weights_only=True)['step']}"
    return "no checkpoint yet"


def kill_then_finish(cmd: list[str], delay: float, command: str, out: Path) -> tuple[bool, str]:
    """Start, SIGKILL after `delay` s, then run to the end; return (was it still running, what
    it had written)."""
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(delay)
    alive = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = progress_of(command, out)
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"rerun failed: {done.stderr.strip().splitlines()[-1:]}")
    return alive, left


def check(command: str, paths: dict, work: Path, fractions: list[float]) -> list[dict]:
    """An uninterrupted run, then one killed run per fraction of its duration."""
    t = time.perf_counter()
    subprocess.run(argv(command, paths, work / "ref"), env=ENV, check=True, timeout=300)
    duration = time.perf_counter() - t
    want = result_of(command, work / "ref")
    rows = []
    for k, f in enumerate(fractions):
        out = work / f"kill{k}"
        alive, left = kill_then_finish(argv(command, paths, out), f * duration, command, out)
        rows.append({"command": command, "delay_s": round(f * duration, 2), "killed": alive,
                     "left": left, "equal": same(result_of(command, out), want)})  # fmt: skip
        shutil.rmtree(out, ignore_errors=True)
    return rows


def check_chain(command: str, paths: dict, work: Path, fractions: list[float]) -> list[dict]:
    """An uninterrupted run; then one run killed again and again (each relaunch continues from
    what the last one left), finished by a last launch. One row per kill, all sharing the final
    comparison. Cheaper than `check` (one launch per kill instead of two)."""
    t = time.perf_counter()
    subprocess.run(argv(command, paths, work / "ref"), env=ENV, check=True, timeout=300)
    duration = time.perf_counter() - t
    cmd = argv(command, paths, work / "chain")
    alive, left = [], []
    for f in fractions:
        proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(f * duration)
        alive.append(proc.poll() is None)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        left.append(progress_of(command, work / "chain"))
    subprocess.run(cmd, env=ENV, check=True, timeout=300, capture_output=True)
    equal = same(result_of(command, work / "chain"), result_of(command, work / "ref"))
    return [{"command": command, "delay_s": round(f * duration, 2), "killed": a, "left": x,
             "equal": equal} for f, a, x in zip(fractions, alive, left, strict=True)]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=20, help="kill points per command")
    ap.add_argument("--commands", default=",".join(COMMANDS))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="boxseg-kill-"))
    failed = 0
    try:
        paths = prepare(work)
        for command in args.commands.split(","):
            fractions = sorted(rng.uniform(0.2, 1.0) for _ in range(args.kills))
            for row in check(command, paths, work / command, fractions):
                failed += not row["equal"]
                print(f"{row['command']:<14} kill at {row['delay_s']:5.2f} s "
                      f"({'while running' if row['killed'] else 'after the end'}; left: "
                      f"{row['left']}): {'equal' if row['equal'] else 'DIFFERENT'}",
                      flush=True)  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{failed} of the results differ from the uninterrupted runs")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
