"""CIRKD's mini-batch pixel-to-pixel term against a float64 NumPy loop over the image pairs written from the
paper's formula, its pooling, its invariances, the sign of its gradient and its registry defaults."""

import numpy as np
import pytest
import torch

from model.methods import METHODS, check_params
from model.methods.cirkd import CIRKD, cirkd_pixel_loss
from util.errors import SegKDError

IGNORE = 255


def np_pool(x, k):
    """Average over k×k windows with stride k; the last row/column of windows is cut at the border (ceil mode)."""
    n, c, h, w = x.shape
    oh, ow = -(-h // k), -(-w // k)
    out = np.zeros((n, c, oh, ow))
    for p in range(oh):
        for q in range(ow):
            out[:, :, p, q] = x[:, :, p * k:(p + 1) * k, q * k:(q + 1) * k].mean(axis=(2, 3))
    return out


def np_log_softmax(x):
    x = x - x.max()
    return x - np.log(np.exp(x).sum())


def np_cirkd(s, t, tau, pool):
    """Features L2-normalised per pixel; for each ordered pair (i, j) and pixel a of image i:
    KL(softmax_b(t_ia . t_jb / tau) || softmax_b(s_ia . s_jb / tau)) over the pixels b of image j;
    mean over the rows a, then over the N² pairs."""
    if pool > 1:
        s, t = np_pool(s, pool), np_pool(t, pool)
    fs = [f.reshape(f.shape[0], -1) / np.linalg.norm(f.reshape(f.shape[0], -1), axis=0) for f in s]
    ft = [f.reshape(f.shape[0], -1) / np.linalg.norm(f.reshape(f.shape[0], -1), axis=0) for f in t]
    pairs = []
    for i in range(len(s)):
        for j in range(len(s)):
            rows = []
            for a in range(fs[i].shape[1]):
                log_ps = np_log_softmax(fs[i][:, a] @ fs[j] / tau)
                log_pt = np_log_softmax(ft[i][:, a] @ ft[j] / tau)
                rows.append((np.exp(log_pt) * (log_pt - log_ps)).sum())
            pairs.append(np.mean(rows))
    return np.mean(pairs)


def case(n=2, cs=3, ct=5, size=(5, 6), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, cs, *size, generator=g), torch.randn(n, ct, *size, generator=g)


@pytest.mark.parametrize("shape,tau,pool", [(dict(), 0.1, 1), (dict(n=3, cs=4, ct=4, size=(4, 7)), 0.5, 1),
                                            (dict(n=2, cs=2, ct=6, size=(5, 7)), 0.2, 2),
                                            (dict(n=1, cs=3, ct=3, size=(7, 6)), 1.0, 3)])
def test_matches_the_numpy_formula(shape, tau, pool):
    s, t = case(**shape)
    got = cirkd_pixel_loss(s, t, tau, pool).item()
    want = np_cirkd(s.double().numpy(), t.double().numpy(), tau, pool)
    assert want > 1e-3
    assert got == pytest.approx(want, rel=1e-4)


def test_pooling_changes_the_value():
    s, t = case(size=(6, 6))
    assert cirkd_pixel_loss(s, t, 0.1, 2).item() != pytest.approx(cirkd_pixel_loss(s, t, 0.1, 1).item(), rel=1e-3)


def test_duplicating_the_batch_keeps_the_value():
    s, t = case(n=3)
    one = cirkd_pixel_loss(s, t)
    two = cirkd_pixel_loss(torch.cat([s, s]), torch.cat([t, t]))
    assert two.item() == pytest.approx(one.item(), rel=1e-5)


def test_a_step_against_the_gradient_lowers_the_loss():
    s, t = case(n=2, cs=2, ct=3, size=(2, 2), seed=1)
    s.requires_grad_(True)
    t.requires_grad_(True)
    loss = cirkd_pixel_loss(s, t, 0.5)
    loss.backward()
    assert t.grad is None
    assert s.grad.abs().sum() > 0
    with torch.no_grad():
        lower = cirkd_pixel_loss(s - 1e-2 * s.grad / s.grad.norm(), t, 0.5)
    assert lower < loss


def test_the_target_is_unused():
    s, t = case()
    method = CIRKD(3, 5, 4)
    labels = torch.randint(0, 4, (2, 13, 19))
    value = method(s, t, labels)
    assert torch.isfinite(value) and value.item() > 1e-3
    assert method(s, t, torch.full_like(labels, IGNORE)).item() == value.item()


def test_zero_when_the_student_is_the_teacher():
    s, _ = case(cs=4)
    assert cirkd_pixel_loss(s, s.clone()).item() == pytest.approx(0.0, abs=1e-6)
    assert cirkd_pixel_loss(s, s + 0.5 * torch.randn_like(s)).item() > 1e-3


def test_the_registered_method_uses_its_declared_defaults():
    cls = METHODS["cirkd"]
    assert cls is CIRKD
    assert (cls.default_tensor, cls.default_weight) == ("out_feat", 1.0)
    assert {k: p.default for k, p in cls.params.items()} == {"tau": 0.1, "pool": 1, "global_batch": False}
    assert not cls.logits_only and not cls.same_channels
    s, t = case(size=(6, 6))
    method = cls(3, 5, 4, IGNORE)
    assert (method.tau, method.pool) == (0.1, 1)
    assert method(s, t, None).item() == pytest.approx(cirkd_pixel_loss(s, t, 0.1, 1).item(), rel=1e-6)
    assert cls(3, 5, 4, IGNORE, tau=0.5, pool=2)(s, t, None).item() == pytest.approx(
        cirkd_pixel_loss(s, t, 0.5, 2).item(), rel=1e-6)
    for bad in ({"tau": 0.0}, {"tau": -1.0}, {"pool": 0}, {"pool": 1.5}, {"pool": True}):
        with pytest.raises(SegKDError, match=f"distill.cirkd.{next(iter(bad))}"):
            check_params("cirkd", bad)
    check_params("cirkd", {"tau": 0.07, "pool": 4})
