"""kill -9 of train-anc and train-primary 5 times each (every relaunch of the same command, with
--resume, is killed again, then one runs to the end): the final weights equal an uninterrupted
run's, bit for bit. scripts/kill_check.py does 20 independent kills per command."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import kill_check  # noqa: E402

FRACTIONS = [0.5, 0.6, 0.7, 0.8, 0.9]  # of an uninterrupted run's duration, per launch


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return kill_check.prepare(tmp_path_factory.mktemp("kill"))


@pytest.mark.parametrize("command", ["train-anc", "train-primary"])
def test_trainer_killed_five_times_ends_with_the_same_weights(prepared, tmp_path, command):
    rows = kill_check.check_chain(command, prepared, tmp_path, FRACTIONS)
    assert len(rows) == 5
    assert all(r["equal"] for r in rows), rows
    assert any(r["killed"] for r in rows)  # at least some kills landed while it was running
