"""W's target sources (weak_targets.py): conv's F inputs made like the store's W inputs."""

import numpy as np
import pytest
import torch

from boxseg.box_constraint import ConstraintRule
from boxseg.cells import as_stored
from boxseg.checkpoint import load_model
from boxseg.selfcorr import f_anc_logits
from boxseg.store import LogitsStore
from boxseg.weak_targets import Constrained, OnlineAncillary


@pytest.mark.parametrize("dtype", ["float16", "int8"])
def test_as_stored_is_what_a_store_gives_back(tmp_path, dtype):
    """Pooling, rounding and resampling: the same values a store written the way gen-logits
    writes it returns from read_full before the constraint."""
    torch.manual_seed(0)
    h, w, stride = 22, 30, 4
    logits = torch.randn(3, h, w) * 3
    store = LogitsStore.create(str(tmp_path / "s.zarr"), ["a"], np.array([[h, w]], np.int32),
                               ["x", "y", "z"], stride, {}, dtype)  # fmt: skip
    store.write(0, logits)  # pooled by the store, as gen-logits writes
    restored = as_stored(logits, stride, dtype)
    torch.testing.assert_close(restored, store.read_full(0), rtol=0, atol=0)
    assert restored.shape == (3, h, w)
    assert not torch.allclose(restored, logits)  # not the raw input


@pytest.mark.parametrize("dtype", ["float16", "int8"])
def test_as_stored_keeps_a_huge_logit_finite_like_the_store(tmp_path, dtype):
    """A logit of +-1e6 (past float16's 65504) over whole cells: both the store and as_stored
    give back finite values, the same ones (float16: clamped to its range before the cast)."""
    h, w, stride = 8, 12, 4
    logits = torch.full((2, h, w), -1e6)
    logits[0, :4, :8] = 1e6  # two whole cells, so pooling keeps 1e6
    sizes = np.array([[h, w]], np.int32)
    store = LogitsStore.create(
        str(tmp_path / "s.zarr"), ["a"], sizes, ["x", "y"], stride, {}, dtype
    )
    store.write(0, logits)
    restored, read = as_stored(logits, stride, dtype), store.read_full(0)
    assert torch.isfinite(restored).all() and torch.isfinite(read).all()
    torch.testing.assert_close(restored, read, rtol=0, atol=0)
    if dtype == "float16":  # clamped to float16's largest value, not inf (int8: log-probs)
        assert restored[0, 0, 0] == 65504 and (restored[1] == -65504).all()


def test_conv_f_inputs_are_pooled_like_the_store(pipeline):
    """In store mode, the merger's F inputs are the online logits made like the store's, then
    constrained at pixel level."""
    anc, meta = load_model(pipeline["anc"], kind="ancillary")
    store = LogitsStore.open(pipeline["store"])
    source = f_anc_logits(anc, (store.stride, store.dtype), None)
    assert source.like_store == (store.stride, store.dtype)
    torch.manual_seed(0)
    batch = {"image": torch.randn(2, 3, 32, 32),
             "boxes": torch.rand(2, meta["box_channels"], 32, 32).round()}  # fmt: skip
    got = source(batch)
    with torch.no_grad():
        raw = anc(batch["image"], batch["boxes"]).float()
    want = torch.stack([as_stored(x, store.stride, store.dtype) for x in raw])
    torch.testing.assert_close(got, want)
    assert (got - raw).abs().max() > 1e-3  # pooling changed them
    assert OnlineAncillary(anc)(batch).equal(raw)  # online W targets stay at full resolution
    assert f_anc_logits(None, None, None) is None
    rule = ConstraintRule.of(5, 0, None)
    assert isinstance(f_anc_logits(anc, None, rule), Constrained)
