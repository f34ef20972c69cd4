"""Losses against values computed here by independent (loop / numpy) formulas, and their invariances."""

import math

import numpy as np
import pytest
import torch

from model.losses import cross_entropy, kd_kl_loss, sample_target, smooth_l1_logits_loss


def np_softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def reference_kd(s, t, target, T, ignore):
    """Loop over pixels: sum_c p_t log(p_t / p_s), mean over valid pixels, times T^2."""
    s, t, target = s.double().numpy(), t.double().numpy(), target.numpy()
    ps, pt = np_softmax(s / T, 1), np_softmax(t / T, 1)
    vals = []
    n, _, h, w = s.shape
    for i in range(n):
        for y in range(h):
            for x in range(w):
                if target[i, y, x] != ignore:
                    vals.append(sum(pt[i, c, y, x] * math.log(pt[i, c, y, x] / ps[i, c, y, x])
                                    for c in range(s.shape[1])))
    return sum(vals) / len(vals) * T * T


@pytest.fixture
def logits():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 5, 4, 6, generator=g) * 3
    t = torch.randn(2, 5, 4, 6, generator=g) * 3
    target = torch.randint(0, 5, (2, 4, 6), generator=g)
    target[0, 0, :3] = 255
    target[1, 2, 1] = 255
    return s, t, target


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0])
def test_kd_matches_reference(logits, T):
    s, t, target = logits
    got = kd_kl_loss(s, t, target, temperature=T, ignore_index=255).item()
    assert got == pytest.approx(reference_kd(s, t, target, T, 255), rel=1e-5)


def test_kd_zero_for_identical_and_positive_otherwise(logits):
    s, t, target = logits
    assert kd_kl_loss(t, t, target).item() == pytest.approx(0.0, abs=1e-6)
    assert kd_kl_loss(s, t, target).item() > 0


def test_kd_invariant_to_batch_and_crop_size(logits):
    s, t, target = logits
    base = kd_kl_loss(s, t, target, 2.0).item()
    # the same per-pixel content tiled 3x in batch and 2x2 in space: a 'mean' or 'batchmean' over NxCxHxW
    # would change by the tiling factor, the per-valid-pixel mean does not
    tile = lambda x: x.repeat(3, *([1] * (x.dim() - 1)))  # noqa: E731
    big_s, big_t, big_y = tile(s).repeat(1, 1, 2, 2), tile(t).repeat(1, 1, 2, 2), tile(target).repeat(1, 2, 2)
    assert kd_kl_loss(big_s, big_t, big_y, 2.0).item() == pytest.approx(base, rel=1e-5)


def test_kd_ignored_pixels_contribute_nothing(logits):
    s, t, target = logits
    ignored = target == 255
    s2 = torch.where(ignored[:, None], torch.randn_like(s) * 50, s)
    assert kd_kl_loss(s2, t, target).item() == pytest.approx(kd_kl_loss(s, t, target).item(), rel=1e-6)
    s2.requires_grad_(True)
    kd_kl_loss(s2, t, target).backward()
    assert s2.grad[ignored[:, None].expand_as(s2)].abs().max() == 0


def test_kd_temperature_scaling_keeps_gradient_scale():
    # for large T, T^2 * KL -> (1/2K) * sum (s - t)^2 centred; the T^2 factor keeps the value O(1)
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(1, 4, 3, 3, generator=g), torch.randn(1, 4, 3, 3, generator=g)
    big_t = kd_kl_loss(s, t, None, temperature=100.0).item()
    sc, tc = s - s.mean(1, keepdim=True), t - t.mean(1, keepdim=True)
    approx = ((sc - tc) ** 2).sum(1).mean().item() / (2 * 4)
    assert big_t == pytest.approx(approx, rel=1e-2)


def test_kd_downsamples_target_or_upsamples_logits(logits):
    s, t, _ = logits
    target = torch.randint(0, 5, (2, 32, 48))
    target[:, :8] = 255
    low = kd_kl_loss(s, t, target)
    # align_corners positions: rows round(i * 31 / 3), columns round(j * 47 / 5)
    at_logits = target[:, [0, 10, 21, 31]][:, :, [0, 9, 19, 28, 38, 47]]
    assert low.item() == pytest.approx(reference_kd(s, t, at_logits, 1.0, 255), rel=1e-5)
    full = kd_kl_loss(s, t, target, full_resolution=True)
    # full resolution: both logits zoomed to the label (bilinear, align_corners=True, as PSPNet's own zoom),
    # every labelled pixel counted
    zoom = lambda x: torch.nn.functional.interpolate(x, size=(32, 48), mode="bilinear", align_corners=True)  # noqa: E731
    assert full.item() == pytest.approx(reference_kd(zoom(s), zoom(t), target, 1.0, 255), rel=1e-5)
    assert full.item() != pytest.approx(low.item(), rel=1e-3)


def test_sample_target_creates_no_new_values():
    target = torch.tensor([[[0, 3, 255, 7] * 4] * 16])
    assert set(sample_target(target, (5, 7)).unique().tolist()) <= {0, 3, 7, 255}
    assert sample_target(target, (1, 1)).shape == (1, 1, 1)


def test_kd_mask_is_sampled_at_the_logit_centres():
    """A 65 crop gives 9 logit rows at pixels 0, 8, ..., 64 (align_corners). With the ignore region starting
    at row 22, logit row 3 (pixel 24) is ignored and row 2 (pixel 16) is not; nearest-neighbour resize
    would sample pixel floor(3 * 65 / 9) = 21 for row 3 and count it."""
    torch.manual_seed(0)
    s, t = torch.randn(1, 4, 9, 9), torch.randn(1, 4, 9, 9)
    target = torch.zeros(1, 65, 65, dtype=torch.long)
    target[:, 22:] = 255
    at_logits = sample_target(target, (9, 9))
    assert at_logits[0, :, 0].tolist() == [0, 0, 0, 255, 255, 255, 255, 255, 255]
    expected = torch.full((1, 9, 9), 255)
    expected[:, :3] = 0
    assert kd_kl_loss(s, t, target).item() == pytest.approx(reference_kd(s, t, expected, 1.0, 255), rel=1e-6)
    nearest = torch.nn.functional.interpolate(target[:, None].float(), size=(9, 9), mode="nearest")[:, 0].long()
    assert nearest[0, 3, 0] == 0  # the old sampling counted row 3: the test tells the two apart
    assert kd_kl_loss(s, t, target).item() != pytest.approx(reference_kd(s, t, nearest, 1.0, 255), rel=1e-3)


def test_smooth_l1_matches_reference(logits):
    s, t, target = logits
    d = (s - t).abs().double()
    per = torch.where(d < 1.0, 0.5 * d**2, d - 0.5).mean(1)
    valid = target != 255
    assert smooth_l1_logits_loss(s, t, target).item() == pytest.approx(per[valid].mean().item(), rel=1e-6)
    d2 = torch.where(d < 0.5, 0.5 * d**2 / 0.5, d - 0.25).mean(1)
    assert smooth_l1_logits_loss(s, t, target, beta=0.5).item() == pytest.approx(d2[valid].mean().item(), rel=1e-6)


def test_cross_entropy_matches_reference_and_ignores(logits):
    s, _, target = logits
    logp = torch.log_softmax(s.double(), 1)
    valid = target != 255
    ref = -logp.gather(1, target.clamp(max=4)[:, None])[:, 0][valid].mean()
    assert cross_entropy(s, target).item() == pytest.approx(ref.item(), rel=1e-6)
    assert cross_entropy(s, torch.full_like(target, 255)).item() == 0.0
