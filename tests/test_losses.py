"""The training losses (losses.py): F's and W's cross-entropies, hard pixels, the W term's
weight."""

import torch

from boxseg.data.sample import VOID
from boxseg.losses import hard_cross_entropy, soft_cross_entropy, weak_loss_scale


def test_soft_cross_entropy_matches_hard_ce_and_ignores_invalid():
    logits = torch.randn(2, 5, 4, 4)
    target = torch.randint(0, 5, (2, 4, 4))
    onehot = torch.nn.functional.one_hot(target, 5).permute(0, 3, 1, 2).float()
    torch.testing.assert_close(
        soft_cross_entropy(logits, onehot), torch.nn.functional.cross_entropy(logits, target)
    )
    valid = torch.zeros(2, 4, 4, dtype=torch.bool)
    valid[0, :2] = True
    masked = target.clone()
    masked[~valid] = 255
    torch.testing.assert_close(
        soft_cross_entropy(logits, onehot, valid),
        torch.nn.functional.cross_entropy(logits, masked, ignore_index=255),
    )


def test_hard_pixels_average_the_hardest_valid_pixels_only():
    """--hard-pixels f: the mean over the f largest per-pixel losses among valid pixels (void
    neither counted nor kept); one-hot soft targets give the hard loss; easy pixels get no
    gradient."""
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 5, requires_grad=True)
    mask = torch.randint(0, 3, (2, 4, 5))
    mask[0, 0] = VOID  # 5 void pixels: 35 valid
    valid = mask != VOID
    per_pixel = torch.nn.functional.cross_entropy(
        logits, torch.where(valid, mask, 0), reduction="none"
    )[valid]
    expected = per_pixel.sort(descending=True).values[:14].mean()  # ceil(0.4 * 35) = 14
    loss, _ = hard_cross_entropy(logits, mask, hard_pixels=0.4)
    torch.testing.assert_close(loss, expected)
    onehot = torch.nn.functional.one_hot(torch.where(valid, mask, 0), 3).permute(0, 3, 1, 2)
    soft = soft_cross_entropy(logits, onehot.float(), valid, None, 0.4)
    torch.testing.assert_close(soft, expected)
    loss.backward()
    touched = logits.grad.abs().sum(1) > 0
    assert int(touched.sum()) == 14 and not touched[~valid].any()
    full, _ = hard_cross_entropy(logits, mask, hard_pixels=1.0)
    torch.testing.assert_close(full, per_pixel.mean())
    assert loss > full  # the hardest pixels' mean is above the mean of all


def test_weak_term_is_weighted_per_image():
    """mean_F + scale * mean_W equals the paper's per-image sum over F and W divided by n_F."""
    f, w = torch.rand(2), torch.rand(6)
    paper = (f.sum() + w.sum()) / len(f)
    torch.testing.assert_close(f.mean() + weak_loss_scale(1.0, 2, 6) * w.mean(), paper)
    assert weak_loss_scale(0.5, 4, 4) == 0.5
