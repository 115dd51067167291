"""The command blocks of the README and of the docs pages its commands moved to (PAGES) run as
written: each block goes through bash (its variables expanded exactly as a user's shell would),
with `boxseg` and `torchrun` recording the command lines; each is then run in-process on a
generated tree of the layout the block expects, with tiny settings appended (last flag wins)
and option values too big for a tiny tree (--num-full) scaled down. A block that uses a
variable it does not define fails here."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from boxseg.data.synthetic import write_synthetic
from tests.conftest import run_cli
from tests.data.test_cityscapes import write_cityscapes
from tests.data.test_folder import write_folder
from tests.data.test_voc import write_voc

ROOT = Path(__file__).resolve().parents[1]
PAGES = ("README.md", "docs/datasets.md", "docs/training.md")  # in reading order
TINY_NET = ["--backbone", "resnet18", "--pretrained", "none", "--aspp-channels", "16",
            "--decoder-channels", "16", "--iters", "2", "--crop", "32", "--batch-size", "2",
            "--workers", "0", "--amp", "off", "--device", "cpu", "--quiet"]  # fmt: skip
TINY = {"train-anc": TINY_NET, "train-primary": TINY_NET,
        "gen-logits": ["--device", "cpu", "--quiet", "--workers", "0"],
        "eval": ["--device", "cpu", "--quiet"], "rank": ["--device", "cpu", "--quiet"]}  # fmt: skip
RECORD = """
boxseg() { printf '%s\\0' boxseg "$@" >> "$RECORD"; printf '\\n' >> "$RECORD"; }
torchrun() { while [ "$1" != "-m" ]; do shift; done; shift 2; boxseg "$@"; }
pip() { :; }
"""


def blocks(page: str = "README.md") -> list[tuple[int, str]]:
    """(line, text) of every ```bash block of `page` (a path from the repository root)."""
    found, lines = [], (ROOT / page).read_text(encoding="utf-8").splitlines()
    start = None
    for n, line in enumerate(lines, 1):
        if line.strip() == "```bash":
            start = n
        elif line.strip() == "```" and start is not None:
            found.append((start, "\n".join(lines[start : n - 1])))
            start = None
    return found


def recorded(block: str, cwd: Path) -> list[list[str]]:
    """The boxseg command lines a block runs, expanded by bash (`set -u`: an undefined variable
    is an error)."""
    record = cwd / "record.bin"
    record.write_bytes(b"")
    script = f"set -eu\n{RECORD}\n{block}\n"
    result = subprocess.run(["bash", "-c", script], cwd=cwd, capture_output=True, text=True,
                            env={"RECORD": str(record), "PATH": "/usr/bin:/bin"})  # fmt: skip
    assert result.returncode == 0, f"bash: {result.stderr}"
    commands = []
    for entry in record.read_bytes().split(b"\n"):
        args = [a.decode() for a in entry.split(b"\0") if a]
        if args:
            commands.append(args[1:])  # without "boxseg"
    return commands


def tiny(argv: list[str], num_full: int) -> list[str]:
    """`argv` with --num-full (and rank's --top) scaled to the tiny tree and the tiny settings
    appended."""
    argv = list(argv)
    for k, a in enumerate(argv[:-1]):
        if a == "--num-full":
            argv[k + 1] = str(min(int(argv[k + 1]), num_full))
        if a == "--top":
            argv[k + 1] = str(min(int(argv[k + 1]), 2))
    if argv and argv[0] == "eval" and "--scales" in argv:
        argv[argv.index("--scales") + 1] = "0.75,1.0"
    extra = TINY.get(argv[0], [])
    if argv[0] == "eval" and "--model" not in argv:  # (--device is for models only)
        extra = ["--quiet"]
    return argv + extra


def _layout(text: str, root: Path) -> int:
    """Write the tree a block reads under `root`; returns the F size that fits it."""
    if "VOCdevkit" in text:
        write_voc(root / "VOCdevkit" / "VOC2012", n_train=8, n_seg=4, n_val=2)
        return 4
    if " CS " in text:
        write_cityscapes(root / "CS", per_city=2, split="train")
        write_cityscapes(root / "CS", per_city=1, split="val")
        return 2
    if "DATA=mydata" in text:  # the README's own-data folder: F = the images with a mask
        write_folder(root / "mydata", with_png=(0, 1, 6, 7))  # val's two masked too
        return 3
    if "shared/data/camvid" in text:
        write_synthetic(root / "project" / ".." / "shared" / "data" / "camvid", 12, 4, size=32,
                        seed=1)  # fmt: skip
        return 4
    return 8  # the demo's own data (block writes it)


CONTINUED = re.compile(r"^\s*boxseg [a-z-]+ \$D\b")  # blocks that go on from the CamVid block


def runnable() -> list[tuple[str, str]]:
    """(name, script) of the blocks that run the pipeline, PAGES in order; a block that only
    continues the CamVid block (it uses its D, S, M, T, as the text around it says), on its
    page or a later one, runs after it, in one script."""
    out: list[list[str]] = []
    camvid = None
    for page in PAGES:
        for line, text in blocks(page):
            if not re.search(r"\bboxseg (train-anc|gen-logits|train-primary|eval)\b", text):
                continue
            if " DATA " in text:  # the GPU flags sketch (DATA, ...): not a runnable block
                continue
            if CONTINUED.match(text) and camvid is not None and "D=" not in text:
                camvid[0] += f" + {page} line {line}"
                camvid[1] += "\n" + text
                continue
            out.append([f"{page} line {line}", text])
            if "shared/data/camvid" in text:
                camvid = out[-1]
    return [(name, text) for name, text in out]


BLOCKS = runnable()


@pytest.mark.parametrize("name,script", BLOCKS, ids=[n for n, _ in BLOCKS])
def test_readme_block_runs_as_written(name, script, tmp_path, capsys, monkeypatch):
    cwd = tmp_path / "project"
    cwd.mkdir()
    num_full = _layout(script, tmp_path if "shared/data/camvid" in script else cwd)
    commands = recorded(script, cwd)
    assert commands, f"{name}: no boxseg command recorded"
    monkeypatch.chdir(cwd)
    for argv in commands:
        argv = tiny(argv, num_full)
        code, _, err = run_cli(argv, capsys)
        assert code == 0, f"{name}: boxseg {shlex.join(argv)}\n{err}"


def test_the_blocks_are_found():
    names = " ".join(text for _, text in BLOCKS)
    assert len(BLOCKS) >= 5 and "VOCdevkit" in names and " CS " in names and "demo" in names
    assert "DATA=mydata" in names  # the README's own-data commands
    camvid = next(name for name, text in BLOCKS if "shared/data/camvid" in text)
    assert camvid.count(" + ") >= 3, camvid  # the continuations ran: self-training, box, rank
