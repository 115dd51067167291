"""Resumable sharded batches: the batch of a step depends on the step alone."""

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from boxseg.data.sampling import Batches, ShardedBatches, item_seed
from boxseg.data.torchsets import item_key
from boxseg.errors import BoxsegError


def take(sampler: ShardedBatches, n: int) -> list:
    it = iter(sampler)
    return [next(it) for _ in range(n)]


def test_each_epoch_is_a_permutation_and_epochs_differ():
    batches = take(ShardedBatches(10, 3, seed=0), 6)  # 3 batches per epoch, 1 image dropped
    epoch0 = [i for b in batches[:3] for i, _ in b]
    epoch1 = [i for b in batches[3:] for i, _ in b]
    assert len(set(epoch0)) == 9 and len(set(epoch1)) == 9
    assert epoch0 != epoch1
    assert len(ShardedBatches(10, 3, seed=0)) == 3


def test_starting_mid_run_gives_the_same_batches():
    straight = take(ShardedBatches(10, 3, seed=5), 8)
    assert take(ShardedBatches(10, 3, seed=5, start=4), 4) == straight[4:]


def test_ranks_split_every_epoch_disjointly_like_distributed_sampler():
    r0 = take(ShardedBatches(10, 2, seed=1, rank=0, world=2), 2)
    r1 = take(ShardedBatches(10, 2, seed=1, rank=1, world=2), 2)
    i0 = {i for b in r0 for i, _ in b}
    i1 = {i for b in r1 for i, _ in b}
    assert len(i0) == 4 and len(i1) == 4 and not i0 & i1


def test_augmentation_seed_is_tied_to_the_item():
    (b,) = take(ShardedBatches(4, 4, seed=2), 1)
    assert all(s == item_seed(2, 0, i) for i, s in b)
    i, rng = item_key((3, 99))
    assert i == 3 and rng.integers(1 << 30) == np.random.default_rng(99).integers(1 << 30)


def test_too_few_images_for_the_ranks_is_a_clear_error():
    with pytest.raises(BoxsegError, match="1 images for 2 processes"):
        ShardedBatches(1, 2, seed=0, world=2)


class Keys(Dataset):
    def __len__(self):
        return 6

    def __getitem__(self, key):
        i, rng = item_key(key)
        return torch.tensor([i, int(rng.integers(1000))])


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_are_a_function_of_the_step(workers):
    straight = Batches(Keys(), 2, 0, seed=3)
    expected = [straight(s) for s in range(7)]
    resumed = Batches(Keys(), 2, workers, seed=3)
    for s in range(4, 7):
        torch.testing.assert_close(resumed(s), expected[s])
    late = Batches(Keys(), 2, 0, seed=3, offset=4)  # joins at step 4: its first batch
    torch.testing.assert_close(late(4), expected[0])
    with pytest.raises(RuntimeError, match="expected 5"):
        late(6)


def test_a_set_smaller_than_its_batch_delivers_all_of_it_and_says_so(monkeypatch, capsys):
    """6 images, batches of 8 asked for: each batch holds the 6 (3 a process for 2 processes),
    `batch_size` says so beside `requested`, and one warning line names the shortfall."""
    from boxseg.data import sampling

    short = Batches(Keys(), 8, 0, seed=0)
    assert (short.requested, short.batch_size, len(short(0))) == (8, 6, 6)
    sampling.warn_if_short(short, "F", "--batch-size")
    sampling.warn_if_short(Batches(Keys(), 4, 0, seed=0), "W", "--weak-batch-size")
    err = capsys.readouterr().err
    assert err == ("boxseg: warning: F has 6 images, fewer than --batch-size 8: each step "
                   "takes 6 F images\n")  # fmt: skip
    monkeypatch.setattr(sampling.distributed, "world", lambda: 2)
    sharded = Batches(Keys(), 8, 0, seed=0)
    assert (sharded.requested, sharded.batch_size, len(sharded(0))) == (8, 3, 3)
    sampling.warn_if_short(sharded, "F", "--batch-size")
    assert "F has 3 images per process, fewer than --batch-size 8" in capsys.readouterr().err
    monkeypatch.setattr(sampling.distributed, "rank", lambda: 1)
    monkeypatch.setattr(sampling.distributed, "is_main", lambda: False)
    sampling.warn_if_short(Batches(Keys(), 8, 0, seed=0), "F", "--batch-size")
    assert capsys.readouterr().err == ""  # said once, by the main process
