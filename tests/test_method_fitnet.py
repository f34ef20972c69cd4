"""FitNets (model/methods/fitnet.py) against NumPy written from the formula (1x1 conv, BatchNorm, MSE), its
invariances, the sign of its gradient, its connector's gradients and its registry entry."""

import numpy as np
import pytest
import torch

from model.methods import METHODS, check_params
from util.errors import SegKDError

IGNORE = 255
SHAPES = [((2, 3, 4, 5), 6), ((1, 5, 3, 3), 5), ((3, 4, 2, 7), 2)]  # (N, C_s, h, w), C_t


def np_fitnet(s, t, weight, gamma, beta, mean=None, var=None, eps=1e-5):
    """Romero et al.'s hint loss with CIRKD's reduction: r(s) = BN(W s), W the C_t x C_s 1x1 conv; BN with
    the given running statistics, or with the batch's (mean and biased variance over N, h, w) when None;
    the mean over the N x C_t x h x w elements of (r(s) - t)^2."""
    y = np.einsum("oc,nchw->nohw", weight, s)
    if mean is None:
        mean, var = y.mean(axis=(0, 2, 3)), y.var(axis=(0, 2, 3))
    col = lambda v: v[None, :, None, None]  # noqa: E731
    y = (y - col(mean)) / np.sqrt(col(var) + eps) * col(gamma) + col(beta)
    return ((y - t) ** 2).mean()


def build(cs, ct, seed=0):
    """The registered method with random BN affine parameters and running statistics."""
    torch.manual_seed(seed)
    m = METHODS["fitnet"](cs, ct, 4, IGNORE)
    bn = m.connector[1]
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.normal_()
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
    return m


def np_args(m, train):
    conv, bn = m.connector
    w = conv.weight.detach().double().numpy()[:, :, 0, 0]
    g, b = bn.weight.detach().double().numpy(), bn.bias.detach().double().numpy()
    if train:
        return w, g, b, None, None, bn.eps
    return w, g, b, bn.running_mean.double().numpy(), bn.running_var.double().numpy(), bn.eps


def tensors(shape, ct, seed=1):
    g = torch.Generator().manual_seed(seed)
    n, cs, h, w = shape
    s, t = torch.randn(shape, generator=g) * 2, torch.randn(n, ct, h, w, generator=g)
    return s, t, torch.randint(0, 4, (n, h, w), generator=g)


@pytest.mark.parametrize("train", [False, True], ids=["bn_eval", "bn_train"])
@pytest.mark.parametrize("shape,ct", SHAPES)
def test_fitnet_matches_numpy(shape, ct, train):
    m = build(shape[1], ct)
    m.train(train)
    s, t, y = tensors(shape, ct)
    ref = np_fitnet(s.double().numpy(), t.double().numpy(), *np_args(m, train))
    assert m(s, t, y).item() == pytest.approx(ref, rel=1e-5)


@pytest.mark.parametrize("train", [False, True], ids=["bn_eval", "bn_train"])
def test_fitnet_invariant_to_batch_and_tiling(train):
    # duplicating the batch or tiling the map leaves the element mean and BN's batch statistics unchanged.
    # Nothing else holds: the connector is a learned linear map, so scaling or permuting the student's
    # channels changes the value (BN in train mode cancels a global scale only up to its eps)
    m = build(3, 5)
    m.train(train)
    s, t, y = tensors((2, 3, 3, 4), 5)
    base = m(s, t, y).item()
    assert m(s.repeat(2, 1, 1, 1), t.repeat(2, 1, 1, 1), y.repeat(2, 1, 1)).item() == pytest.approx(base, rel=1e-5)
    assert m(s.repeat(1, 1, 2, 3), t.repeat(1, 1, 2, 3), y.repeat(1, 2, 3)).item() == pytest.approx(base, rel=1e-5)


def test_fitnet_gradient_lowers_loss_and_trains_the_connector():
    m = build(2, 3)
    s, t, y = tensors((2, 2, 2, 2), 3)
    s.requires_grad_(True)
    t.requires_grad_(True)  # the method must detach it
    loss = m(s, t, y)
    loss.backward()
    assert t.grad is None
    params = dict(m.named_parameters())
    assert set(params) == {"connector.0.weight", "connector.1.weight", "connector.1.bias"}
    for name, p in params.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    with torch.no_grad():
        assert m(s - 0.01 * s.grad, t, y).item() < loss.item()


def test_fitnet_ignores_the_labels():
    m = build(3, 4).eval()
    s, t, y = tensors((2, 3, 3, 3), 4)
    ignored = torch.full_like(y, IGNORE)
    value = m(s, t, ignored)
    assert torch.isfinite(value)
    assert value.item() == m(s, t, y).item()
    assert value.item() > 0


def test_fitnet_zero_when_the_connector_is_the_identity():
    m = METHODS["fitnet"](3, 3, 4, IGNORE).eval()
    conv, bn = m.connector
    with torch.no_grad():
        conv.weight.copy_(torch.eye(3)[:, :, None, None])
        bn.weight.fill_(1.0)
        bn.bias.zero_()
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0 - bn.eps)  # so that x / sqrt(var + eps) = x
    _, t, y = tensors((2, 3, 4, 4), 3)
    assert m(t, t, y).item() == pytest.approx(0.0, abs=1e-10)
    assert m(t + 0.1, t, y).item() == pytest.approx(0.01, rel=1e-4)  # a shift by 0.1 costs 0.1^2


@pytest.mark.parametrize("cs,ct", [(3, 6), (4, 4)])
def test_fitnet_registry_entry(cs, ct):
    cls = METHODS["fitnet"]
    assert (cls.name, cls.default_tensor, cls.default_weight) == ("fitnet", "out_feat", 10.0)
    assert cls.params == {} and not cls.same_channels and not cls.logits_only
    check_params("fitnet", {})
    m = cls(cs, ct, 21, IGNORE)
    conv, bn = m.connector  # a connector also when the channel counts agree
    assert conv.weight.shape == (ct, cs, 1, 1) and conv.bias is None
    assert isinstance(bn, torch.nn.BatchNorm2d) and bn.num_features == ct
    assert (m.student_channels, m.teacher_channels, m.classes, m.ignore_index) == (cs, ct, 21, IGNORE)
    with pytest.raises(SegKDError, match="unknown parameter"):
        cls(cs, ct, 21, IGNORE, p=2.0)
