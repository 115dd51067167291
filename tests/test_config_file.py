"""--config FILE: option values from TOML or YAML, flags override them."""

import json

from tests.conftest import TINY_MODEL, run_cli


def test_toml_config_sets_options_and_flags_override(tiny_data, tmp_path, capsys):
    cfg = tmp_path / "anc.toml"
    cfg.write_text('num-full = 4\niters = 2\nbatch_size = 2\ncrop = 32\ndevice = "cpu"\n'
                   'lr = 0.005\nquiet = true\nval-split = ""\n')  # fmt: skip
    out = tmp_path / "r"
    code, _, err = run_cli(["train-anc", tiny_data, "--out", out, "--config", cfg, *TINY_MODEL,
                            "--lr", "0.002"], capsys)  # fmt: skip
    assert code == 0, err
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["iters"] == 2 and config["train"]["crop"] == 32
    assert config["num_full"] == 4
    assert config["train"]["lr"] == 0.002  # the flag wins over the file


def test_yaml_config_and_bad_configs(tiny_data, tmp_path, capsys):
    cfg = tmp_path / "anc.yaml"
    cfg.write_text("num_full: 4\niters: 2\nbatch-size: 2\ncrop: 32\ndevice: cpu\nquiet: true\n")
    code, _, err = run_cli(["train-anc", tiny_data, "--out", tmp_path / "y", "--config", cfg,
                            *TINY_MODEL], capsys)  # fmt: skip
    assert code == 0, err
    assert json.loads((tmp_path / "y" / "config.json").read_text())["train"]["batch_size"] == 2

    bad = tmp_path / "bad.toml"
    bad.write_text("iterz = 3\n")
    code, _, err = run_cli(["train-anc", tiny_data, "--out", tmp_path / "b", "--config", bad],
                           capsys)  # fmt: skip
    assert code == 2 and "bad.toml: 'iterz' is not an option of train-anc" in err
    bad.write_text("iters = = 3\n")
    code, _, err = run_cli(["train-anc", tiny_data, "--out", tmp_path / "b", "--config", bad],
                           capsys)  # fmt: skip
    assert code == 2 and "bad.toml: not a valid config file" in err
    code, _, err = run_cli(["train-anc", tiny_data, "--out", tmp_path / "b", "--config",
                            tmp_path / "none.toml"], capsys)  # fmt: skip
    assert code == 2 and "none.toml: config file not found" in err
