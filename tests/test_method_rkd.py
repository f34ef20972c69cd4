"""RKD (model/methods/rkd.py) against a float64 NumPy loop written from the paper's potentials (pooled nodes of
each image, distances over their mean, angles of triplets, Huber), its invariances, coincident nodes, the sign of
its gradient and its registry entry."""

import math

import numpy as np
import pytest
import torch

from model.methods import METHODS, check_params
from model.methods.rkd import rkd_loss
from util.errors import SegKDError

IGNORE = 255


def np_pool(f, grid):
    """adaptive average pooling of one C x h x w map to min(grid, h) x min(grid, w): bin i spans
    [floor(i h / g), ceil((i + 1) h / g)); the bins' means, row by row, as M x C."""
    _, h, w = f.shape
    gh, gw = min(grid, h), min(grid, w)
    rows = [(math.floor(i * h / gh), math.ceil((i + 1) * h / gh)) for i in range(gh)]
    cols = [(math.floor(j * w / gw), math.ceil((j + 1) * w / gw)) for j in range(gw)]
    return np.array([f[:, a:b, c:d].mean(axis=(1, 2)) for a, b in rows for c, d in cols])


def np_unit(v):
    n = np.sqrt((v * v).sum())
    return v / n if n > 0 else v


def np_huber(x):
    return np.where(np.abs(x) < 1, 0.5 * x * x, np.abs(x) - 0.5)


def np_potentials(x):
    """x: M x C. ψ_D[i, j] = |x_i - x_j| / mean over i != j; ψ_A[i, j, k] = <unit(x_j - x_i), unit(x_k - x_i)>."""
    m = len(x)
    d = np.array([[np.sqrt(((x[i] - x[j]) ** 2).sum()) for j in range(m)] for i in range(m)])
    mu = d.sum() / (m * (m - 1))
    psi_d = d / mu if mu > 0 else d
    psi_a = np.array([[[np_unit(x[j] - x[i]) @ np_unit(x[k] - x[i]) for k in range(m)] for j in range(m)]
                      for i in range(m)])
    return psi_d, psi_a


def np_rkd(s, t, wd, wa, grid):
    dist, angle = [], []
    for n in range(len(s)):
        ds, as_ = np_potentials(np_pool(s[n], grid))
        dt, at = np_potentials(np_pool(t[n], grid))
        dist.append(np_huber(ds - dt).mean())
        angle.append(np_huber(as_ - at).mean())
    return wd * np.mean(dist) + wa * np.mean(angle)


def tensors(n=2, cs=3, ct=5, h=5, w=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, cs, h, w, generator=g), 3 * torch.randn(n, ct, h, w, generator=g) + 1,
            torch.randint(0, 4, (n, h, w), generator=g))


def method(**params):
    return METHODS["rkd"](3, 5, 4, IGNORE, **params)


@pytest.mark.parametrize("shape,wd,wa,grid", [
    (dict(), 25.0, 50.0, 8),           # the map smaller than the grid: every position a node
    (dict(h=7, w=9), 1.0, 2.0, 3),     # uneven bins, overlapping (adaptive pooling)
    (dict(n=1, h=4, w=4), 1.0, 0.0, 2),  # distance only, 4 nodes
    (dict(n=3, cs=2, ct=2, h=3, w=5), 0.0, 1.0, 4),  # angle only, a grid wider than the height
])
def test_matches_numpy(shape, wd, wa, grid):
    s, t, y = tensors(**shape)
    want = np_rkd(s.double().numpy(), t.double().numpy(), wd, wa, grid)
    assert want > 1e-3
    assert rkd_loss(s, t, wd, wa, grid).item() == pytest.approx(want, rel=1e-5)
    got = method(distance_weight=wd, angle_weight=wa, grid=grid)(s, t, y).item()
    assert got == pytest.approx(want, rel=1e-5)


def test_invariances():
    # holds: the batch duplicated (a mean over images); per image, a positive scale, a translation and a
    # rotation of the node features (the channels mixed by an orthogonal matrix: distances and angles keep);
    # zero against itself. Does not hold: a per-channel scale (distances change unevenly)
    m = method()
    s, t, y = tensors()
    base = m(s, t, y).item()
    assert m(s.repeat(2, 1, 1, 1), t.repeat(2, 1, 1, 1), y.repeat(2, 1, 1)).item() == pytest.approx(base, rel=1e-5)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(4)))
    moved = torch.einsum("dc,nchw->ndhw", q, s) * torch.tensor([2.0, 0.3])[:, None, None, None] + 5
    assert m(moved, t, y).item() == pytest.approx(base, rel=1e-4)
    same = METHODS["rkd"](5, 5, 4, IGNORE)
    assert same(t, t, y).item() == 0.0
    assert same(4 * t - 2, t, y).item() == pytest.approx(0.0, abs=1e-6)
    assert m(s * torch.tensor([1.0, 5.0, 0.2])[None, :, None, None], t, y).item() != pytest.approx(base, rel=1e-2)


def test_coincident_nodes_are_finite():
    # a flat region gives nodes at distance 0: their difference normalises to 0 (cosine 0), no NaN anywhere
    s, t, y = tensors(h=4, w=4)
    s = s.clone()
    s[0, :, :2, :] = 1.5  # 8 equal positions in image 0
    t = t.clone()
    t[1] = 0.0  # every teacher node of image 1 the same: all its potentials 0
    s.requires_grad_(True)
    loss = method(grid=4)(s, t, y)
    loss.backward()
    want = np_rkd(s.detach().double().numpy(), t.double().numpy(), 25.0, 50.0, 4)
    assert loss.item() == pytest.approx(want, rel=1e-5)
    assert torch.isfinite(s.grad).all()


def test_gradient_lowers_loss_teacher_gets_none():
    m = method()
    s, t, y = tensors()
    s.requires_grad_(True)
    t.requires_grad_(True)  # the method must detach it
    loss = m(s, t, y)
    loss.backward()
    assert t.grad is None
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    with torch.no_grad():
        assert m(s - 0.01 * s.grad, t, y).item() < loss.item()


def test_ignores_the_labels():
    m = method()
    s, t, y = tensors()
    value = m(s, t, torch.full_like(y, IGNORE))
    assert torch.isfinite(value) and value.item() > 0
    assert value.item() == m(s, t, y).item()


def test_pooling_caps_the_triplets():
    # a 60x60 map at grid 8 is 64 nodes: 64³ cosines per image, whatever the map's size
    from model.methods.rkd import relations, rkd_nodes
    nodes = rkd_nodes(torch.randn(1, 4, 60, 60), 8)
    assert nodes.shape == (1, 64, 4)
    assert relations(nodes)[1].shape == (1, 64, 64, 64)


def test_registry_entry_and_bad_parameters():
    cls = METHODS["rkd"]
    assert (cls.name, cls.default_tensor, cls.default_weight) == ("rkd", "out_feat", 1.0)
    assert not cls.same_channels and not cls.logits_only
    assert {k: p.default for k, p in cls.params.items()} == {"distance_weight": 25.0, "angle_weight": 50.0,
                                                             "grid": 8}
    assert list(method().parameters()) == []  # nothing to train
    for bad in (1, 0, -1, 2.0, "8", True, None):
        with pytest.raises(SegKDError, match="distill.rkd.grid"):
            check_params("rkd", {"grid": bad})
    for key in ("distance_weight", "angle_weight"):
        for bad in (-1.0, float("inf"), float("nan"), "1", True, None):
            with pytest.raises(SegKDError, match=f"distill.rkd.{key}"):
                method(**{key: bad})
        check_params("rkd", {key: 0})
    with pytest.raises(SegKDError, match="unknown parameter"):
        cls(3, 5, 4, IGNORE, pool=2)
