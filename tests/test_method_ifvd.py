"""IFVD against a float64 NumPy loop written from the paper's formula, its invariances, its ignore handling,
the sign of its gradient and its registry defaults."""

import numpy as np
import pytest
import torch

from model.methods import METHODS
from model.methods.ifvd import IFVD, ifvd_loss
from tests.numpy_refs import np_sample

IGNORE = 255


def np_sample_torch(target, size):
    return torch.from_numpy(np_sample(target.numpy(), size))


def np_ifvd(s, t, target):
    """Per image and class, prototype = mean feature of the class's valid pixels; cos(pixel, own prototype) in
    each network; mean over the valid pixels of the squared difference of the two."""
    labels = np_sample(target, s.shape[-2:])
    sq = []
    for n in range(s.shape[0]):
        for i in range(s.shape[2]):
            for j in range(s.shape[3]):
                g = labels[n, i, j]
                if g == IGNORE:
                    continue
                mask = labels[n] == g
                cos = []
                for f in (s[n], t[n]):
                    proto, x = f[:, mask].mean(axis=1), f[:, i, j]
                    cos.append(x @ proto / (np.linalg.norm(x) * np.linalg.norm(proto)))
                sq.append((cos[0] - cos[1]) ** 2)
    return np.mean(sq) if sq else 0.0


def case(n=2, cs=3, ct=5, size=(5, 6), label_size=(13, 19), classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, cs, *size, generator=g)
    t = torch.randn(n, ct, *size, generator=g)
    target = torch.randint(0, classes, (n, *label_size), generator=g)
    target[torch.rand(n, *label_size, generator=g) < 0.3] = IGNORE
    return s, t, target


@pytest.mark.parametrize("shape", [dict(), dict(n=3, cs=4, ct=4, size=(4, 7), label_size=(11, 15), classes=3),
                                   dict(n=1, cs=2, ct=6, size=(6, 5), label_size=(6, 5), classes=5)])
def test_matches_the_numpy_formula(shape):
    s, t, target = case(**shape)
    classes = shape.get("classes", 4)
    got = ifvd_loss(s, t, target, classes, IGNORE).item()
    want = np_ifvd(s.double().numpy(), t.double().numpy(), target.numpy())
    assert want > 1e-3
    assert got == pytest.approx(want, rel=1e-5)


def test_labels_are_taken_at_the_feature_centres():
    """Nearest resizing (floor(j W / w)) picks other labels here, and another value."""
    s, t, target = case()
    floor = target[:, [int(i * 13 / 5) for i in range(5)]][:, :, [int(j * 19 / 6) for j in range(6)]]
    assert not torch.equal(floor, np_sample_torch(target, (5, 6)))
    assert ifvd_loss(s, t, target, 4).item() != pytest.approx(ifvd_loss(s, t, floor, 4).item(), rel=1e-3)



def test_duplicating_the_batch_keeps_the_value():
    s, t, target = case()
    one = ifvd_loss(s, t, target, 4)
    two = ifvd_loss(torch.cat([s, s]), torch.cat([t, t]), torch.cat([target, target]), 4)
    assert two.item() == pytest.approx(one.item(), rel=1e-6)


def test_features_at_ignored_pixels_change_nothing():
    s, t, target = case()
    ignored = np_sample_torch(target, (5, 6)) == IGNORE
    assert ignored.any() and not ignored.all()
    s2, t2 = s.clone(), t.clone()
    s2.permute(0, 2, 3, 1)[ignored] = 100.0 * torch.randn(int(ignored.sum()), 3)
    t2.permute(0, 2, 3, 1)[ignored] = -50.0
    assert not torch.equal(s2, s)
    assert ifvd_loss(s2, t2, target, 4).item() == pytest.approx(ifvd_loss(s, t, target, 4).item(), rel=1e-6)


def test_a_step_against_the_gradient_lowers_the_loss():
    s, t, target = case(n=1, cs=2, ct=3, size=(2, 3), label_size=(2, 3), classes=2, seed=3)
    target[0] = torch.tensor([[0, 0, 1], [1, 1, IGNORE]])
    s.requires_grad_(True)
    t.requires_grad_(True)
    loss = ifvd_loss(s, t, target, 2)
    loss.backward()
    assert t.grad is None
    assert s.grad.abs().sum() > 0
    assert (s.grad[..., 1, 2] == 0).all()  # the ignored pixel: in no prototype, out of the mean
    with torch.no_grad():
        lower = ifvd_loss(s - 1e-2 * s.grad / s.grad.norm(), t, target, 2)
    assert lower < loss


def test_every_pixel_ignored_gives_a_finite_zero_with_a_graph():
    s, t, target = case()
    s.requires_grad_(True)
    loss = ifvd_loss(s, t, torch.full_like(target, IGNORE), 4)
    assert torch.isfinite(loss) and loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(s.grad).all() and (s.grad == 0).all()


def test_zero_when_the_student_is_the_teacher():
    s, _, target = case(cs=4)
    assert ifvd_loss(s, s.clone(), target, 4).item() == pytest.approx(0.0, abs=1e-12)
    assert ifvd_loss(s, s + 0.5 * torch.randn_like(s), target, 4).item() > 1e-4


def test_the_registered_method_uses_its_declared_defaults():
    cls = METHODS["ifvd"]
    assert cls is IFVD
    assert (cls.default_tensor, cls.default_weight, cls.params) == ("out_feat", 20.0, {})
    assert not cls.logits_only and not cls.same_channels
    s, t, target = case()
    target[target == IGNORE] = 7  # the method's own ignore_index, not 255
    method = cls(3, 5, 4, 7)
    assert method(s, t, target).item() == pytest.approx(ifvd_loss(s, t, target, 4, 7).item(), rel=1e-6)
    assert method(s, t, target).item() != pytest.approx(ifvd_loss(s, t, target, 8, IGNORE).item(), rel=1e-3)
