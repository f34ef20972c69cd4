"""DKD against a float64 NumPy loop written from the paper's formula, its invariances, its ignore handling,
its stability, the sign of its gradient and its registry defaults."""

import numpy as np
import pytest
import torch

from model.losses import kd_kl_loss
from model.methods import METHODS, check_params
from model.methods.dkd import DKD, dkd_loss
from tests.numpy_refs import np_sample
from util.errors import SegKDError

IGNORE = 255


def np_softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def np_dkd(s, t, target, alpha, beta, T):
    """Per valid position with label g: p = softmax(z / T); b = [p_g, 1 - p_g]; q = softmax over the classes
    k != g of z_k / T; (alpha KL(b_t || b_s) + beta KL(q_t || q_s)) T², mean over the valid positions."""
    labels = np_sample(target, s.shape[-2:])
    vals = []
    for n in range(s.shape[0]):
        for i in range(s.shape[2]):
            for j in range(s.shape[3]):
                g = labels[n, i, j]
                if g == IGNORE:
                    continue
                zs, zt = s[n, :, i, j] / T, t[n, :, i, j] / T
                ps, pt = np_softmax(zs), np_softmax(zt)
                bs, bt = np.array([ps[g], 1 - ps[g]]), np.array([pt[g], 1 - pt[g]])
                qs, qt = np_softmax(np.delete(zs, g)), np_softmax(np.delete(zt, g))
                tckd, nckd = (bt * np.log(bt / bs)).sum(), (qt * np.log(qt / qs)).sum()
                vals.append((alpha * tckd + beta * nckd) * T * T)
    return np.mean(vals) if vals else 0.0


def case(n=2, classes=5, size=(5, 6), label_size=(13, 19), seed=0):
    g = torch.Generator().manual_seed(seed)
    s = 2 * torch.randn(n, classes, *size, generator=g)
    t = 2 * torch.randn(n, classes, *size, generator=g)
    target = torch.randint(0, classes, (n, *label_size), generator=g)
    target[torch.rand(n, *label_size, generator=g) < 0.3] = IGNORE
    return s, t, target


@pytest.mark.parametrize("shape,alpha,beta,T", [(dict(), 1.0, 8.0, 1.0),
                                                (dict(n=3, classes=3, size=(4, 7), label_size=(11, 15)), 0.5, 2.0, 4.0),
                                                (dict(n=1, classes=2, size=(6, 5), label_size=(6, 5)), 2.0, 1.0, 2.0),
                                                (dict(n=2, classes=6), 0.0, 1.0, 1.5)])
def test_matches_the_numpy_formula(shape, alpha, beta, T):
    s, t, target = case(**shape)
    got = dkd_loss(s, t, target, alpha, beta, T).item()
    want = np_dkd(s.double().numpy(), t.double().numpy(), target.numpy(), alpha, beta, T)
    assert want > 1e-3
    assert got == pytest.approx(want, rel=1e-5)


def test_tckd_plus_weighted_nckd_is_kd():
    """The paper's Eq. (1), KD = TCKD + (1 - p_t,g) NCKD, at each position against this project's KD."""
    s, t, target = case(n=1, size=(3, 4), label_size=(3, 4))
    labels, temperature = target.clamp(max=4), 2.0
    for i in range(3):
        for j in range(4):
            at = (..., slice(i, i + 1), slice(j, j + 1))
            kd = kd_kl_loss(s[at], t[at], labels[at], temperature)
            tckd = dkd_loss(s[at], t[at], labels[at], 1.0, 0.0, temperature)
            nckd = dkd_loss(s[at], t[at], labels[at], 0.0, 1.0, temperature)
            p_g = torch.softmax(t[0, :, i, j] / temperature, 0)[labels[0, i, j]]
            assert nckd > 1e-3 and tckd > 1e-5
            assert (tckd + (1 - p_g) * nckd).item() == pytest.approx(kd.item(), rel=1e-5)


def test_duplicating_the_batch_keeps_the_value():
    s, t, target = case()
    one = dkd_loss(s, t, target)
    two = dkd_loss(torch.cat([s, s]), torch.cat([t, t]), torch.cat([target, target]))
    assert two.item() == pytest.approx(one.item(), rel=1e-6)


def test_tiling_the_map_with_its_labels_keeps_the_value():
    s, t, target = case(size=(5, 6), label_size=(5, 6))
    tile = lambda x: x.repeat(*([1] * (x.dim() - 2)), 2, 3)  # noqa: E731
    assert tile(target).shape == (2, 10, 18)
    got = dkd_loss(tile(s), tile(t), tile(target)).item()
    assert got == pytest.approx(dkd_loss(s, t, target).item(), rel=1e-6)


def test_a_constant_added_to_a_pixels_logits_changes_nothing():
    s, t, target = case()
    shift = 30 * torch.randn(2, 1, 5, 6)
    got = dkd_loss(s + shift, t - shift, target).item()
    assert got == pytest.approx(dkd_loss(s, t, target).item(), rel=1e-5)


def test_labels_are_taken_at_the_logit_centres():
    s, t, target = case()
    floor = target[:, [int(i * 13 / 5) for i in range(5)]][:, :, [int(j * 19 / 6) for j in range(6)]]
    assert dkd_loss(s, t, target).item() != pytest.approx(dkd_loss(s, t, floor).item(), rel=1e-3)


def test_a_confident_student_stays_finite():
    """p_s,g rounds to 1 (margin 200): log(1 - p_s,g) is about -200, taken from the logits, where log of the
    rounded 1 - p_s,g would be -inf and the loss inf."""
    s, t, target = case(n=1, classes=4, size=(2, 3), label_size=(2, 3))
    target.clamp_(max=3)
    s = s.scatter(1, target[:, None], 200.0).requires_grad_(True)
    assert (torch.softmax(s, 1).gather(1, target[:, None]) == 1).all()
    loss = dkd_loss(s, t, target, 1.0, 8.0, 1.0)
    loss.backward()
    assert torch.isfinite(loss) and 10 < loss.item() < 1000
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


def test_a_step_against_the_gradient_lowers_the_loss():
    s, t, target = case(n=1, classes=3, size=(1, 3), label_size=(1, 3), seed=2)
    target[0, 0] = torch.tensor([0, 2, IGNORE])
    s.requires_grad_(True)
    t.requires_grad_(True)
    loss = dkd_loss(s, t, target, 1.0, 8.0, 2.0)
    loss.backward()
    assert t.grad is None
    assert s.grad[..., :2].abs().sum() > 0 and (s.grad[..., 2] == 0).all()
    with torch.no_grad():
        lower = dkd_loss(s - 1e-2 * s.grad / s.grad.norm(), t, target, 1.0, 8.0, 2.0)
    assert lower < loss


def test_every_pixel_ignored_gives_a_finite_zero_with_a_graph():
    s, t, target = case()
    s.requires_grad_(True)
    loss = dkd_loss(s, t, torch.full_like(target, IGNORE))
    assert torch.isfinite(loss) and loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(s.grad).all() and (s.grad == 0).all()


def test_zero_when_the_student_is_the_teacher():
    s, _, target = case()
    assert dkd_loss(s, s.clone(), target, 1.0, 8.0, 3.0).item() == pytest.approx(0.0, abs=1e-6)
    assert dkd_loss(s, s + 0.5 * torch.randn_like(s), target).item() > 1e-3


def test_the_registered_method_uses_its_declared_defaults():
    cls = METHODS["dkd"]
    assert cls is DKD
    assert (cls.default_tensor, cls.default_weight, cls.logits_only, cls.same_channels) == ("out", 1.0, True, True)
    assert {k: p.default for k, p in cls.params.items()} == {"alpha": 1.0, "beta": 8.0, "temperature": 1.0}
    s, t, target = case()
    target[target == IGNORE] = 9
    method = cls(5, 5, 5, 9)
    assert (method.alpha, method.beta, method.temperature) == (1.0, 8.0, 1.0)
    assert method(s, t, target).item() == pytest.approx(dkd_loss(s, t, target, 1.0, 8.0, 1.0, 9).item(), rel=1e-6)
    assert cls(5, 5, 5, 9, beta=0.5, temperature=4.0)(s, t, target).item() == pytest.approx(
        dkd_loss(s, t, target, 1.0, 0.5, 4.0, 9).item(), rel=1e-6)
    for bad in ({"alpha": -0.1}, {"beta": -1.0}, {"temperature": 0.0}):
        with pytest.raises(SegKDError, match=f"distill.dkd.{next(iter(bad))}"):
            check_params("dkd", bad)
    check_params("dkd", {"alpha": 0.0, "beta": 0.0, "temperature": 4.0})
