"""The training loop: checkpoints, resume, NaN guard."""

import json

import pytest
import torch

import boxseg.engine as engine
from boxseg.data.boxes import BoxSpec
from boxseg.data.sampling import Batches
from boxseg.data.split import SplitSpec
from boxseg.engine import TrainConfig, poly_lr
from boxseg.errors import BoxsegError
from boxseg.models import ModelSpec, build_model
from boxseg.train_anc import AncOptions, train_anc

SPEC = ModelSpec("resnet18", 16, 16, 16, 8)


def anc_options(data, run, cfg: TrainConfig) -> AncOptions:
    """A tiny ancillary run on 4 F images, without the val score at the end."""
    return AncOptions(data, run, SplitSpec("train", 4, 0), SPEC, cfg, BoxSpec(4), val_split=None)


def _train(data, run, **kw):
    cfg = TrainConfig(iters=6, batch_size=2, crop=32, device="cpu", log_every=1, **kw)
    train_anc(anc_options(data, run, cfg), quiet=True)
    return torch.load(run / "model.pt", weights_only=True)["state_dict"]


def test_interrupted_then_resumed_run_ends_with_the_same_weights(tiny_data, tmp_path, monkeypatch):
    straight = _train(tiny_data, tmp_path / "a", checkpoint_every=2)

    real_save = engine.save_train_state

    def save_then_die(path, model, optimizer, scaler, step, iters):
        real_save(path, model, optimizer, scaler, step, iters)
        if step == 4:
            raise KeyboardInterrupt  # killed right after the step-4 checkpoint

    monkeypatch.setattr(engine, "save_train_state", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        _train(tiny_data, tmp_path / "b", checkpoint_every=2)
    monkeypatch.setattr(engine, "save_train_state", real_save)
    resumed = _train(tiny_data, tmp_path / "b", checkpoint_every=2, resume=True)

    records = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]  # continued at 5, nothing repeated
    assert records[4]["lr"] == pytest.approx(poly_lr(0.01, 4, 6))
    for k in straight:
        torch.testing.assert_close(resumed[k], straight[k], msg=k)


def test_resume_refuses_a_state_of_another_run(tiny_data, tmp_path):
    _train(tiny_data, tmp_path / "a")
    cfg = TrainConfig(iters=9, batch_size=2, crop=32, device="cpu", resume=True)
    with pytest.raises(BoxsegError, match="last.pt: saved for a 6-step run"):
        train_anc(anc_options(tiny_data, tmp_path / "a", cfg), quiet=True)
    (tmp_path / "a" / "last.pt").write_bytes(b"torn")
    with pytest.raises(BoxsegError, match="unreadable training state"):
        _train(tiny_data, tmp_path / "a", resume=True)


def test_nan_loss_stops_with_the_step(tiny_data, tmp_path):
    with pytest.raises(BoxsegError, match=r"loss became (nan|inf|-inf) at step \d+; try a lower"):
        _train(tiny_data, tmp_path / "n", lr=1e30)
    with pytest.raises(BoxsegError, match="--lr nan"):
        _train(tiny_data, tmp_path / "n", lr=float("nan"))


def test_bf16_autocast_trains_on_cpu(tiny_data, tmp_path):
    """--amp bf16: the convolutions compute in bfloat16 (seen by a forward hook), the weights
    stay float32 and finite."""
    dtypes = []

    def hook(module, args, out):
        if isinstance(module, torch.nn.Conv2d) and module.training:
            dtypes.append(out.dtype)

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        state = _train(tiny_data, tmp_path / "bf16", amp="bf16")
    finally:
        handle.remove()
    assert dtypes and set(dtypes) == {torch.bfloat16}
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    assert all(v.dtype != torch.bfloat16 for v in state.values())  # weights stay float32


def test_epochs_override_iters():
    batches = Batches(list(range(10)), batch_size=4, workers=0, seed=0)
    assert len(batches) == 2  # the partial batch is dropped (BatchNorm needs > 1 sample)
    assert engine.total_iters(TrainConfig(iters=100, epochs=3), batches) == 6
    assert engine.total_iters(TrainConfig(iters=100), batches) == 100


def test_channels_last_trains(tiny_data, tmp_path):
    state = _train(tiny_data, tmp_path / "a", channels_last=True)
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    model = build_model(SPEC, 5, 4).eval()
    x, boxes = torch.randn(2, 3, 32, 32), torch.rand(2, 4, 32, 32)
    with torch.no_grad():
        want = model(x, boxes)
        engine.prepare_nets(model, TrainConfig(channels_last=True), torch.device("cpu"))
        assert model.classifier.weight.is_contiguous(memory_format=torch.channels_last)
        batch = engine.to_device({"x": x, "b": boxes}, torch.device("cpu"), channels_last=True)
        torch.testing.assert_close(model(batch["x"], batch["b"]), want, atol=1e-4, rtol=1e-4)


def _compile_cheaply(monkeypatch):
    """torch.compile's default backend (inductor) takes a minute on CPU; the eager backend runs
    the same capture path in seconds. The slow test below uses inductor."""
    real = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda m: real(m, backend="eager"))


@pytest.mark.parametrize("backend", ["eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compile_trains_and_saves_plain_keys(tiny_data, tmp_path, monkeypatch, backend):
    if backend == "eager":
        _compile_cheaply(monkeypatch)
    compiled = _train(tiny_data, tmp_path / "b", compile=True)
    plain = _train(tiny_data, tmp_path / "a")
    assert compiled.keys() == plain.keys()  # no `_orig_mod.` prefixes in model.pt
    assert all(torch.isfinite(v).all() for v in compiled.values() if v.is_floating_point())


def test_primary_conv_resumed_mid_epoch_with_a_worker_ends_the_same(pipeline, tmp_path,
                                                                     monkeypatch):  # fmt: skip
    """Killed mid-epoch in stage 3 (F: 4 images, batches of 2; W: 8 images), resumed with a
    DataLoader worker: data position, alpha, stage and RNG all continue exactly."""
    from boxseg.primary_options import CorrectionOptions, PrimaryOptions, WeakOptions
    from boxseg.train_primary import train_primary

    weak = WeakOptions(logits=str(pipeline["store"]), anc_model=pipeline["anc"])
    conv = CorrectionOptions("conv", conv_hidden=8, conv_warmup=3, allow_full_anc=True)

    def run(out, **kw):
        cfg = TrainConfig(iters=7, batch_size=2, crop=32, device="cpu", checkpoint_every=1, **kw)
        split = SplitSpec("train", 4, 0)
        opts = PrimaryOptions(pipeline["data"], out, split, SPEC, cfg, weak, conv, val_split=None)
        train_primary(opts, quiet=True)
        return torch.load(out / "model.pt", weights_only=True)

    straight = run(tmp_path / "a")
    real_save = engine.save_train_state

    def save_then_die(path, nets, optimizer, scaler, step, iters):
        real_save(path, nets, optimizer, scaler, step, iters)
        if step == 5:
            raise KeyboardInterrupt

    monkeypatch.setattr(engine, "save_train_state", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b")
    monkeypatch.setattr(engine, "save_train_state", real_save)
    resumed = run(tmp_path / "b", resume=True, workers=1)
    for part in ("state_dict", "merger_state_dict"):
        for k, v in straight[part].items():
            torch.testing.assert_close(resumed[part][k], v, rtol=0, atol=0, msg=f"{part} {k}")


def _fit_linear(tmp_path, bad_step=None, **kw):
    """engine.fit on a 2-weight model; the loss is NaN at `bad_step`."""
    nets = torch.nn.ModuleDict({"m": torch.nn.Linear(2, 1)})

    def step_fn(n, batch, i):
        loss = n["m"](batch["x"]).pow(2).sum()
        return (loss * float("nan") if i == bad_step else loss), {}, 1

    cfg = TrainConfig(iters=10, device="cpu", lr=0.01, **kw)
    engine.fit(nets, step_fn, lambda s: {"x": torch.ones(1, 2)}, cfg, 10, torch.device("cpu"),
               tmp_path, "fit", quiet=True)  # fmt: skip


def test_losses_are_synced_once_per_logging_window(tmp_path, monkeypatch):
    windows = []
    real = engine.checked_losses

    def spy(losses, *a):
        windows.append([s for s, _ in losses])
        return real(losses, *a)

    monkeypatch.setattr(engine, "checked_losses", spy)
    _fit_linear(tmp_path, log_every=5, checkpoint_every=0)
    assert windows == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]  # two host syncs for ten steps


def test_nan_found_at_a_later_sync_names_its_step_and_keeps_the_good_state(tmp_path):
    with pytest.raises(BoxsegError, match=r"loss became nan at step 3; .*last\.pt holds"):
        _fit_linear(tmp_path, bad_step=3, log_every=5, checkpoint_every=2)
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["step"] == 2  # saved after steps 0-1; the save after step 3 was refused
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def _fit_logged(tmp_path, log_every: int, iters: int = 6, resume: bool = False, die_at=None):
    """engine.fit on a 2-weight model with fixed weights; the step also logs a share of the
    loss, a count and a plain value. Returns metrics.jsonl's records."""
    nets = torch.nn.ModuleDict({"m": torch.nn.Linear(2, 1)})
    with torch.no_grad():
        nets["m"].weight.copy_(torch.tensor([[0.5, -0.3]]))
        nets["m"].bias.fill_(0.2)

    def step_fn(n, batch, i):
        loss = (n["m"](batch["x"]) - i).pow(2).mean()
        return loss, {"part": loss.detach() / 2, "skipped_f": torch.tensor(1.0), "alpha": i}, 1

    def next_batch(step):
        if step == die_at:
            raise KeyboardInterrupt  # killed before this step
        return {"x": torch.ones(1, 2)}

    tmp_path.mkdir(exist_ok=True)
    cfg = TrainConfig(iters=iters, device="cpu", lr=0.01, log_every=log_every,
                      checkpoint_every=0, resume=resume)  # fmt: skip
    engine.fit(nets, step_fn, next_batch, cfg, iters, torch.device("cpu"), tmp_path, "fit",
               quiet=True)  # fmt: skip
    return [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]


def test_logged_losses_are_the_means_of_their_window(tmp_path):
    """Logged every 2 steps, loss and the tensor logs are the means of the two steps' values
    (a run logging every step, same weights, gives those); counts are summed; plain values
    are the window's last."""
    each = _fit_logged(tmp_path / "each", log_every=1)
    pairs = _fit_logged(tmp_path / "pairs", log_every=2)
    assert [r["step"] for r in pairs] == [2, 4, 6]
    for r, (a, b) in zip(pairs, zip(each[::2], each[1::2], strict=True), strict=True):
        assert a["loss"] != pytest.approx(b["loss"], rel=1e-3)  # the mean differs from the last
        assert r["loss"] == pytest.approx((a["loss"] + b["loss"]) / 2, rel=1e-6)
        assert r["part"] == pytest.approx((a["part"] + b["part"]) / 2, rel=1e-6)
        assert r["skipped_f"] == 2.0 and r["alpha"] == b["alpha"]


def test_resume_before_the_first_checkpoint_starts_a_clean_metrics_file(tmp_path):
    """Killed before any checkpoint, --resume starts over at step 0: the first run's lines go,
    so every step is logged once."""
    with pytest.raises(KeyboardInterrupt):
        _fit_logged(tmp_path, log_every=1, die_at=3)
    assert not (tmp_path / "last.pt").exists()
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    records = _fit_logged(tmp_path, log_every=1, resume=True)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]


def test_resolving_a_device_joins_no_process_group(monkeypatch):
    """Under torchrun's environment, `resolve_device` (what eval, rank, viz and predict call)
    only resolves; `distributed.join_group` joins the group and gives the rank's device."""
    from boxseg import distributed

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    joined = []
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda *a: joined.append(a))
    assert engine.resolve_device("cpu") == torch.device("cpu") and not joined
    assert engine.resolve_device("auto").type in ("cpu", "cuda") and not joined
    with pytest.raises(BoxsegError, match="--device tpu: choose auto, cpu or cuda"):
        engine.resolve_device("tpu")
    assert distributed.join_group(torch.device("cpu")) == torch.device("cpu")
    assert joined == [("gloo",)]


def test_only_the_commands_run_over_ranks_join_the_process_group():
    """The trainers and gen-logits (which shares its passes over ranks) join the group under
    torchrun; no other module does."""
    import ast
    from pathlib import Path

    import boxseg

    root = Path(boxseg.__file__).parent
    callers = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr == "join_group":
                callers.add(path.stem)
    assert callers == {"train_anc", "train_primary", "gen_logits"}
