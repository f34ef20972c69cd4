"""Attention transfer (model/methods/at.py) against NumPy written from the paper's attention map, its
invariances, the sign of its gradient, its safety on zeros and its registry entry."""

import math

import numpy as np
import pytest
import torch

from model.methods import METHODS, check_params
from util.errors import SegKDError

IGNORE = 255


def np_at(s, t, p):
    """Zagoruyko and Komodakis: per image, a = mean_c |f_c|^p flattened over h*w and divided by its L2 norm
    (kept 0 if the map is 0); CIRKD's reduction: the mean over N x h*w of (a_s - a_t)^2."""
    def att(f):
        a = (np.abs(f) ** p).mean(axis=0).reshape(-1)
        norm = np.sqrt((a * a).sum())
        return a / norm if norm > 0 else a
    diffs = [(att(s[i]) - att(t[i])) ** 2 for i in range(s.shape[0])]
    return float(np.mean(np.concatenate(diffs)))


def method(**params):
    return METHODS["at"](3, 5, 4, IGNORE, **params)


def tensors(n, cs, ct, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, cs, h, w, generator=g), torch.randn(n, ct, h, w, generator=g),
            torch.randint(0, 4, (n, h, w), generator=g))


@pytest.mark.parametrize("p", [2.0, 1.0, 0.5, 3.0])  # 3: |f|^3, not f^3 (negative entries keep their weight)
@pytest.mark.parametrize("n,cs,ct,h,w", [(2, 3, 6, 4, 5), (1, 4, 4, 3, 3), (3, 2, 5, 2, 7)])
def test_at_matches_numpy(n, cs, ct, h, w, p):
    s, t, y = tensors(n, cs, ct, h, w)
    s = s.clone()
    s[0, :, 0, 0] = 0  # a position where every channel is 0
    ref = np_at(s.double().numpy(), t.double().numpy(), p)
    assert method(p=p)(s, t, y).item() == pytest.approx(ref, rel=1e-5)


def test_at_invariances():
    # holds: the batch duplicated (a mean over images); each image's map scaled by its own positive factor,
    # its sign flipped or its channels permuted (mean of |f|^p, then normalised).
    # does not hold: tiling the map k times in space divides the value by k, since the normalised map has
    # unit norm, so each of its entries shrinks by sqrt(k) and the mean over positions by k
    m = method()
    s, t, y = tensors(2, 3, 5, 3, 4)
    base = m(s, t, y).item()
    assert m(s.repeat(2, 1, 1, 1), t.repeat(2, 1, 1, 1), y.repeat(2, 1, 1)).item() == pytest.approx(base, rel=1e-5)
    scaled = s * torch.tensor([3.0, 0.25])[:, None, None, None]
    assert m(-scaled[:, [2, 0, 1]], t, y).item() == pytest.approx(base, rel=1e-5)
    tiled = m(s.repeat(1, 1, 2, 2), t.repeat(1, 1, 2, 2), y.repeat(1, 2, 2)).item()
    assert tiled == pytest.approx(base / 4, rel=1e-5)


@pytest.mark.parametrize("p", [2.0, 0.5])
def test_at_gradient_lowers_loss_teacher_gets_none(p):
    m = method(p=p)
    s, t, y = tensors(1, 3, 5, 2, 2)
    s = s.relu()  # exact zeros: |x|^p for p < 1 must not give NaN gradients there
    s.requires_grad_(True)
    t.requires_grad_(True)  # the method must detach it
    loss = m(s, t, y)
    loss.backward()
    assert t.grad is None
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    with torch.no_grad():
        assert m(s - 0.1 * s.grad, t, y).item() < loss.item()


def test_at_all_zero_map_is_finite():
    # the all-zero student map normalises to 0, so the loss is mean(a_t^2) = 1 / (h w) per image
    s, t, y = tensors(2, 3, 5, 3, 4)
    s = torch.zeros_like(s, requires_grad=True)
    loss = method()(s, t, y)
    loss.backward()
    assert loss.item() == pytest.approx(1 / 12, rel=1e-5)
    assert torch.isfinite(s.grad).all()


def test_at_ignores_the_labels():
    m = method()
    s, t, y = tensors(2, 3, 5, 3, 3)
    value = m(s, t, torch.full_like(y, IGNORE))
    assert torch.isfinite(value)
    assert value.item() == m(s, t, y).item()
    assert value.item() > 0


def test_at_zero_for_the_same_attention():
    m = METHODS["at"](4, 4, 4, IGNORE)
    _, t, y = tensors(2, 4, 4, 3, 5)
    assert m(t, t, y).item() == 0.0
    assert m(2 * t, t, y).item() == pytest.approx(0.0, abs=1e-12)


def test_at_registry_entry():
    cls = METHODS["at"]
    assert (cls.name, cls.default_tensor, cls.default_weight) == ("at", "out_feat", 10000.0)
    assert set(cls.params) == {"p"} and cls.params["p"].default == 2.0
    assert not cls.same_channels and not cls.logits_only
    assert method().p == 2.0
    assert list(method().parameters()) == []  # nothing to train
    for ok in (0.5, 1, 2.0, 3):
        check_params("at", {"p": ok})
        assert method(p=ok).p == ok
    for bad in (0, -1.0, math.inf, math.nan, "2", True, None):
        with pytest.raises(SegKDError, match="distill.at.p"):
            check_params("at", {"p": bad})
        with pytest.raises(SegKDError, match="distill.at.p"):
            method(p=bad)
    with pytest.raises(SegKDError, match="unknown parameter"):
        cls(3, 5, 4, IGNORE, pool=2)
