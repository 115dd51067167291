import json

from boxseg.checkpoint import read_checkpoint
from tests.conftest import TINY_MODEL, TINY_TRAIN, run_cli


def test_box_noise_is_an_option_recorded_in_model_and_config(
    tiny_data, tmp_path, capsys, monkeypatch
):
    """train-anc --box-noise reaches the F items the net trains on, and is recorded."""
    from boxseg.data import torchsets

    calls = []
    real = torchsets.noisy_boxes
    monkeypatch.setattr(
        torchsets, "noisy_boxes", lambda *a, **k: calls.append(a[4]) or real(*a, **k)
    )
    base = ["train-anc", tiny_data, "--num-full", "4", *TINY_MODEL, *TINY_TRAIN]
    code, _, err = run_cli([*base, "--out", tmp_path / "a", "--box-noise", "mixed"], capsys)
    assert code == 0, err
    noise = {"shift": 0.1, "grow": 0.1, "drop": 0.1, "flip": 0.0}
    assert calls and all(c.to_dict() == noise for c in calls)  # every F item drew noise
    calls.clear()
    code, _, err = run_cli([*base, "--out", tmp_path / "off"], capsys)
    assert code == 0 and not calls
    assert read_checkpoint(tmp_path / "a" / "model.pt")["box_noise"] == noise
    assert json.loads((tmp_path / "a" / "config.json").read_text())["box_noise"] == noise
    code, _, err = run_cli([*base, "--out", tmp_path / "b", "--box-noise", "shift=0.7"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "shift=0.7" in err
    assert not (tmp_path / "b").exists()
