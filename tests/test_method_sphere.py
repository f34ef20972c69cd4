"""Spherical KD (model/methods/sphere.py) against a float64 NumPy loop written from the paper's formula (layer-
normalised logits times a multiplier, then KD at T), its invariances, its ignore handling, the sign of its
gradient and its registry entry."""

import numpy as np
import pytest
import torch

from model.losses import kl_std_loss
from model.methods import METHODS, check_params
from model.methods.sphere import sphere_loss
from tests.numpy_refs import np_sample
from util.errors import SegKDError

IGNORE = 255


def np_sphere_vector(z, multiplier, eps=1e-7):
    """One position's K logits on the sphere: (z - mean) / sqrt(mean((z - mean)^2) + eps) * multiplier."""
    c = z - z.mean()
    return c / np.sqrt((c * c).mean() + eps) * multiplier


def np_softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def np_sphere(s, t, target, multiplier, T):
    """T² · mean over the valid positions of KL(softmax(t'/T) || softmax(s'/T)), ' the sphere projection."""
    labels = np_sample(target, s.shape[-2:])
    vals = []
    for n in range(s.shape[0]):
        for i in range(s.shape[2]):
            for j in range(s.shape[3]):
                if labels[n, i, j] == IGNORE:
                    continue
                ps = np_softmax(np_sphere_vector(s[n, :, i, j], multiplier) / T)
                pt = np_softmax(np_sphere_vector(t[n, :, i, j], multiplier) / T)
                vals.append((pt * np.log(pt / ps)).sum() * T * T)
    return np.mean(vals) if vals else 0.0


def case(n=2, classes=5, size=(5, 6), label_size=(13, 19), seed=0):
    g = torch.Generator().manual_seed(seed)
    s = 2 * torch.randn(n, classes, *size, generator=g)
    t = 5 * torch.randn(n, classes, *size, generator=g) + 3  # a confident teacher, logits off zero
    target = torch.randint(0, classes, (n, *label_size), generator=g)
    target[torch.rand(n, *label_size, generator=g) < 0.3] = IGNORE
    return s, t, target


def method(**params):
    return METHODS["sphere"](5, 5, 5, IGNORE, **params)


@pytest.mark.parametrize("shape,multiplier,T", [(dict(), 2.0, 1.0),
                                                (dict(n=3, classes=3, size=(4, 7), label_size=(11, 15)), 3.0, 4.0),
                                                (dict(n=1, classes=2, size=(6, 5), label_size=(6, 5)), 1.0, 2.0),
                                                (dict(n=2, classes=21), 2.5, 0.5)])
def test_matches_the_numpy_formula(shape, multiplier, T):
    s, t, target = case(**shape)
    got = sphere_loss(s, t, target, multiplier, T).item()
    want = np_sphere(s.double().numpy(), t.double().numpy(), target.numpy(), multiplier, T)
    assert want > 1e-3
    assert got == pytest.approx(want, rel=1e-5)
    assert method(multiplier=multiplier, temperature=T)(s, t, target).item() == pytest.approx(want, rel=1e-5)


def test_invariances():
    # holds: a per-position shift or positive scale of either network's logits (only the direction on the
    # sphere counts), the batch duplicated, the classes permuted alike in both; zero when the student's logits
    # are an affine image of the teacher's. Does not hold: scaling with a negative factor (the order flips)
    s, t, target = case()
    base = sphere_loss(s, t, target).item()
    shift, scale = torch.randn(2, 1, 5, 6), torch.rand(2, 1, 5, 6) + 0.5
    assert sphere_loss(s * scale + shift, 7 * t - 1, target).item() == pytest.approx(base, rel=1e-4)
    assert sphere_loss(s.repeat(2, 1, 1, 1), t.repeat(2, 1, 1, 1), target.repeat(2, 1, 1)).item() == \
        pytest.approx(base, rel=1e-5)
    perm = [3, 0, 4, 1, 2]
    assert sphere_loss(s[:, perm], t[:, perm], target).item() == pytest.approx(base, rel=1e-5)
    assert sphere_loss(0.3 * t + 2, t, target).item() == pytest.approx(0.0, abs=1e-6)
    assert sphere_loss(-s, t, target).item() != pytest.approx(base, rel=1e-2)


def test_is_kl_std_at_a_rescaled_temperature():
    # the kin the docs name: kl_std divides by the unbiased std (no multiplier); with eps aside, sphere at T is
    # kl_std at T / multiplier times sqrt((K - 1) / K), and its T² factor differs by that ratio squared
    s, t, target = case(classes=6)
    k, m, T = 6, 2.0, 3.0
    t_std = T / m * np.sqrt((k - 1) / k)
    assert sphere_loss(s, t, target, m, T).item() == pytest.approx(
        kl_std_loss(s, t, target, t_std).item() * (T / t_std) ** 2, rel=1e-4)


def test_ignored_positions_are_left_out_and_all_ignored_is_zero():
    s, t, target = case()
    base = sphere_loss(s, t, target).item()
    labels = np_sample(target.numpy(), (5, 6))
    ignored = torch.from_numpy(labels == IGNORE)[:, None].expand_as(s)
    assert ignored.any()
    noisy = torch.where(ignored, 100 * torch.randn_like(s), s)  # logits at ignored positions change nothing
    assert sphere_loss(noisy, t, target).item() == pytest.approx(base, rel=1e-6)
    x = s.clone().requires_grad_(True)
    zero = sphere_loss(x, t, torch.full_like(target, IGNORE))
    zero.backward()
    assert zero.item() == 0.0 and torch.equal(x.grad, torch.zeros_like(x))


def test_gradient_lowers_the_loss_and_the_teacher_gets_none():
    s, t, target = case()
    s.requires_grad_(True)
    t.requires_grad_(True)  # the method must detach it
    loss = method()(s, t, target)
    loss.backward()
    assert t.grad is None
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    # the gradient is orthogonal to each position's shift and scale directions (the loss ignores both)
    assert s.grad.sum(dim=1).abs().max() < 1e-5
    assert (s.grad * s.detach()).sum(dim=1).abs().max() < 1e-4
    with torch.no_grad():
        assert method()(s - 0.5 * s.grad, t, target).item() < loss.item()


def test_equal_logits_are_finite():
    # a position whose logits are all equal sits at the sphere's centre (eps keeps it finite): uniform softmax
    s, t, target = case()
    s = s.clone()
    s[:, :, 0, 0] = 4.0
    s.requires_grad_(True)
    loss = sphere_loss(s, t, target)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


def test_registry_entry_and_bad_parameters():
    cls = METHODS["sphere"]
    assert (cls.name, cls.default_tensor, cls.default_weight) == ("sphere", "out", 1.0)
    assert cls.logits_only and cls.same_channels
    assert {k: p.default for k, p in cls.params.items()} == {"multiplier": 2.0, "temperature": 1.0}
    assert list(method().parameters()) == []  # nothing to train
    for key in ("multiplier", "temperature"):
        for bad in (0, -1.0, float("inf"), float("nan"), "2", True, None):
            with pytest.raises(SegKDError, match=f"distill.sphere.{key}"):
                check_params("sphere", {key: bad})
        check_params("sphere", {key: 3})
    with pytest.raises(SegKDError, match="unknown parameter"):
        cls(5, 5, 5, IGNORE, pool=2)
