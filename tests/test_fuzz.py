"""A seeded mutation fuzzer for boxseg's input contract (docs/reliability.md): a valid fixture of
each layout and box format, a store, a model file and a config file, each mutated (truncated,
random bytes, a byte-order mark, another encoding, CRLF, a deleted file, wrong types or
missing fields in JSON, out-of-range numbers, swapped sizes), then the stage that reads it is
run. The contract: exit 0, or exit 2 with one `boxseg: error:` line; never a traceback; every
file that was there before is byte-identical afterwards.

`BOXSEG_FUZZ=N` runs N mutations per fixture (default 10: about a minute in all);
`BOXSEG_FUZZ_SEED` picks another seed. A failure names fixture, case number, mutation and file,
which reproduce it."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_cli
from tests.data.test_box_files import write_box_folder
from tests.data.test_cityscapes import write_cityscapes
from tests.data.test_folder import write_folder
from tests.data.test_voc import write_voc

CASES = int(os.environ.get("BOXSEG_FUZZ", "10"))
SEED = int(os.environ.get("BOXSEG_FUZZ_SEED", "0"))
TEXT = (".txt", ".json", ".xml", ".yaml", ".toml")
ODD_NUMBERS = ["-1", "0", "1e9", "nan", "inf", "x", "99999", "-0.5", "3.7", ""]


# --- mutations: bytes of one file -> new bytes (None: delete the file) -----------------------


def truncate(rng, data: bytes, path: Path) -> bytes:
    return data[: int(rng.integers(0, max(1, len(data))))]


def random_span(rng, data: bytes, path: Path) -> bytes:
    if not data:
        return rng.bytes(16)
    start = int(rng.integers(0, len(data)))
    n = int(rng.integers(1, min(64, len(data) - start) + 1))
    return data[:start] + rng.bytes(n) + data[start + n :]


def bom(rng, data: bytes, path: Path) -> bytes:
    return b"\xef\xbb\xbf" + data


def latin1(rng, data: bytes, path: Path) -> bytes:
    """A non-ASCII character in another encoding (Latin-1 e-acute) at a line start."""
    lines = data.split(b"\n")
    k = int(rng.integers(0, len(lines)))
    lines[k] = b"\xe9" + lines[k]
    return b"\n".join(lines)


def crlf(rng, data: bytes, path: Path) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def delete(rng, data: bytes, path: Path) -> None:
    return None


def odd_number(rng, data: bytes, path: Path) -> bytes:
    """One number in a text file replaced by a negative, huge, NaN, fractional or non-number."""
    text = data.decode("utf-8", "replace")
    found = list(re.finditer(r"-?\d+(\.\d+)?", text))
    if not found:
        return random_span(rng, data, path)
    m = found[int(rng.integers(0, len(found)))]
    new = ODD_NUMBERS[int(rng.integers(0, len(ODD_NUMBERS)))]
    return (text[: m.start()] + new + text[m.end() :]).encode()


def _json_nodes(obj, trail=()):
    yield trail, obj
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) \
        else ()  # fmt: skip
    for k, v in items:
        yield from _json_nodes(v, (*trail, k))


def json_shape(rng, data: bytes, path: Path) -> bytes:
    """A JSON value replaced by one of another type, a field deleted, or a width and height
    swapped."""
    try:
        doc = json.loads(data)
    except ValueError:
        return odd_number(rng, data, path)
    nodes = [(t, v) for t, v in _json_nodes(doc) if t]
    if not nodes:
        return b"[]"
    trail, _ = nodes[int(rng.integers(0, len(nodes)))]
    parent = doc
    for k in trail[:-1]:
        parent = parent[k]
    key, choice = trail[-1], int(rng.integers(0, 4))
    if choice == 0 and isinstance(parent, dict):
        del parent[key]
    elif choice == 1 and isinstance(parent, dict) and {"width", "height"} <= parent.keys():
        parent["width"], parent["height"] = parent["height"], parent["width"] + 8
    else:
        parent[key] = [None, "x", -1, {"a": 1}, [1, 2], 1e12, True][int(rng.integers(0, 7))]
    return json.dumps(doc).encode()


BINARY = [truncate, random_span, delete]
ALL_TEXT = [truncate, random_span, bom, latin1, crlf, delete, odd_number]


def mutations_for(path: Path) -> list[Callable]:
    if path.suffix == ".json" or path.name == "zarr.json":
        return [*ALL_TEXT, json_shape, json_shape]
    return ALL_TEXT if path.suffix in TEXT else BINARY


# --- fixtures: (a valid tree, the files to mutate, the command that reads them) --------------


def _segnet(root: Path, pipeline: dict) -> Path:
    return Path(shutil.copytree(pipeline["data"], root / "d"))


def _box_fill(data: Path, out: Path, *extra) -> list:
    return ["gen-logits", data, "--method", "box", "--out", out / "w.zarr", "--quiet", *extra]


FIXTURES: dict[str, tuple[Callable, Callable]] = {
    # name: (build(root, pipeline) -> data dir, argv(data, root, out) -> command)
    "segnet": (_segnet, lambda d, r, o: _box_fill(d, o, "--num-full", "4")),
    "folder-coco": (lambda r, p: write_folder(r / "d"), lambda d, r, o: _box_fill(d, o)),
    "folder-yolo": (lambda r, p: write_box_folder(r / "d", "yolo", names="data.yaml"),
                    lambda d, r, o: _box_fill(d, o)),
    "folder-voc-xml": (lambda r, p: write_box_folder(r / "d", "voc_xml"),
                       lambda d, r, o: _box_fill(d, o)),
    "voc": (lambda r, p: write_voc(r / "d"),
            lambda d, r, o: _box_fill(d, o, "--split", "train_aug", "--num-full", "2")),
    "cityscapes": (lambda r, p: write_cityscapes(r / "d"),
                   lambda d, r, o: _box_fill(d, o, "--num-full", "2")),
}  # fmt: skip


def _store(root: Path, pipeline: dict) -> Path:
    shutil.copytree(pipeline["data"], root / "d")
    shutil.copytree(pipeline["store"], root / "s.zarr")
    return root / "s.zarr"


def _model(root: Path, pipeline: dict) -> Path:
    shutil.copytree(pipeline["data"], root / "d")
    shutil.copy(pipeline["anc"], root / "m.pt")
    return root / "m.pt"


def _config(root: Path, pipeline: dict) -> Path:
    shutil.copytree(pipeline["data"], root / "d")
    (root / "c.toml").write_text('stride = 4\ndtype = "float16"\nconfidence = 0.9\n'
                                 "num-full = 4\nbox-min-area = 16\n")  # fmt: skip
    return root / "c.toml"


FIXTURES |= {
    "store": (_store, lambda s, r, o: ["eval", r / "d", "--split", "train", "--logits", s,
                                       "--quiet"]),
    "model": (_model, lambda m, r, o: ["eval", r / "d", "--split", "val", "--model", m,
                                       "--device", "cpu", "--quiet"]),
    "config": (_config, lambda c, r, o: ["gen-logits", r / "d", "--method", "box", "--config", c,
                                         "--out", o / "w.zarr", "--quiet"]),
}  # fmt: skip


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}  # fmt: skip


def run_case(root: Path, argv: list, capsys) -> str | None:
    """Run one command; None if it kept the contract, else what went wrong."""
    inputs = root / "in"
    before = snapshot(inputs)
    try:
        code, _, err = run_cli(argv, capsys)
    except Exception as e:  # noqa: BLE001 - a traceback is exactly what the fuzzer looks for
        return f"raised {type(e).__name__}: {str(e)[:200]}"
    if code not in (0, 2):
        return f"exit {code}: {err.strip()[-300:]}"
    lines = err.strip().splitlines()
    if code == 2 and not (len(lines) == 1 and lines[0].startswith("boxseg: error: ")):
        return f"exit 2 but stderr was: {err.strip()[-300:]}"
    if snapshot(inputs) != before:
        return "an input file changed"
    return None


@pytest.mark.parametrize("fixture", list(FIXTURES))
def test_mutated_inputs_keep_the_contract(fixture, pipeline, tmp_path, capsys):
    build, command = FIXTURES[fixture]
    base = tmp_path / "base"
    target = build(base, pipeline)
    rng = np.random.default_rng([SEED, list(FIXTURES).index(fixture)])
    # the valid fixture runs through
    case = tmp_path / "valid"
    shutil.copytree(base, case / "in")
    where = case / "in" / target.relative_to(base)
    argv = command(where, case / "in", case / "out")
    code, _, err = run_cli(argv, capsys)
    assert code == 0, f"the valid {fixture} fixture: {err}"
    files = [p for p in sorted(base.rglob("*")) if p.is_file()
             and (p == target or target in p.parents)]  # fmt: skip
    weights = np.array([3.0 if p.suffix in TEXT or p.name == "zarr.json" else 1.0 for p in files])
    failures = []
    for k in range(CASES):
        path = files[int(rng.choice(len(files), p=weights / weights.sum()))]
        mutations = mutations_for(path)
        mutate = mutations[int(rng.integers(0, len(mutations)))]
        case = tmp_path / f"case{k}"
        shutil.copytree(base, case / "in")
        victim = case / "in" / path.relative_to(base)
        new = mutate(rng, victim.read_bytes(), victim)
        if new is None:
            victim.unlink()
        else:
            victim.write_bytes(new)
        where = case / "in" / target.relative_to(base)
        problem = run_case(case, command(where, case / "in", case / "out"), capsys)
        if problem:
            failures.append(f"{fixture} case {k} ({mutate.__name__} of "
                            f"{path.relative_to(base)}): {problem}")  # fmt: skip
        shutil.rmtree(case, ignore_errors=True)
    assert not failures, "\n".join(failures)
