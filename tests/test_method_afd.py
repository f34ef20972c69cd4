"""AFD (model/methods/afd.py) against a float64 NumPy implementation of the paper's formula (the meta-network's
queries, keys, bilinear keys and embeddings read from the module, BatchNorm1d with batch statistics), its
invariances, the sign of its gradients (the student's and the meta-network's), what it trains and its registry
entry."""

import math

import numpy as np
import pytest
import torch

from model.methods import METHODS, check_params
from util.errors import SegKDError

IGNORE = 255
S_CH, T_CH = [3, 4, 6], [5, 2]


def np_adaptive(m, size):
    """Adaptive average pooling of an h x w map to size: bin i spans [floor(i h / o), ceil((i + 1) h / o))."""
    (h, w), (oh, ow) = m.shape, size
    return np.array([[m[math.floor(i * h / oh):math.ceil((i + 1) * h / oh),
                        math.floor(j * w / ow):math.ceil((j + 1) * w / ow)].mean() for j in range(ow)]
                     for i in range(oh)])


def np_value(f, size):
    """One image's C x h x w feature: mean_c f², pooled to size, flattened, divided by its L2 norm."""
    v = np_adaptive((f * f).mean(axis=0), size).ravel()
    return v / np.sqrt((v * v).sum())


def np_linear_bn(x, seq, relu):
    """Linear, BatchNorm1d in training mode (batch mean, biased variance, eps 1e-5), optional ReLU: N x C_in."""
    lin, bn = seq[0], seq[1]
    y = x @ lin.weight.detach().double().numpy().T + lin.bias.detach().double().numpy()
    y = (y - y.mean(0)) / np.sqrt(y.var(0) + bn.eps) * bn.weight.detach().double().numpy() \
        + bn.bias.detach().double().numpy()
    return np.maximum(y, 0) if relu else y


def np_afd(student, teacher, net):
    """Ji et al.: α[n, t, s] = softmax_s((<k[n, s, t], q[n, t]> + <p_t[t], p_s[s]>) / sqrt(d)); the loss
    Σ_t mean_n Σ_s α[n, t, s] mean_positions (v_s→t - v_t)²."""
    s_feats = [f.double().numpy() for f in student]
    t_feats = [f.double().numpy() for f in teacher]
    n, d, nt, ns = s_feats[0].shape[0], net.qk_dim, len(t_feats), len(s_feats)
    q = np.stack([np_linear_bn(f.mean(axis=(2, 3)), net.query[t], False) for t, f in enumerate(t_feats)], 1)
    key = np.stack([np_linear_bn(f.mean(axis=(2, 3)), net.key[s], True) for s, f in enumerate(s_feats)], 1)
    bil = np_linear_bn(key.reshape(n * ns, d), net.bilinear, False).reshape(n, ns, nt, d)
    p = net.p_t.detach().double().numpy() @ net.p_s.detach().double().numpy().T
    total = 0.0
    for t in range(nt):
        size = t_feats[t].shape[-2:]
        per_image = []
        for i in range(n):
            logits = np.array([(bil[i, s, t] @ q[i, t] + p[t, s]) / np.sqrt(d) for s in range(ns)])
            att = np.exp(logits - logits.max())
            att /= att.sum()
            v_t = np_value(t_feats[t][i], size)
            diffs = [((np_value(s_feats[s][i], size) - v_t) ** 2).mean() for s in range(ns)]
            per_image.append((att * np.array(diffs)).sum())
        total += np.mean(per_image)
    return total


def feats(n=3, seed=0, s_sizes=((7, 7), (4, 4), (4, 4)), t_sizes=((7, 7), (4, 4))):
    g = torch.Generator().manual_seed(seed)
    student = [torch.randn(n, c, *hw, generator=g) for c, hw in zip(S_CH, s_sizes)]
    teacher = [2 * torch.randn(n, c, *hw, generator=g) + 0.5 for c, hw in zip(T_CH, t_sizes)]
    return student, teacher, torch.randint(0, 4, (n, 9, 9), generator=g)


def method(seed=0, **params):
    torch.manual_seed(seed)
    return METHODS["afd"](S_CH, T_CH, 4, IGNORE, **params).train()


@pytest.mark.parametrize("qk_dim,sizes", [
    (8, {}),                                                         # layer1 at 1/4, the rest at 1/8, as ours
    (4, dict(s_sizes=((5, 6), (5, 6), (3, 3)), t_sizes=((3, 4), (6, 7)))),  # pooled down and up (repeated cells)
    (128, dict(n=2)),
])
def test_matches_numpy(qk_dim, sizes):
    m = method(qk_dim=qk_dim)
    with torch.no_grad():  # other attention weights than the initial ones: a bias into the BN, p's scaled
        for layer in (*m.attention.query, *m.attention.key, m.attention.bilinear):
            layer[1].weight.uniform_(0.5, 2.0)
            layer[1].bias.uniform_(-1, 1)
        m.attention.p_t.mul_(5)
    student, teacher, y = feats(**sizes)
    want = np_afd(student, teacher, m.attention)
    assert want > 1e-4
    assert m(student, teacher, y).item() == pytest.approx(want, rel=1e-5)


def test_attention_rows_are_distributions_over_the_student_layers():
    m = method(qk_dim=8)
    student, teacher, _ = feats()
    att = m.attention(student, teacher)
    assert att.shape == (3, 2, 3)
    assert torch.allclose(att.sum(dim=2), torch.ones(3, 2)) and (att > 0).all()


def test_invariances():
    # holds: a positive factor on any layer's feature map changes no value map (they are normalised) and, with BN
    # after the Linear, no query or key either (up to BN's eps); the labels are unused; the batch duplicated (BN's
    # batch statistics are the same); one layer against the same map gives 0
    m = method(qk_dim=8)
    student, teacher, y = feats()
    base = m(student, teacher, y).item()
    scaled = [f * k for f, k in zip(student, (3.0, 0.5, 7.0))]
    assert m(scaled, [f * 2 for f in teacher], y).item() == pytest.approx(base, rel=1e-3)
    assert m(student, teacher, torch.full_like(y, IGNORE)).item() == base
    twice = m([f.repeat(2, 1, 1, 1) for f in student], [f.repeat(2, 1, 1, 1) for f in teacher], y.repeat(2, 1, 1))
    assert twice.item() == pytest.approx(base, rel=1e-5)
    one = METHODS["afd"]([5], [5], 4, IGNORE).train()  # one pair: weight 1 on it, 0 for the same map
    assert one(teacher[:1], teacher[:1], y).item() == pytest.approx(0.0, abs=1e-7)


def test_gradients_lower_the_loss_the_teacher_gets_none_and_the_network_learns():
    m = method(qk_dim=8)
    student, teacher, y = feats()
    for f in (*student, *teacher):
        f.requires_grad_(True)
    loss = m(student, teacher, y)
    loss.backward()
    assert all(f.grad is None for f in teacher)
    assert all(torch.isfinite(f.grad).all() and f.grad.abs().sum() > 0 for f in student)
    params = dict(m.named_parameters())
    assert {"attention.p_t", "attention.p_s", "attention.bilinear.0.weight"} <= set(params)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params.values())
    assert m.attention.query[0][0].weight.grad.abs().sum() > 0  # the teacher side of the meta-network trains
    with torch.no_grad():
        stepped = [f - 50 * f.grad for f in student]
        assert m(stepped, teacher, y).item() < loss.item()
        for p in params.values():
            p -= 1.0 * p.grad
        assert m(student, teacher, y).item() < loss.item()  # the attention moves to the closer pairs


def test_one_image_per_process_is_a_clear_error():
    m = method(qk_dim=8)
    student, teacher, y = feats(n=1)
    with pytest.raises(ValueError, match="at least 2 images per process"):
        m(student, teacher, y)
    assert torch.isfinite(m.eval()(student, teacher, y))  # evaluation mode uses the running statistics


def test_registry_entry_and_bad_parameters():
    cls = METHODS["afd"]
    assert (cls.name, cls.default_tensor, cls.default_weight) == ("afd", ["layer1", "layer2", "layer3", "layer4"],
                                                                   50.0)
    assert cls.several_tensors and not cls.logits_only and not cls.same_channels
    assert {k: p.default for k, p in cls.params.items()} == {"qk_dim": 128}
    assert method().attention.p_t.shape == (2, 128)
    for bad in (0, -1, 2.0, "8", True, None):
        with pytest.raises(SegKDError, match="distill.afd.qk_dim"):
            check_params("afd", {"qk_dim": bad})
    with pytest.raises(SegKDError, match="unknown parameter"):
        cls(S_CH, T_CH, 4, IGNORE, pool=2)
    with pytest.raises(ValueError, match="built for 3 student and 2 teacher tensors"):
        method()(feats()[0][:2], feats()[1], None)
