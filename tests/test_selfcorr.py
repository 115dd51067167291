import pytest
import torch

from boxseg.selfcorr import alpha_at, linear_combine, soft_cross_entropy, soft_target


def test_linear_combine_is_the_formula():
    g = torch.Generator().manual_seed(0)
    l, la = torch.randn(2, 5, 3, 4, generator=g), torch.randn(2, 5, 3, 4, generator=g)
    for a in (0.0, 0.5, 3.0, 30.0):
        torch.testing.assert_close(linear_combine(l, la, a), (l + a * la) / (1 + a))


def test_linear_combine_is_the_kl_minimiser():
    # q ∝ p^(1/(1+a)) * p_anc^(a/(1+a)): the normalised weighted geometric mean
    l, la, a = torch.randn(4, 6), torch.randn(4, 6), 2.5
    p, pa = torch.softmax(l, 1), torch.softmax(la, 1)
    geo = p ** (1 / (1 + a)) * pa ** (a / (1 + a))
    torch.testing.assert_close(
        torch.softmax(linear_combine(l, la, a), 1), geo / geo.sum(1, keepdim=True)
    )


def test_alpha_schedule():
    assert alpha_at(0, 100) == pytest.approx(30.0)
    assert alpha_at(50, 100) == pytest.approx(0.5)
    assert alpha_at(99, 100) == pytest.approx(0.5)
    assert alpha_at(25, 100) == pytest.approx((30 * 0.5) ** 0.5)  # geometric midpoint
    values = [alpha_at(s, 100) for s in range(60)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_soft_target_is_detached_and_normalised():
    l = torch.randn(2, 4, 3, 3, requires_grad=True)
    la = torch.randn(2, 4, 3, 3)
    q = soft_target(la, l, "linear", 1.0)
    assert not q.requires_grad
    torch.testing.assert_close(q.sum(1), torch.ones(2, 3, 3))
    torch.testing.assert_close(soft_target(la, None, "none"), torch.softmax(la, 1))
    loss = soft_cross_entropy(l, q)
    loss.backward()
    # gradient of soft CE wrt logits is softmax(l) - q only if q carries no gradient
    expected = (torch.softmax(l, 1) - q) / (2 * 3 * 3)
    torch.testing.assert_close(l.grad, expected.detach())


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
    from boxseg.data.sample import VOID
    from boxseg.selfcorr import hard_cross_entropy

    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 5, requires_grad=True)
    mask = torch.randint(0, 3, (2, 4, 5))
    mask[0, 0] = VOID  # 5 void pixels: 35 valid
    valid = mask != VOID
    per_pixel = torch.nn.functional.cross_entropy(
        logits, torch.where(valid, mask, 0), reduction="none")[valid]
    expected = per_pixel.sort(descending=True).values[:14].mean()  # ceil(0.4 * 35) = 14
    loss, _ = hard_cross_entropy(logits, mask, hard_pixels=0.4)
    torch.testing.assert_close(loss, expected)
    onehot = torch.nn.functional.one_hot(torch.where(valid, mask, 0), 3).permute(0, 3, 1, 2)
    torch.testing.assert_close(soft_cross_entropy(logits, onehot.float(), valid, None, 0.4),
                               expected)  # fmt: skip
    loss.backward()
    touched = logits.grad.abs().sum(1) > 0
    assert int(touched.sum()) == 14 and not touched[~valid].any()
    full, _ = hard_cross_entropy(logits, mask, hard_pixels=1.0)
    torch.testing.assert_close(full, per_pixel.mean())
    assert loss > full  # the hardest pixels' mean is above the mean of all
