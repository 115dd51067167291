"""`boxseg eval`'s options as one value: the CLI builds EvalOptions, its test-time settings
reach every prediction, and what cannot work is refused before anything is read."""

import re
from dataclasses import replace
from pathlib import Path

import pytest

import boxseg.evaluate as ev
from boxseg.box_constraint import BoxConstraint
from boxseg.data.split import SplitSpec
from boxseg.errors import BoxsegError
from boxseg.rank import HEADER
from tests.conftest import run_cli


def test_the_cli_passes_one_options_value(tiny_data, tmp_path, capsys, monkeypatch):
    """Every eval flag lands in its field of EvalOptions (and TestTime)."""
    seen = []
    monkeypatch.setattr(ev, "run_eval", lambda opts, quiet: seen.append((opts, quiet)))
    monkeypatch.chdir(tmp_path)
    flags = (
        "--model m.pt --split train --scales 0.75,1 --flip --window 16 --no-box-constraint "
        "--box-prior 1 --box-penalty 5 --json s.json --save-pred preds --num-full 4 "
        "--seed-split 1 --device cpu --quiet"
    )
    code, _, err = run_cli(["eval", tiny_data, *flags.split()], capsys)
    assert code == 0, err
    how = ev.TestTime((0.75, 1.0), True, 16, BoxConstraint(False, 1.0, 5.0))
    expected = ev.EvalOptions(
        tiny_data,
        "train",
        model_path=Path("m.pt"),
        json_out=Path("s.json"),
        save_pred=Path("preds"),
        test_time=how,
        device="cpu",
        weak_of=SplitSpec("train", 4, 1),
    )
    assert seen == [(expected, True)]
    ranking = tmp_path / "r.csv"
    rows = [",".join(HEADER), *(f"{k},id{k}" + "," * (len(HEADER) - 2) for k in (1, 2, 3))]
    ranking.write_text("\n".join(rows) + "\n")
    args = ["eval", tiny_data, "--logits", "w.zarr", "--ranking", ranking, "--top", "2"]
    code, _, err = run_cli([*args, "--quiet"], capsys)
    assert code == 0, err
    assert seen[1] == (ev.EvalOptions(tiny_data, logits="w.zarr", only=("id1", "id2")), True)


def test_test_time_settings_reach_every_prediction(pipeline, monkeypatch):
    """run_eval hands its TestTime to evaluate_model, which runs each image with it."""
    calls, rules = [], []
    real_predict, real_rule = ev.predict_on_device, ev.rule_of

    def predict(model, meta, image, device, boxes, labels, scales, flip, window, rule):
        calls.append((scales, flip, window))
        return real_predict(model, meta, image, device, boxes, labels, scales, flip, 0, rule)

    monkeypatch.setattr(ev, "predict_on_device", predict)
    monkeypatch.setattr(
        ev, "rule_of", lambda meta, option: rules.append(option) or real_rule(meta, option)
    )
    how = ev.TestTime((0.75, 1.0), True, 16, BoxConstraint(True, 2.0, 5.0))
    opts = ev.EvalOptions(pipeline["data"], "val", pipeline["anc"], test_time=how, device="cpu")
    result = ev.run_eval(opts, quiet=True)
    assert 0 <= result["miou"] <= 100
    assert calls and set(calls) == {((0.75, 1.0), True, 16)}
    assert rules == [BoxConstraint(True, 2.0, 5.0)]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"model_path": None}, "give exactly one of --model, --pred-dir or --logits"),
        ({"logits": "w.zarr"}, "give exactly one of --model, --pred-dir or --logits"),
        ({"test_time": ev.TestTime(window=8)}, "--window 8: 0 (whole images) or at least 16"),
        ({"test_time": ev.TestTime(constraint=BoxConstraint(penalty=0.0))}, "--box-penalty 0"),
    ],
)
def test_options_that_cannot_work_are_refused_before_anything_is_read(tmp_path, change, message):
    """validate() runs first: the option is named, not the missing dataset or model."""
    opts = ev.EvalOptions(tmp_path / "no-data", model_path=tmp_path / "m.pt")
    with pytest.raises(BoxsegError, match=re.escape(message)):
        ev.run_eval(replace(opts, **change), quiet=True)
