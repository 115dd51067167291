"""The package's layering: W's targets in one home, and no module importing one above it."""

import ast
import subprocess
import sys
from pathlib import Path

import boxseg

ROOT = Path(boxseg.__file__).parent

# ground floor first: a module may import only modules of its own or a lower layer
LAYERS = [
    ["errors", "io", "outputs", "cells", "passes", "data.sample", "data.boxes"],
    ["box_constraint"],
    ["data.transforms", "data.formats", "data.sampling", "data.torchsets"],
    ["store", "box_losses"],
    ["weak_targets"],
    ["losses"],
    ["selfcorr"],
    ["primary_options"],
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


def defined_in(name: str) -> set[str]:
    """The classes and functions module `name` defines at its top level."""
    tree = ast.parse((ROOT / (name.replace(".", "/") + ".py")).read_text())
    return {n.name for n in tree.body if isinstance(n, (ast.ClassDef, ast.FunctionDef))}


def test_w_targets_live_in_one_module():
    """How q is made for a W crop: weak_targets.py holds the sets and the sources; the old
    homes are gone."""
    assert not (ROOT / "targets.py").exists()
    sets = {"WeakTrainSet", "OnlineWeakTrainSet", "StoredLogits", "OnlineAncillary"}
    assert sets | {"Constrained", "without_void"} <= defined_in("weak_targets")


def test_one_module_per_idea():
    """The losses apart from the corrections that make W's targets, the dataset checks with
    the dataset, the same-size passes on the ground floor (gen-logits and rank share them)."""
    losses = {"hard_cross_entropy", "soft_cross_entropy", "hardest_mean", "weak_loss_scale"}
    losses |= {"Objective", "Correction"}
    corrections = {"NoCorrection", "LinearCorrection", "ConvCorrection", "ConvMerger"}
    corrections |= {"soft_target", "make_correction"}
    assert losses <= defined_in("losses") and not losses & defined_in("selfcorr")
    assert corrections <= defined_in("selfcorr") and not corrections & defined_in("losses")
    assert "check_sizes" in defined_in("data.validate")
    assert "check_sizes" not in defined_in("weak_targets")
    assert "forward_passes" in defined_in("passes")
    assert "forward_passes" not in defined_in("gen_logits")


def test_reference_paths_the_trainer_never_runs_live_with_the_tests():
    """The plain resize-then-crop path and whole-window logits crops are tests' references
    (tests/helpers), not package code beside the crop-first path training runs."""
    assert not {"resize_then_crop", "crop_logits"} & defined_in("data.transforms")
    assert "cells_needed" not in defined_in("cells")
    from boxseg.data.transforms import Aligned

    assert "logits" not in Aligned.__dataclass_fields__


def parameters(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """How many parameters a caller can pass (self and cls not counted)."""
    a = fn.args
    names = [*a.posonlyargs, *a.args, *a.kwonlyargs]
    count = len(names) + (a.vararg is not None) + (a.kwarg is not None)
    return count - (bool(names) and names[0].arg in ("self", "cls"))


def is_cli_command(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """A typer command (`@app.command(...)`): its parameters are the stage's flags, which typer
    reads one parameter a flag; the command builds the stage's options value from them."""
    return any(
        isinstance(d, ast.Call) and isinstance(d.func, ast.Attribute) and d.func.attr == "command"
        for d in fn.decorator_list
    )


def test_options_travel_as_values_not_long_argument_lists():
    """No function in the package takes more than 10 parameters (the CLI's commands, whose
    parameters are the flags, aside): a stage's options travel as one frozen value."""
    long = []
    for path in sorted(ROOT.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not is_cli_command(
                node
            ):
                if parameters(node) > 10:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert not long, long


def test_the_counter_sees_a_long_list():
    tree = ast.parse("def f(self, a, b, /, c, *d, e, **f): pass\n@app.command()\ndef g(): pass")
    f, g = tree.body
    assert parameters(f) == 6 and not is_cli_command(f) and is_cli_command(g)


def test_the_package_is_ruff_formatted_with_few_exemptions():
    """`ruff format` is the package's layout; `# fmt: skip` only where a table reads better."""
    skips = sum(p.read_text().count("# fmt: skip") for p in ROOT.rglob("*.py"))
    assert skips < 20
    check = [sys.executable, "-m", "ruff", "format", "--check", str(ROOT)]
    done = subprocess.run(check, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
