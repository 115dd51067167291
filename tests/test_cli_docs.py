"""docs/cli.md is the CLI as it is: regenerated from the typer app, it must be unchanged, and
every option `--help` lists is on it."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_cli_reference_is_what_the_app_generates(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "240")  # --help's options unwrapped
    sys.path.insert(0, str(ROOT / "scripts"))
    cli_docs = importlib.import_module("cli_docs")
    page = (ROOT / "docs" / "cli.md").read_text()
    assert page == cli_docs.reference(), "docs/cli.md drifted: run python scripts/cli_docs.py"
    from tests.conftest import run_cli

    for command in ("train-anc", "gen-logits", "train-primary", "eval", "rank"):
        code, out, _ = run_cli([command, "--help"], capsys)
        assert code == 0
        options = set(re.findall(r"--[a-z][a-z0-9-]+", out)) - {"--help"}
        section = page.split(f"## `boxseg {command}`")[1].split("\n## ")[0]
        missing = [o for o in options if not re.search(rf"{re.escape(o)}(?![a-z0-9-])", section)]
        assert not missing, f"{command}: {missing} in --help but not in docs/cli.md"
