"""`boxseg train-primary` builds one PrimaryOptions value: every flag lands in its own field
(nested ones included), and a flag the chosen mode would ignore is refused before the stage
runs. The stage itself is replaced, so nothing is trained."""

import shlex
from dataclasses import fields, is_dataclass, replace
from pathlib import Path

import pytest

import boxseg.train_primary as tp
from boxseg.data.split import SplitSpec
from boxseg.engine import TrainConfig
from boxseg.models import ModelSpec
from boxseg.primary_options import PrimaryOptions
from tests.conftest import run_cli

# Each case: the flags given (besides --out run --quiet) and the fields they change in the
# default value, nested as the option values nest. Within a case the non-bool values differ
# from each other and from their defaults, so a flag landing in another field (two swapped
# arguments) or in none shows as a named difference.
CASES = {
    "linear from a store": (
        "--logits w.zarr --self-corr linear --alpha-start 7 --alpha-end 3 "
        "--alpha-decay-fraction 0.25 --weak-weight 0.75 --weak-batch-size 5 --weak-boxes "
        "--weak-box-weight 0.4 --class-weights median-freq --hard-pixels 0.6 --split trainval "
        "--num-full 6 --seed-split 2 --arch deeplabv3plus --encoder resnet34 --output-stride 8 "
        "--pretrained imagenet --decoder-channels 40 --iters 11 --batch-size 4 --crop 48 "
        "--scale-min 0.8 --scale-max 1.5 --lr 0.02 --optimizer adamw --weight-decay 0.001 "
        "--seed 9 --device cpu --workers 1 --amp bf16 --channels-last --compile "
        "--checkpoint-every 13 --resume --val-split test --skip-bad",
        {
            "split": {"split": "trainval", "num_full": 6, "seed": 2},
            "model": {
                "arch": "deeplabv3plus",
                "backbone": "resnet34",
                "output_stride": 8,
                "decoder_channels": 40,
            },
            "train": {
                "iters": 11,
                "batch_size": 4,
                "crop": 48,
                "scale_min": 0.8,
                "scale_max": 1.5,
                "lr": 0.02,
                "optimizer": "adamw",
                "weight_decay": 0.001,
                "seed": 9,
                "device": "cpu",
                "workers": 1,
                "amp": "bf16",
                "channels_last": True,
                "compile": True,
                "checkpoint_every": 13,
                "resume": True,
            },
            "weak": {
                "logits": "w.zarr",
                "weight": 0.75,
                "batch_size": 5,
                "boxes": {"enabled": True, "weight": 0.4},
            },
            "correction": {
                "mode": "linear",
                "alpha_start": 7.0,
                "alpha_end": 3.0,
                "alpha_decay_fraction": 0.25,
            },
            "losses": {"class_weights": "median-freq", "hard_pixels": 0.6},
            "pretrained": "imagenet",
            "val_split": "test",
            "skip_bad": True,
        },
    ),
    "conv with both sources and a box rule": (
        "--anc-model anc.pt --logits w.zarr --self-corr conv --conv-hidden 12 --conv-warmup 5 "
        "--conv-grad-to-primary --box-prior 2.5 --box-penalty 8 --weak-weight 0.3 "
        "--weak-batch-size 6 --class-weights cw.txt --hard-pixels 0.9 --full-list f.txt "
        "--backbone mobilenet_v3_large --aspp-channels 32 --decoder-channels 20 --iters 17 "
        "--epochs 2 --batch-size 3 --crop 64 --lr 0.005 --seed 7 --device cpu "
        "--checkpoint-every 0 --overwrite --pretrained w.pth",
        {
            "split": {"full_list": Path("f.txt")},
            "model": {
                "backbone": "mobilenet_v3_large",
                "aspp_channels": 32,
                "decoder_channels": 20,
            },
            "train": {
                "iters": 17,
                "epochs": 2,
                "batch_size": 3,
                "crop": 64,
                "lr": 0.005,
                "seed": 7,
                "device": "cpu",
                "checkpoint_every": 0,
                "overwrite": True,
            },
            "weak": {
                "logits": "w.zarr",
                "anc_model": Path("anc.pt"),
                "weight": 0.3,
                "batch_size": 6,
                "constraint": {"prior": 2.5, "penalty": 8.0},
            },
            "correction": {
                "mode": "conv",
                "conv_hidden": 12,
                "conv_warmup": 5,
                "conv_grad_to_primary": True,
            },
            "losses": {"class_weights": "cw.txt", "hard_pixels": 0.9},
            "pretrained": "w.pth",
        },
    ),
    "linear online, void where no box is": (
        "--anc-model anc.pt --self-corr linear --alpha-end 0.25 --box-prior 1.5 --box-penalty 6 "
        "--box-uncovered void --weak-boxes --num-full 5 --output-stride 8 --val-split ''",
        {
            "split": {"num_full": 5},
            "model": {"output_stride": 8},
            "weak": {
                "anc_model": Path("anc.pt"),
                "constraint": {"prior": 1.5, "penalty": 6.0, "void_uncovered": True},
                "boxes": {"enabled": True},
            },
            "correction": {"mode": "linear", "alpha_end": 0.25},
            "val_split": None,
        },
    ),
    "conv on a full-F net, no box rule": (
        "--anc-model anc.pt --self-corr conv --allow-full-anc --no-box-constraint --weak-weight 0",
        {
            "weak": {
                "anc_model": Path("anc.pt"),
                "weight": 0.0,
                "constraint": {"enabled": False},
            },
            "correction": {"mode": "conv", "allow_full_anc": True},
        },
    ),
}


def changed(value, changes: dict):
    """`value` with `changes` applied (a dict changes the nested value of that name). Each
    change must differ from what it replaces: a flag the CLI dropped could not pass unseen."""
    new = {}
    for name, change in changes.items():
        old = getattr(value, name)
        if isinstance(change, dict):
            new[name] = changed(old, change)
        else:
            assert change != old, f"{name}={change!r} is its default: the case shows nothing"
            new[name] = change
    return replace(value, **new)


def leaves(changes: dict) -> list:
    """Every changed value of a case, nested ones included."""
    return [v for c in changes.values() for v in (leaves(c) if isinstance(c, dict) else [c])]


def differences(seen, expected, name: str = "opts") -> list[str]:
    """The dotted names (and both values) of the fields where two option values differ."""
    if is_dataclass(expected) and type(seen) is type(expected):
        found = []
        for f in fields(expected):
            here = f"{name}.{f.name}"
            found += differences(getattr(seen, f.name), getattr(expected, f.name), here)
        return found
    return [] if seen == expected else [f"{name}: got {seen!r}, expected {expected!r}"]


def given_flags(flags: str) -> set[str]:
    """The options a case's flags name, a negated switch under its positive name."""
    return {f.replace("--no-", "--") for f in shlex.split(flags) if f.startswith("--")}


@pytest.mark.parametrize("flags, changes", CASES.values(), ids=CASES.keys())
def test_every_flag_lands_in_its_field(tiny_data, tmp_path, capsys, monkeypatch, flags, changes):
    """The CLI hands train_primary the default PrimaryOptions with exactly this case's changes
    (each one a valid run: validate() accepts it)."""
    seen = []
    monkeypatch.setattr(tp, "train_primary", lambda opts, quiet: seen.append((opts, quiet)))
    monkeypatch.chdir(tmp_path)
    args = ["train-primary", tiny_data, "--out", "run", *shlex.split(flags), "--quiet"]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    values = [v for v in leaves(changes) if not isinstance(v, bool)]
    assert len(set(values)) == len(values), "a swap of two equal values would not show"
    default = PrimaryOptions(tiny_data, Path("run"), SplitSpec(), ModelSpec(), TrainConfig())
    expected = changed(default, changes)
    expected.validate()
    assert len(seen) == 1 and seen[0][1] is True
    assert differences(seen[0][0], expected) == []
    assert seen[0][0] == expected


def test_no_flags_give_the_default_value(tiny_data, tmp_path, capsys, monkeypatch):
    """The CLI's defaults are the option values' defaults, which the cases above change."""
    seen = []
    monkeypatch.setattr(tp, "train_primary", lambda opts, quiet: seen.append((opts, quiet)))
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["train-primary", tiny_data, "--out", "run"], capsys)
    assert code == 0, err
    default = PrimaryOptions(tiny_data, Path("run"), SplitSpec(), ModelSpec(), TrainConfig())
    assert [(differences(opts, default), quiet) for opts, quiet in seen] == [([], False)]


def test_every_option_of_the_command_is_given_in_some_case():
    """A flag added to train-primary without a case here would go unchecked: refused."""
    import typer.main

    from boxseg import cli

    command = typer.main.get_command(cli.app).commands["train-primary"]
    options = {p.opts[0] for p in command.params if p.param_type_name == "option"}
    given = set().union(*map(given_flags, (flags for flags, _ in CASES.values())))
    assert options - given == {"--out", "--quiet", "--config"}  # every run gives the first two


@pytest.mark.parametrize(
    "flags, message",
    [
        ("--logits w.zarr --alpha-start 7", "--alpha-start: not used with --self-corr none"),
        (
            "--anc-model a.pt --self-corr conv --alpha-decay-fraction 0.25",
            "--alpha-decay-fraction: not used with --self-corr conv",
        ),
        ("--logits w.zarr --self-corr linear --conv-hidden 12", "--conv-hidden: not used with"),
        ("--logits w.zarr --self-corr linear --allow-full-anc", "--allow-full-anc: not used"),
        ("--weak-weight 0.5", "--weak-weight: not used with --self-corr none and no W"),
        ("--weak-batch-size 4", "--weak-batch-size: not used with --self-corr none and no W"),
        ("--weak-boxes", "--weak-boxes: not used with --self-corr none and no W"),
        ("--logits w.zarr --weak-box-weight 0.4", "--weak-box-weight: not used without --weak-"),
        ("--logits w.zarr --box-penalty 6", "--box-penalty: not used with --logits alone"),
        ("--box-uncovered void", "--box-uncovered: not used without --anc-model"),
    ],
)
def test_a_flag_the_mode_ignores_is_refused_before_the_stage(
    tiny_data, tmp_path, capsys, monkeypatch, flags, message
):
    """One line naming the flag, exit 2, and train_primary is never called."""
    seen = []
    monkeypatch.setattr(tp, "train_primary", lambda opts, quiet: seen.append(opts))
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["train-primary", tiny_data, "--out", "run", *flags.split()], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert message in err and not seen
