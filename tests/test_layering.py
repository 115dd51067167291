"""The package's layering: W's targets in one home, and no module importing one above it."""

import ast
from pathlib import Path

import boxseg

ROOT = Path(boxseg.__file__).parent

# ground floor first: a module may import only modules of its own or a lower layer
LAYERS = [
    ["errors", "io", "outputs", "cells", "data.sample", "data.boxes"],
    ["box_constraint"],
    ["data.transforms", "data.formats", "data.sampling", "data.torchsets"],
    ["store", "box_losses"],
    ["weak_targets"],
    ["selfcorr"],
    ["train_primary", "train_anc", "gen_logits", "evaluate", "viz", "inference", "rank"],
    ["cli"],
]


def imports_of(name: str) -> set[str]:
    """The boxseg modules `name` imports anywhere in its file (function-local ones too)."""
    path = ROOT / (name.replace(".", "/") + ".py")
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("boxseg"):
            mod = node.module.removeprefix("boxseg").lstrip(".")
            found |= {f"{mod}.{a.name}".lstrip(".") if not mod else mod for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("boxseg.") for a in node.names
                      if a.name.startswith("boxseg.")}  # fmt: skip
    return {m for m in found if (ROOT / (m.replace(".", "/") + ".py")).is_file()}


def test_no_module_imports_one_above_it():
    level = {m: k for k, layer in enumerate(LAYERS) for m in layer}
    for name, k in level.items():
        above = {m for m in imports_of(name) if level.get(m, -1) > k}
        assert not above, f"{name} imports {above}, which stand above it"


def test_the_package_has_no_import_cycle():
    modules = [p.relative_to(ROOT).with_suffix("").as_posix().replace("/", ".")
               for p in ROOT.rglob("*.py") if p.name != "__init__.py"]  # fmt: skip
    graph = {m: imports_of(m) for m in modules}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        if state.get(m) == 2:
            return
        assert state.get(m) != 1, " -> ".join(path + [m])
        state[m] = 1
        for n in graph.get(m, ()):
            visit(n, path + [m])
        state[m] = 2

    for m in modules:
        visit(m, [])


def test_w_targets_live_in_one_module():
    """How q is made for a W crop: weak_targets.py holds the sets and the sources; the old
    homes are gone."""
    assert not (ROOT / "targets.py").exists()
    names = ast.parse((ROOT / "weak_targets.py").read_text())
    defined = {n.name for n in names.body if isinstance(n, (ast.ClassDef, ast.FunctionDef))}
    assert {"WeakTrainSet", "OnlineWeakTrainSet", "StoredLogits", "OnlineAncillary",
            "Constrained", "without_void", "check_sizes"} <= defined  # fmt: skip


def test_train_primary_entry_point_is_short():
    tree = ast.parse((ROOT / "train_primary.py").read_text())
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "train_primary")
    assert fn.end_lineno - fn.lineno + 1 < 80
