"""SSLD (PaddleClas's distillation on unlabelled images): the symmetric-KL choice ``distill.kd_loss=sym_kl`` against
NumPy, the unlabelled pool's loader (its mixing, its seeded order, resume), the rule that only label-free terms see
unlabelled images, and the bad inputs refused in one line before any run directory exists."""

import numpy as np
import pytest
import torch

from model.losses import kd_kl_loss, sym_kl_loss
from tests.numpy_refs import np_sample

IGNORE = 255


def np_sym_kl(s: np.ndarray, t: np.ndarray, target: np.ndarray, temperature: float) -> float:
    """(KL(p_t||p_s) + KL(p_s||p_t)) / 2 per pixel at T, mean over the valid pixels (labels at the logit centres),
    times T²: PaddleClas's DMLLoss with pixels as its samples."""
    def log_softmax(x):
        x = x / temperature
        x = x - x.max(axis=1, keepdims=True)
        return x - np.log(np.exp(x).sum(axis=1, keepdims=True))

    ls, lt = log_softmax(s.astype(np.float64)), log_softmax(t.astype(np.float64))
    kl_ts = (np.exp(lt) * (lt - ls)).sum(axis=1)
    kl_st = (np.exp(ls) * (ls - lt)).sum(axis=1)
    valid = np_sample(target, s.shape[-2:]) != IGNORE
    return float(((kl_ts + kl_st) / 2)[valid].mean() * temperature**2)


def logits(seed: int, shape=(2, 5, 6, 7)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * 2, torch.randn(*shape, generator=g) * 2


def labels(seed: int, size=(41, 49), classes=5):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, classes, (2, *size), generator=g)
    target[0, :12] = IGNORE
    target[1, :, 30:] = IGNORE
    return target


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_sym_kl_matches_numpy(temperature):
    s, t = logits(0)
    target = labels(1)
    got = sym_kl_loss(s, t, target, temperature).item()
    assert got == pytest.approx(np_sym_kl(s.numpy(), t.numpy(), target.numpy(), temperature), rel=1e-5)


def test_sym_kl_is_the_mean_of_both_kl_directions():
    s, t = logits(2)
    target = labels(3)
    both = (kd_kl_loss(s, t, target, 2.0) + kd_kl_loss(t, s, target, 2.0)) / 2
    assert sym_kl_loss(s, t, target, 2.0).item() == pytest.approx(both.item(), rel=1e-5)
    assert sym_kl_loss(s, t, target, 2.0).item() == pytest.approx(sym_kl_loss(t, s, target, 2.0).item(), rel=1e-6)


def test_sym_kl_paddleclas_value_at_t1():
    """One pixel per image, no ignore: PaddleClas's DMLLoss (softmax, batchmean KL both ways, halved)."""
    s, t = logits(4, (3, 5, 1, 1))
    ps, pt = torch.softmax(s[:, :, 0, 0], 1), torch.softmax(t[:, :, 0, 0], 1)
    paddle = (torch.nn.functional.kl_div(ps.log(), pt, reduction="batchmean")
              + torch.nn.functional.kl_div(pt.log(), ps, reduction="batchmean")) / 2
    assert sym_kl_loss(s, t, None).item() == pytest.approx(paddle.item(), rel=1e-5)


def test_sym_kl_zero_when_equal_gradient_towards_teacher_and_ignored_pixels():
    s, t = logits(5)
    target = labels(6)
    assert sym_kl_loss(t.clone(), t, target, 3.0).item() == pytest.approx(0.0, abs=1e-7)
    s.requires_grad_(True)
    loss = sym_kl_loss(s, t, target, 2.0)
    loss.backward()
    with torch.no_grad():
        lower = sym_kl_loss(s - 1e-2 * s.grad / s.grad.norm(), t, target, 2.0)
    assert lower.item() < loss.item()
    everything_ignored = sym_kl_loss(s, t, torch.full_like(target, IGNORE))
    assert everything_ignored.item() == 0.0
    changed = s.detach().clone()  # logits at ignored pixels change nothing
    changed[0, :, :1] += 5.0  # row 0 at 1/8 samples label row 0: ignored for image 0
    assert sym_kl_loss(changed, t, target).item() == pytest.approx(sym_kl_loss(s.detach(), t, target).item(), rel=1e-6)
