"""SKD's pair-wise term (model/methods/skd.py) against NumPy written from the paper's node affinities, its
invariances, the sign of its gradient and its registry entry."""

import numpy as np
import pytest
import torch

from model.methods import METHODS, check_params
from util.errors import SegKDError

IGNORE = 255


def np_similarity(f, pool):
    """Liu et al.'s nodes for one C x h x w map: the channel-wise max over each pool x pool patch, patches
    starting every pool rows and columns (the last ones cut at the border), row by row; each node divided by
    its L2 norm (kept 0 if 0); the M x M matrix of their dot products (cosine similarities)."""
    _, h, w = f.shape
    nodes = [f[:, i:i + pool, j:j + pool].max(axis=(1, 2)) for i in range(0, h, pool) for j in range(0, w, pool)]
    nodes = [v / np.sqrt((v * v).sum()) if (v != 0).any() else v for v in nodes]
    return np.array([[a @ b for b in nodes] for a in nodes])


def np_skd(s, t, pool):
    """The mean over N x M x M of the squared differences of the student's and teacher's similarities."""
    return float(np.mean([(np_similarity(s[i], pool) - np_similarity(t[i], pool)) ** 2 for i in range(len(s))]))


def method(**params):
    return METHODS["skd"](3, 5, 4, IGNORE, **params)


def tensors(n, cs, ct, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, cs, h, w, generator=g), torch.randn(n, ct, h, w, generator=g),
            torch.randint(0, 4, (n, h, w), generator=g))


@pytest.mark.parametrize("n,cs,ct,h,w,pool", [
    (2, 3, 5, 4, 6, 2),  # pool divides the map
    (1, 4, 4, 5, 3, 2),  # odd sizes: partial patches at the border (ceil_mode)
    (2, 2, 3, 6, 6, 3),
    (1, 3, 2, 3, 5, 1),  # every position a node
    (1, 2, 4, 3, 5, 4),  # patch larger than the map's height: one row of nodes
])
def test_skd_matches_numpy(n, cs, ct, h, w, pool):
    s, t, y = tensors(n, cs, ct, h, w)
    s = s.clone()
    s[0, :, :pool, :pool] = 0  # an all-zero node
    ref = np_skd(s.double().numpy(), t.double().numpy(), pool)
    assert method(pool=pool)(s, t, y).item() == pytest.approx(ref, rel=1e-5)


def test_skd_invariances():
    # holds: the batch duplicated (a mean over images); a positive factor per image, or channels permuted
    # (max per channel, then cosine); tiling the map when pool divides h and w (the graph repeats, so does
    # every pair). Does not hold: a sign flip (max pooling picks other values), nor tiling when pool does not
    # divide the size (the border patches change)
    m = method()
    s, t, y = tensors(2, 3, 5, 4, 6)
    base = m(s, t, y).item()
    assert m(s.repeat(2, 1, 1, 1), t.repeat(2, 1, 1, 1), y.repeat(2, 1, 1)).item() == pytest.approx(base, rel=1e-5)
    scaled = s * torch.tensor([3.0, 0.25])[:, None, None, None]
    assert m(scaled[:, [2, 0, 1]], t, y).item() == pytest.approx(base, rel=1e-5)
    tiled = m(s.repeat(1, 1, 2, 3), t.repeat(1, 1, 2, 3), y.repeat(1, 2, 3)).item()
    assert tiled == pytest.approx(base, rel=1e-5)


def test_skd_gradient_lowers_loss_teacher_gets_none():
    m = method()
    s, t, y = tensors(1, 3, 5, 4, 4)
    s.requires_grad_(True)
    t.requires_grad_(True)  # the method must detach it
    loss = m(s, t, y)
    loss.backward()
    assert t.grad is None
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    with torch.no_grad():
        assert m(s - 0.1 * s.grad, t, y).item() < loss.item()


def test_skd_all_zero_map_is_finite():
    # every student node 0: its similarities are all 0, the loss is the mean of the teacher's squared ones
    s, t, y = tensors(2, 3, 5, 4, 4)
    s = torch.zeros_like(s, requires_grad=True)
    loss = method()(s, t, y)
    loss.backward()
    assert loss.item() == pytest.approx(np_skd(np.zeros((2, 3, 4, 4)), t.double().numpy(), 2), rel=1e-5)
    assert torch.isfinite(s.grad).all()


def test_skd_ignores_the_labels():
    m = method()
    s, t, y = tensors(2, 3, 5, 4, 4)
    value = m(s, t, torch.full_like(y, IGNORE))
    assert torch.isfinite(value)
    assert value.item() == m(s, t, y).item()
    assert value.item() > 0


def test_skd_zero_for_the_same_structure():
    m = METHODS["skd"](4, 4, 4, IGNORE)
    _, t, y = tensors(2, 4, 4, 5, 4)
    assert m(t, t, y).item() == 0.0
    assert m(3 * t, t, y).item() == pytest.approx(0.0, abs=1e-10)


def test_skd_registry_entry():
    cls = METHODS["skd"]
    assert (cls.name, cls.default_tensor, cls.default_weight) == ("skd", "out_feat", 10.0)
    assert set(cls.params) == {"pool"} and cls.params["pool"].default == 2
    assert not cls.same_channels and not cls.logits_only
    assert method().pool == 2
    assert list(method().parameters()) == []  # nothing to train
    for ok in (1, 2, 3, 8):
        check_params("skd", {"pool": ok})
        assert method(pool=ok).pool == ok
    for bad in (0, -1, 2.0, "2", True, None):
        with pytest.raises(SegKDError, match="distill.skd.pool"):
            check_params("skd", {"pool": bad})
        with pytest.raises(SegKDError, match="distill.skd.pool"):
            method(pool=bad)
    with pytest.raises(SegKDError, match="unknown parameter"):
        cls(3, 5, 4, IGNORE, p=2.0)
