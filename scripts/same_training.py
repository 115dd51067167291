"""Do two commits train the same weights? Runs `boxseg demo` (ancillary net, gen-logits, F-only
and F + W primaries, --self-corr none) at each commit, in a temporary git worktree, and compares
the three models' weights bit for bit.

    python scripts/same_training.py f47e64b 5f4bb2a HEAD --iters 20

Why: a benchmark row is trained at one commit and its neighbours at another; when the code
between them leaves training unchanged, the rows compare as if run at one commit. One thread
(OMP_NUM_THREADS=1) so float sums run in the same order at every commit. Exits 1 if any
model differs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from kill_check import result_of, same

MODELS = ("anc", "f_only", "none")  # the demo's run folders
ROOT = Path(__file__).resolve().parents[1]


def demo_at(commit: str, work: Path, iters: int) -> Path:
    """Check `commit` out in a worktree under `work`, run its demo there; the demo's folder."""
    tree, out = work / f"tree_{commit}", work / f"demo_{commit}"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-f", "--detach", str(tree),
                    commit], check=True, capture_output=True)  # fmt: skip
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(tree)}
    try:
        subprocess.run([sys.executable, "-m", "boxseg", "demo", "--out", str(out), "--iters",
                        str(iters), "--quiet", "--device", "cpu"], check=True, cwd=tree,
                       env=env)  # fmt: skip
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                       check=False, capture_output=True)  # fmt: skip
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("commits", nargs="+", help="two or more commits (names git understands)")
    ap.add_argument("--iters", type=int, default=20, help="training steps of each model")
    args = ap.parse_args()
    if len(args.commits) < 2:
        ap.error("give at least two commits")
    with tempfile.TemporaryDirectory(prefix="same_training_") as tmp:
        demos = [demo_at(c, Path(tmp), args.iters) for c in args.commits]
        differ = 0
        for name in MODELS:
            ref = result_of("train", demos[0] / name)  # its model.pt's weights
            for commit, demo in zip(args.commits[1:], demos[1:], strict=True):
                equal = same(ref, result_of("train", demo / name))
                differ += not equal
                print(f"{name}: {args.commits[0]} vs {commit}: "
                      f"{'the same weights' if equal else 'DIFFERENT weights'}")  # fmt: skip
    return 1 if differ else 0


if __name__ == "__main__":
    raise SystemExit(main())
