"""Every number of the published results tables recomputes from the JSON under docs/runs
(scripts/check_tables.py), and the check fails, naming the cell, when a printed value, a JSON
value or a lost-seed mark is wrong."""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
check_tables = importlib.import_module("check_tables")
PAGES = ("README.md", "docs/results.md", "docs/training.md")


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """The checked pages and docs/runs, copied so that a test may spoil them."""
    for page in PAGES:
        (tmp_path / page).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / page, tmp_path / page)
    shutil.copytree(ROOT / "docs" / "runs", tmp_path / "docs" / "runs")
    return tmp_path


def replace_once(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert text.count(old) == 1, f"{old!r} is not in {path.name} exactly once"
    path.write_text(text.replace(old, new), encoding="utf-8")


def test_the_published_tables_agree_with_their_json():
    checker = check_tables.check()
    assert checker.errors == []
    pages = {t.page for t in check_tables.TABLES}
    assert {"README.md", "docs/results.md"} <= pages
    assert len(checker.json) > 80  # the rows' JSON files were read, not skipped


def test_the_script_exits_0_when_every_cell_agrees():
    script = ROOT / "scripts" / "check_tables.py"
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
    assert "agree with docs/runs" in result.stdout


def test_a_printed_mean_off_by_more_than_0_01_fails_naming_its_cell(copy):
    replace_once(copy / "README.md", "| **48.21 +- 1.50** |", "| **48.23 +- 1.50** |")
    assert check_tables.main(copy) == 1
    (error,) = check_tables.check(copy).errors
    assert "README.md" in error and "`--self-corr none` (the default)" in error
    assert "column 2" in error and "printed 48.23, recomputed 48.21" in error


def test_a_rounding_within_0_01_passes_and_beyond_it_fails(copy):
    replace_once(copy / "README.md", "| **48.21 +- 1.50** |", "| **48.20 +- 1.50** |")
    assert check_tables.check(copy).errors == []  # recomputed: 48.2085
    replace_once(copy / "README.md", "| **48.20 +- 1.50** |", "| **48.22 +- 1.50** |")
    assert len(check_tables.check(copy).errors) == 1


def test_a_changed_json_value_fails_every_cell_that_uses_it(copy):
    path = copy / "docs" / "runs" / "camvid_unseen_modes" / "none_s0.json"
    run = json.loads(path.read_text())
    run["unseen"]["miou"] += 0.5
    path.write_text(json.dumps(run))
    errors = check_tables.check(copy).errors
    assert any("README.md" in e and "`--self-corr none`" in e and "column 3" in e for e in errors)
    assert any("docs/results.md" in e and "28.82" in e for e in errors)  # the per-seed value


def lost_f_only(copy: Path) -> list[str]:
    """The errors of section 1.0's F-only row checked as if its seed-0 JSON were lost."""
    lost = check_tables.seeds(
        check_tables.U + "f_only_s{s}.json", {0: check_tables.Lost("f_only_s0")}
    )
    table = check_tables.unseen_table()
    row = "F only (62 frames of 0001TP)"
    checker = check_tables.Checker(copy)
    checker.check_table(
        check_tables.Table(table.page, table.header, table.rows | {row: check_tables.both(lost)})
    )
    return checker.errors


def test_a_lost_seed_must_be_marked_and_read_the_same_everywhere(copy):
    assert lost_f_only(copy) and all("F only" in e for e in lost_f_only(copy))
    assert any("seed 0 has no JSON: mark it †" in e for e in lost_f_only(copy))
    row = "| F only (62 frames of 0001TP) | 23.88 +- 2.38 "
    replace_once(copy / "docs" / "results.md", row + "(23.52,", row + "(23.62†,")
    errors = lost_f_only(copy)
    assert any("F only" in e and "printed 23.88, recomputed 23.91" in e for e in errors)
    replace_once(
        copy / "docs" / "results.md",
        row + "(23.62†",
        row.replace("23.88 +- 2.38", "23.91 +- 2.37") + "(23.62†",
    )
    assert not [e for e in lost_f_only(copy) if "column 2" in e]  # unseen (column 3) unmarked


def test_a_recorded_seed_marked_lost_fails(copy):
    old = "| 48.21 +- 1.50 (49.26, 46.49, 48.88) | 28.73 +- 0.74 (28.82, 29.42, 27.96) |"
    text = (copy / "docs" / "results.md").read_text(encoding="utf-8")
    first = text.index(old)
    spoiled = old.replace("(49.26,", "(49.26†,")
    (copy / "docs" / "results.md").write_text(
        text[:first] + spoiled + text[first + len(old) :], encoding="utf-8"
    )
    errors = check_tables.check(copy).errors
    assert any("has a JSON (camvid_unseen_modes/none_s0.json): drop the †" in e for e in errors)


def test_a_row_the_script_does_not_know_fails(copy):
    replace_once(
        copy / "README.md",
        "| all 266 masks, boxseg at 256 channels |",
        "| a new row | 1.00 +- 0.00 | 1.00 +- 0.00 |\n| all 266 masks, boxseg at 256 channels |",
    )
    errors = check_tables.check(copy).errors
    assert errors == [
        "README.md: table '| row (F = 62 frames of 0001TP, W = 204 of 0016E5) |': row "
        "'a new row' is not checked by this script"
    ]
