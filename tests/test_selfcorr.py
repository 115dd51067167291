import pytest
import torch

from boxseg.losses import soft_cross_entropy
from boxseg.selfcorr import alpha_at, linear_combine, soft_target


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
