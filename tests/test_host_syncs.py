"""No host round trip in a training step or per eval image (issue 41): the Tensor methods that
wait for the device (item, cpu, numpy, a tensor's truth value, ...; `WAITING`) and the logging
all-reduce come once per logging window; int8 coding happens on the device with the store's
codes; eval's argmax and confusion matrix stay on the device with the same scores.

What is counted is Python calls of those Tensor methods and of torch.distributed.all_reduce,
on the CPU. Not counted: syncs inside torch functions on CUDA (bincount reading its range,
boolean-mask indexing, torch.nonzero, a shape that depends on values, ...), which only a run
on a GPU shows; a sync one of those adds goes unnoticed here."""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import pytest
import torch
import torch.distributed as dist

import boxseg.distributed as distributed
import boxseg.evaluate as ev
import boxseg.train_anc as train_anc_module
import boxseg.train_primary as train_primary_module
from boxseg.box_losses import WeakBoxLoss
from boxseg.cells import (
    INT8_RANGE,
    INT8_STEPS,
    as_stored,
    decode_int8,
    encode_int8,
    int8_codes,
    int8_values,
    pool_logits,
    upsample_logits,
)
from boxseg.checkpoint import load_model
from boxseg.data.boxes import BoxSpec
from boxseg.data.formats import load_full, open_dataset
from boxseg.data.split import SplitSpec
from boxseg.engine import TrainConfig
from boxseg.gen_logits import GenLogitsOptions, gen_logits
from boxseg.inference import predict_logits
from boxseg.metrics import class_map, scores
from boxseg.models import ModelSpec
from boxseg.primary_options import CorrectionOptions, LossOptions, PrimaryOptions, WeakOptions
from boxseg.train_anc import AncOptions

SPEC = ModelSpec("resnet18", 16, 16, 16, 8)
SPLIT = SplitSpec("train", 4, 0)
FINAL = "assert_in_sync"  # SyncCounter's step for the calls of the weight check after the last
# Tensor methods that make the host wait for the device (on CUDA), counted when called as
# methods (`torch.nonzero(x)`, a function, is not); syncs inside other torch calls are not seen
WAITING = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "nonzero")


class SyncCounter:
    """Counts the calls of `WAITING` and torch.distributed.all_reduce while `on`, by the step
    whose batch was fetched last (-1: before the first; `FINAL`: in the ranks' weight check
    after the last step, `distributed.assert_in_sync`, kept apart from that step's own)."""

    def __init__(self, monkeypatch):
        self.on, self.step, self.calls = False, -1, Counter()
        for name in WAITING:
            monkeypatch.setattr(torch.Tensor, name, self._counted(getattr(torch.Tensor, name)))
        monkeypatch.setattr(dist, "all_reduce", self._counted(dist.all_reduce, "all_reduce"))
        check = self._during(FINAL, distributed.assert_in_sync)
        monkeypatch.setattr(distributed, "assert_in_sync", check)

    def _during(self, phase: str, real):
        def call(*args, **kwargs):
            step, self.step = self.step, phase
            try:
                return real(*args, **kwargs)
            finally:
                self.step = step

        return call

    def _counted(self, real, name: str | None = None):
        def call(*args, **kwargs):
            if self.on:
                self.calls[(self.step, name or real.__name__)] += 1
            return real(*args, **kwargs)

        return call

    def wrap_fit(self, real_fit):
        """engine.fit, counting from its start to its end but not while a batch is read (the
        data pipeline works on host arrays by design)."""

        def fit(nets, step_fn, next_batch, *args, **kwargs):
            def batch(step):
                self.on, self.step = False, step
                try:
                    return next_batch(step)
                finally:
                    self.on = True

            self.on, self.step = True, -1
            try:
                return real_fit(nets, step_fn, batch, *args, **kwargs)
            finally:
                self.on = False

        return fit

    def steps(self) -> set[int | str]:
        return {step for step, _ in self.calls}


@pytest.fixture
def one_rank_group(tmp_path):
    """A gloo process group of one rank: the trainers all-reduce the logged losses and check
    the ranks' weights as under torchrun, in this process. Not DDP: fit wraps the step in it
    only when world() > 1."""
    if not dist.is_gloo_available():
        pytest.skip("needs gloo")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def int8_store(pipeline, tmp_path_factory):
    store = str(tmp_path_factory.mktemp("int8") / "w8.zarr")
    opts = GenLogitsOptions(pipeline["data"], store, SPLIT, pipeline["anc"], dtype="int8")
    gen_logits(dataclasses.replace(opts, device="cpu", workers=0), quiet=True)
    return store


def _run(kind: str, pipeline, int8_store, run, iters: int, log_every: int) -> None:
    """A tiny run of `kind` that goes through every per-step path this file guards."""
    cfg = TrainConfig(
        iters=iters,
        batch_size=2,
        crop=32,
        device="cpu",
        log_every=log_every,
        checkpoint_every=0,
        overwrite=True,
    )
    if kind == "train-anc":  # F and W's boxes (the box terms), the constraint in the loss
        opts = AncOptions(
            pipeline["data"],
            run,
            SPLIT,
            SPEC,
            cfg,
            BoxSpec(4),
            val_split=None,
            constraint_loss=True,
            weak_boxes=WeakBoxLoss(True),
        )
        train_anc_module.train_anc(opts, quiet=True)
        return
    weak = WeakOptions(logits=int8_store, anc_model=pipeline["anc"], boxes=WeakBoxLoss(True))
    conv = CorrectionOptions("conv", conv_hidden=8, conv_warmup=2, allow_full_anc=True)
    opts = PrimaryOptions(
        pipeline["data"],
        run,
        SPLIT,
        SPEC,
        cfg,
        weak,
        conv,
        LossOptions("median-freq"),
        val_split=None,
    )
    train_primary_module.train_primary(opts, quiet=True)


@pytest.mark.parametrize("kind", ["train-primary", "train-anc"])
def test_a_training_step_waits_for_the_device_only_when_it_ends_a_logging_window(
    kind, pipeline, int8_store, tmp_path, monkeypatch, one_rank_group
):
    """train-primary conv on an int8 store (g's F inputs coded as the store's, class weights,
    the box terms) and train-anc with the box terms and constraint, in a one-rank process
    group (the all-reduces of torchrun, without DDP): logged every 3 steps, only the steps
    that end a window (and the setup before the first) call a `WAITING` method or all-reduce;
    each such step all-reduces once and brings values to the host with one `cpu`. The weight
    check after the last step (two all-reduces) is counted apart, so the last window's
    all-reduce is checked like the others."""
    counter = SyncCounter(monkeypatch)
    module = train_primary_module if kind == "train-primary" else train_anc_module
    monkeypatch.setattr(module, "fit", counter.wrap_fit(module.fit))
    _run(kind, pipeline, int8_store, tmp_path / "run", iters=6, log_every=3)
    iters = 8 if kind == "train-primary" else 6  # conv: 2 steps of g's warm-up on top
    window_ends = {s for s in range(iters) if (s + 1) % 3 == 0 or s + 1 == iters}
    calls = sorted(counter.calls.items(), key=str)
    assert counter.steps() - {-1, FINAL} == window_ends, calls
    for step in window_ends:  # the window's losses: one all-reduce, one read
        assert counter.calls[(step, "all_reduce")] == 1 and counter.calls[(step, "cpu")] == 1, calls
    assert counter.calls[(FINAL, "all_reduce")] == 2, calls  # the weights' min and max


def test_int8_coding_on_the_device_gives_the_stores_codes_and_values():
    """int8_codes / int8_values (on the device, a batch at once) against the documented code
    round(-max(log_softmax, -16) * 254 / 16) (255: void) and the store's decode, bit for bit,
    on logits with extremes: huge and tiny values, infinities, ties, void pixels."""
    torch.manual_seed(0)
    x = torch.randn(3, 5, 17, 13) * 30
    x[0, 2] = 1e30
    x[1, :, 0] = -1e4
    x[2, :, 3] = 0.0  # all classes tied
    x[2, 3, 5, 5], x[0, 1, 4, 4] = float("inf"), float("-inf")
    x[1, :, 6, 6] = float("nan")  # void
    logp = torch.log_softmax(x, dim=1).numpy()
    want = np.round(-np.maximum(logp, -INT8_RANGE) * np.float32(INT8_STEPS / INT8_RANGE))
    want = np.nan_to_num(want, nan=255).astype(np.uint8)
    for batch in (x, x.contiguous(memory_format=torch.channels_last)):
        codes = int8_codes(batch)
        assert codes.dtype == torch.uint8 and np.array_equal(codes.numpy(), want)
        assert all(np.array_equal(encode_int8(v), want[k]) for k, v in enumerate(batch))
        values = int8_values(codes)
        stored = torch.stack([decode_int8(c) for c in codes.numpy()])
        assert torch.equal(values.view(torch.int32), stored.view(torch.int32))  # NaNs too
    assert (want == 255).any() and (want == 0).any() and (want == 254).any()


def test_as_stored_int8_is_the_stores_round_trip_per_image():
    """conv's F inputs under an int8 store: the same values as coding and decoding each pooled
    image through the store's CPU functions (what it did before, image by image)."""
    torch.manual_seed(1)
    logits = torch.randn(3, 4, 30, 22) * 8
    pooled = pool_logits(logits, 4, void_free=True)
    each = torch.stack([decode_int8(encode_int8(p)) for p in pooled])
    want = upsample_logits(each, 4, 30, 22, void_free=True)
    assert torch.equal(as_stored(logits, 4, "int8"), want)


def _scores_before(model, meta, ds, split) -> dict:
    """eval's scores as computed before: each image's logits on the CPU, a numpy confusion
    matrix of the non-void pixels."""
    k = ds.num_classes
    conf = np.zeros((k, k), np.int64)
    for image_id in ds.ids(split):
        s = load_full(ds, split, image_id, BoxSpec(), with_boxes=False)
        pred = class_map(predict_logits(model, meta, s.image, torch.device("cpu"))).numpy()
        keep = s.mask != 255
        conf += np.bincount(s.mask[keep] * k + pred[keep], minlength=k * k).reshape(k, k)
    return scores(conf, list(ds.class_names))


def test_eval_scores_on_the_device_as_before_without_a_read_per_image(
    pipeline, tmp_path, monkeypatch
):
    """evaluate_model gives the scores of the per-image CPU path, and reads values on the
    host as often for one image as for all of them (the K x K counts, once)."""
    primary = tmp_path / "p"
    cfg = TrainConfig(iters=2, batch_size=2, crop=32, device="cpu")
    opts = PrimaryOptions(pipeline["data"], primary, SPLIT, SPEC, cfg, val_split=None)
    train_primary_module.train_primary(opts, quiet=True)
    model, meta = load_model(primary / "model.pt", kind="primary")
    ds = open_dataset(pipeline["data"])
    want = _scores_before(model, meta, ds, "val")
    counter = SyncCounter(monkeypatch)
    counts = []
    for ids in (ds.ids("val")[:1], ds.ids("val")):
        counter.calls.clear()
        counter.on = True
        result = ev.evaluate_model(model, meta, ds, "val", torch.device("cpu"), True, ids=ids)
        counter.on = False
        counts.append(sum(counter.calls.values()))
    assert len(ds.ids("val")) > 1 and counts[0] == counts[1] <= 2, counts
    assert result == want
