"""CWD, DIST and logit-standardised KD against NumPy written from each paper's formula, plus their
invariances, their ignore handling and the sign of their gradient on a two-pixel example."""

import numpy as np
import pytest
import torch

from model.distiller import Distiller
from model.losses import cwd_loss, dist_loss, kd_kl_loss, kl_std_loss, standardize

IGNORE = 255


def np_softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def np_kl_std(s, t, target, T):
    """Sun et al.: z = (x - mean_k x) / std_k x (n - 1) per pixel; T² · KL(softmax(z_t/T) || softmax(z_s/T)),
    mean over valid pixels."""
    def z(x):
        return (x - x.mean(1, keepdims=True)) / (x.std(1, ddof=1, keepdims=True) + 1e-7)
    ps, pt = np_softmax(z(s) / T, 1), np_softmax(z(t) / T, 1)
    kl = (pt * (np.log(pt) - np.log(ps))).sum(1)
    return kl[target != IGNORE].mean() * T * T


def np_pearson(a, b):
    a, b = a - a.mean(), b - b.mean()
    return (a * b).sum() / (np.sqrt((a * a).sum()) * np.sqrt((b * b).sum()) + 1e-8)


def np_dist(s, t, target, beta, gamma):
    """Huang et al.: on softmax probabilities Y (pixels x classes), inter = mean over pixels of
    pearson(Y_s[i, :], Y_t[i, :]), intra = mean over classes of pearson(Y_s[:, j], Y_t[:, j]);
    beta (1 - inter) + gamma (1 - intra), valid pixels only."""
    k = s.shape[1]
    ys = np_softmax(s, 1).transpose(0, 2, 3, 1).reshape(-1, k)[(target != IGNORE).reshape(-1)]
    yt = np_softmax(t, 1).transpose(0, 2, 3, 1).reshape(-1, k)[(target != IGNORE).reshape(-1)]
    inter = np.mean([np_pearson(ys[i], yt[i]) for i in range(len(ys))])
    intra = np.mean([np_pearson(ys[:, j], yt[:, j]) for j in range(k)])
    return beta * (1 - inter) + gamma * (1 - intra)


def np_cwd(s, t, target, tau):
    """Shu et al.: per image n and channel c, phi(x) = softmax over the valid positions of x / tau;
    tau² · sum_positions phi(t) log(phi(t) / phi(s)), averaged over the (n, c) maps."""
    vals = []
    for n in range(s.shape[0]):
        valid = (target[n] != IGNORE).reshape(-1)
        if not valid.any():
            continue
        for c in range(s.shape[1]):
            ps = np_softmax(s[n, c].reshape(-1)[valid] / tau, 0)
            pt = np_softmax(t[n, c].reshape(-1)[valid] / tau, 0)
            vals.append((pt * np.log(pt / ps)).sum())
    return np.mean(vals) * tau * tau


@pytest.fixture
def maps():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 5, 6, 7, generator=g, dtype=torch.float64) * 2
    t = torch.randn(2, 5, 6, 7, generator=g, dtype=torch.float64) * 2
    target = torch.randint(0, 5, (2, 6, 7), generator=g)
    target[0, :2] = IGNORE
    target[1, :, 5:] = IGNORE
    return s, t, target


CASES = {
    "kl_std": (lambda s, t, y: kl_std_loss(s, t, y, temperature=2.0), lambda s, t, y: np_kl_std(s, t, y, 2.0)),
    "dist": (lambda s, t, y: dist_loss(s, t, y, beta=1.0, gamma=2.0), lambda s, t, y: np_dist(s, t, y, 1.0, 2.0)),
    "cwd": (lambda s, t, y: cwd_loss(s, t, y, tau=3.0), lambda s, t, y: np_cwd(s, t, y, 3.0)),
}


@pytest.mark.parametrize("name", CASES)
def test_matches_the_numpy_formula(maps, name):
    s, t, target = maps
    ours, reference = CASES[name]
    assert ours(s, t, target).item() == pytest.approx(reference(s.numpy(), t.numpy(), target.numpy()), rel=1e-5)


@pytest.mark.parametrize("name", CASES)
def test_same_value_for_a_batch_repeated(maps, name):
    s, t, target = maps
    ours = CASES[name][0]
    assert ours(s.repeat(3, 1, 1, 1), t.repeat(3, 1, 1, 1), target.repeat(3, 1, 1)).item() == pytest.approx(
        ours(s, t, target).item(), rel=1e-6)


@pytest.mark.parametrize("name", CASES)
def test_same_value_for_the_maps_tiled_two_by_two(maps, name):
    """kl_std and DIST's inter term are per-pixel means, DIST's intra term a correlation over pixels and
    CWD a KL over space: none of them changes when every map is tiled 2 x 2 (a larger crop of a periodic scene)."""
    s, t, target = maps
    ours = CASES[name][0]
    tiled = ours(s.repeat(1, 1, 2, 2), t.repeat(1, 1, 2, 2), target.repeat(1, 2, 2)).item()
    assert tiled == pytest.approx(ours(s, t, target).item(), rel=1e-6)


@pytest.mark.parametrize("name", CASES)
def test_ignored_pixels_change_nothing(maps, name):
    s, t, target = maps
    ours = CASES[name][0]
    s2, t2 = s.clone(), t.clone()
    ignored = (target == IGNORE)[:, None].expand_as(s)
    s2[ignored], t2[ignored] = 50.0, -50.0
    assert ours(s2, t2, target).item() == pytest.approx(ours(s, t, target).item(), rel=1e-9)
    everything = torch.full_like(target, IGNORE)
    value = ours(s.clone().requires_grad_(), t, everything)
    assert value.item() == 0.0 and value.requires_grad


def test_kl_std_ignores_shift_and_scale_of_each_pixel(maps):
    s, t, target = maps
    base = kl_std_loss(s, t, target, temperature=2.0).item()
    shift = torch.randn(2, 1, 6, 7, dtype=torch.float64) * 10
    scale = torch.rand(2, 1, 6, 7, dtype=torch.float64) * 4 + 0.5
    assert kl_std_loss(s * scale + shift, t - shift, target, temperature=2.0).item() == pytest.approx(base, rel=1e-6)
    assert kd_kl_loss(s * scale, t, target, temperature=2.0).item() != pytest.approx(
        kd_kl_loss(s, t, target, temperature=2.0).item(), rel=1e-3)  # plain KD is not scale-invariant
    z = standardize(s)
    assert torch.allclose(z.mean(1), torch.zeros(1, dtype=z.dtype), atol=1e-12)


@pytest.mark.parametrize("name", CASES)
def test_distillation_loss_is_shift_invariant(maps, name):
    s, t, target = maps
    ours = CASES[name][0]
    if name == "cwd":  # CWD's softmax runs over space: shift a channel's map by a constant
        shift = torch.randn(2, 5, 1, 1, dtype=torch.float64) * 10
    else:  # the others' softmax runs over classes: shift a pixel's logits
        shift = torch.randn(2, 1, 6, 7, dtype=torch.float64) * 10
    assert ours(s + shift, t, target).item() == pytest.approx(ours(s, t, target).item(), rel=1e-6)


@pytest.mark.parametrize("name", CASES)
def test_gradient_moves_the_student_towards_the_teacher(name):
    """Two pixels, three classes (two would make every correlation ±1). At pixel 0 the teacher prefers class
    0 and the student class 1, at pixel 1 the reverse: descending the gradient raises the student's logit of
    the teacher's class and lowers that of its own. DIST's intra-class term is a correlation over the two
    pixels, ±1 whatever the values, so its gradient is checked with the inter-class term only (gamma = 0)."""
    t = torch.tensor([[[[2.0, -1.0]], [[0.0, 2.0]], [[-1.0, 0.0]]]], dtype=torch.float64)  # 1 x 3 x 1 x 2
    s = torch.tensor([[[[0.0, 2.0]], [[2.0, 0.0]], [[-1.0, -1.0]]]], dtype=torch.float64, requires_grad=True)
    target = torch.zeros(1, 1, 2, dtype=torch.long)
    loss = dist_loss(s, t, target, 1.0, 0.0) if name == "dist" else CASES[name][0](s, t, target)
    loss.backward()
    assert s.grad[0, 0, 0, 0] < 0 and s.grad[0, 1, 0, 0] > 0  # minus gradient: class 0 up, class 1 down
    assert s.grad[0, 1, 0, 1] < 0 and s.grad[0, 0, 0, 1] > 0


@pytest.mark.parametrize("kd_loss, feat_loss", [("dist", "dist"), ("kl_std", "cwd"), ("kl", "kl_std")])
def test_distiller_uses_the_configured_losses(kd_loss, feat_loss):
    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, stride=8, padding=1)

        def forward(self, x, aux=True):
            y = self.conv(x)
            return {"out": y[:, :4], "aux": y[:, 4:]}

    student, teacher = Net(), Net()
    images, target = torch.randn(2, 3, 33, 33), torch.randint(0, 4, (2, 33, 33))
    d = Distiller(student, teacher, kd_loss=kd_loss, feat_loss=feat_loss, temperature=2.0, cwd_tau=3.0,
                  dist_beta=0.5, dist_gamma=2.0)
    _, terms = d(images, target)
    s, t = student(images), teacher(images)
    expected = {"kl": lambda a, b: kd_kl_loss(a, b, target, 2.0),
                "kl_std": lambda a, b: kl_std_loss(a, b, target, 2.0),
                "dist": lambda a, b: dist_loss(a, b, target, 0.5, 2.0),
                "cwd": lambda a, b: cwd_loss(a, b, target, 3.0)}
    assert terms["kd"].item() == pytest.approx(expected[kd_loss](s["out"], t["out"]).item(), rel=1e-6)
    assert terms["feat"].item() == pytest.approx(expected[feat_loss](s["aux"], t["aux"]).item(), rel=1e-6)
