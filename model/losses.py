"""Segmentation and distillation losses: small pure functions with documented shapes.

Shapes: N batch, K classes, h×w logit resolution (1/8 of the crop for PSPNet), H×W label resolution.
The per-pixel losses average over the *valid* pixels (label != ignore_index), so their value does not
depend on the batch size, the crop size or the number of classes; CWD (a distribution over space per
channel) and DIST's intra-class term (a correlation over the batch's pixels) say in their docstrings what
they do with ignored pixels. That is the bug these functions exist to avoid: a
``'mean'`` reduction over N×K×h×w divides by K, and ``'batchmean'`` divides by N only and so grows with
h×w (torchdistill, and the CIRKD-derived code this project replaces, which patched it with a factor 19).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from util.distributed import all_gather_with_grad


def resize_logits(logits: torch.Tensor, size: tuple[int, int], align_corners: bool = True) -> torch.Tensor:
    """Bilinear resize of N×K×h×w logits to N×K×size (align_corners=True, as PSPNet's zoom in semseg; the
    distiller and evaluation pass the model's ``align_corners``, False for mmseg-style networks)."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=align_corners)


def sample_target(target: torch.Tensor, size: tuple[int, int], align_corners: bool = True) -> torch.Tensor:
    """The N×H×W labels at the pixels an N×K×size logit map stands for: with align_corners=True (how the
    logits are zoomed to the label, :func:`resize_logits`) logit (i, j) sits at pixel
    (round(i (H-1)/(h-1)), round(j (W-1)/(w-1))), e.g. 8i for a 473 crop at 1/8. Nearest-neighbour resize
    would sample floor(i H/h) instead, up to 7 pixels away. With align_corners=False the logit sits at
    round((i + 1/2) H/h - 1/2), clamped to the image. No new label values can appear."""
    if tuple(target.shape[-2:]) == tuple(size):
        return target
    rows, cols = (_centres(n_in, n_out, target.device, align_corners)
                  for n_in, n_out in zip(target.shape[-2:], size))
    return target[:, rows][:, :, cols]


def _centres(n_in: int, n_out: int, device: torch.device, align_corners: bool = True) -> torch.Tensor:
    i = torch.arange(n_out, device=device, dtype=torch.float64)
    if not align_corners:
        return torch.round((i + 0.5) * (n_in / n_out) - 0.5).clamp(0, n_in - 1).long()
    if n_out == 1:
        return torch.zeros(1, dtype=torch.long, device=device)
    return torch.round(i * ((n_in - 1) / (n_out - 1))).long()


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255,
                  align_corners: bool = True) -> torch.Tensor:
    """Pixel-wise cross-entropy averaged over valid pixels.

    logits: N×K×h×w, upsampled bilinearly (with ``align_corners``) to the label size when they differ;
    target: N×H×W int64. Returns 0 (with a graph) when every pixel is ignored, instead of NaN.
    """
    logits = resize_logits(logits, tuple(target.shape[-2:]), align_corners)
    loss = F.cross_entropy(logits.float(), target, ignore_index=ignore_index, reduction="sum")
    return loss / (target != ignore_index).sum().clamp(min=1)


def _align(
    student: torch.Tensor, teacher: torch.Tensor, target: Optional[torch.Tensor], full_resolution: bool,
    align_corners: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    if student.shape != teacher.shape:
        raise ValueError(f"student logits {tuple(student.shape)} != teacher logits {tuple(teacher.shape)}")
    if target is None:
        return student, teacher, None
    if full_resolution:
        size = tuple(target.shape[-2:])
        return resize_logits(student, size, align_corners), resize_logits(teacher, size, align_corners), target
    return student, teacher, sample_target(target, tuple(student.shape[-2:]), align_corners)


def _valid_mean(per_pixel: torch.Tensor, target: Optional[torch.Tensor], ignore_index: int) -> torch.Tensor:
    """Mean of an N×h×w map over the pixels whose label is not ignore_index (all pixels if no target)."""
    if target is None:
        return per_pixel.mean()
    valid = (target != ignore_index).to(per_pixel.dtype)
    return (per_pixel * valid).sum() / valid.sum().clamp(min=1)


def kd_kl_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: Optional[torch.Tensor],
    temperature: float = 1.0,
    ignore_index: int = 255,
    full_resolution: bool = False,
    align_corners: bool = True,
) -> torch.Tensor:
    """Temperature-scaled pixel-wise KL(softmax(t/T) || softmax(s/T)), summed over classes, averaged over
    valid pixels, times T² (Hinton et al.) so gradients keep their scale as T changes.

    student_logits, teacher_logits: N×K×h×w (same shape). target: N×H×W labels, sampled at the logits'
    positions (:func:`sample_target`) to find the ignored pixels; with ``full_resolution`` the logits are
    upsampled to H×W instead. ``align_corners``: the student's zoom convention, for both (model.align_corners).
    ``target=None`` averages over all pixels.
    """
    s, t, target = _align(student_logits, teacher_logits, target, full_resolution, align_corners)
    log_p_s = F.log_softmax(s.float() / temperature, dim=1)
    log_p_t = F.log_softmax(t.float() / temperature, dim=1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1)
    return _valid_mean(kl, target, ignore_index) * temperature**2


def sym_kl_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: Optional[torch.Tensor],
    temperature: float = 1.0,
    ignore_index: int = 255,
    full_resolution: bool = False,
    align_corners: bool = True,
) -> torch.Tensor:
    """Symmetric KL, the loss of PaddleClas's SSLD (``DMLLoss`` behind ``DistillationDMLLoss``): per pixel
    (KL(p_t || p_s) + KL(p_s || p_t)) / 2 = Σ_k (p_t - p_s)(log p_t - log p_s) / 2, p = softmax(x / T) over the
    K classes, averaged over valid pixels, times T².

    PaddleClas applies softmax without a temperature and reduces with ``batchmean`` over N×K (the sum over classes,
    the mean over images); here the images' pixels take the images' place, as in :func:`kd_kl_loss`, so T = 1 is
    PaddleClas's value per pixel. The T² factor is :func:`kd_kl_loss`'s (the reference has no T to scale): at any
    T, ``sym_kl`` is the mean of ``kl`` and ``kl`` with the networks swapped. Its docs call it a JS divergence; the
    code is this symmetric KL (Jeffreys' divergence halved), not JS's KL to the mixture. Shapes and ignore handling
    as :func:`kd_kl_loss`; the teacher's side carries no gradient (its logits come detached).
    """
    s, t, target = _align(student_logits, teacher_logits, target, full_resolution, align_corners)
    log_p_s = F.log_softmax(s.float() / temperature, dim=1)
    log_p_t = F.log_softmax(t.float() / temperature, dim=1)
    per_pixel = 0.5 * ((log_p_t.exp() - log_p_s.exp()) * (log_p_t - log_p_s)).sum(dim=1)
    return _valid_mean(per_pixel, target, ignore_index) * temperature**2


def smooth_l1_logits_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: Optional[torch.Tensor],
    ignore_index: int = 255,
    beta: float = 1.0,
    full_resolution: bool = False,
    align_corners: bool = True,
) -> torch.Tensor:
    """SmoothL1 (Huber with ``beta``) between logits, averaged over classes and valid pixels.

    Shapes as :func:`kd_kl_loss`.
    """
    s, t, target = _align(student_logits, teacher_logits, target, full_resolution, align_corners)
    per_pixel = F.smooth_l1_loss(s.float(), t.float(), reduction="none", beta=beta).mean(dim=1)
    return _valid_mean(per_pixel, target, ignore_index)


def standardize(logits: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Z-score over the class dimension (dim 1): (x - mean) / (std + eps), std with n - 1 as in Sun et al.'s
    code. The result does not change when a pixel's logits are shifted or scaled by a positive factor."""
    return (logits - logits.mean(dim=1, keepdim=True)) / (logits.std(dim=1, keepdim=True) + eps)


def kl_std_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: Optional[torch.Tensor],
    temperature: float = 1.0,
    ignore_index: int = 255,
    full_resolution: bool = False,
    align_corners: bool = True,
) -> torch.Tensor:
    """Logit-standardised KD (Sun et al., CVPR 2024): :func:`kd_kl_loss` on the per-pixel z-scores of both
    logit maps (:func:`standardize`), so the student matches the teacher's logit relations, not their range.
    Shapes and ignore handling as :func:`kd_kl_loss`; with ``full_resolution`` the logits are upsampled first."""
    s, t, target = _align(student_logits, teacher_logits, target, full_resolution, align_corners)
    return kd_kl_loss(standardize(s.float()), standardize(t.float()), target, temperature, ignore_index)


def _pearson(x: torch.Tensor, y: torch.Tensor, dim: int, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of x and y along ``dim`` (cosine similarity of the centred vectors)."""
    x, y = x - x.mean(dim, keepdim=True), y - y.mean(dim, keepdim=True)
    return (x * y).sum(dim) / (x.norm(dim=dim) * y.norm(dim=dim) + eps)


def dist_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: Optional[torch.Tensor],
    beta: float = 1.0,
    gamma: float = 1.0,
    ignore_index: int = 255,
    full_resolution: bool = False,
    align_corners: bool = True,
    global_batch: bool = False,
) -> torch.Tensor:
    """DIST (Huang et al., NeurIPS 2022) on softmax probabilities, as its segmentation code applies it:
    ``beta * (1 - inter) + gamma * (1 - intra)``. inter: the Pearson correlation between student and teacher
    over the K classes of a pixel, averaged over the valid pixels; intra: the correlation over the valid
    pixels of the batch for one class, averaged over the K classes. Ignored pixels are left out of both.

    The intra-class term couples the images of a batch: by default (``global_batch`` False,
    ``distill.dist_global_batch``) "the batch" is this process's share, so with several processes the term is the
    mean of per-process correlations and changes with their number, as in DIST's own per-GPU code. ``global_batch``
    computes both terms over every process's pixels (:func:`~util.distributed.all_gather_with_grad`): the value of
    one process on the whole batch, on every rank.

    student_logits, teacher_logits: N×K×h×w; target as :func:`kd_kl_loss` (None: every pixel counts).
    """
    s, t, target = _align(student_logits, teacher_logits, target, full_resolution, align_corners)
    k = s.shape[1]
    p_s = F.softmax(s.float(), dim=1).permute(0, 2, 3, 1).reshape(-1, k)  # pixels × K
    p_t = F.softmax(t.float(), dim=1).permute(0, 2, 3, 1).reshape(-1, k)
    if global_batch:  # every process's pixels, in rank order (the teacher's carry no gradient)
        p_s, p_t = all_gather_with_grad(p_s), all_gather_with_grad(p_t.detach())
        target = None if target is None else all_gather_with_grad(target.reshape(-1))
    if target is None:
        return beta * (1 - _pearson(p_s, p_t, dim=1).mean()) + gamma * (1 - _pearson(p_s, p_t, dim=0).mean())
    # No boolean indexing (its nonzero() is a host sync per step on a GPU): the valid pixels are moved first, in
    # their order (a stable sort, no sync), and the ignored ones after them weigh 0. The sums over pixels then add
    # the valid terms in the order the compacted rows of the earlier p_s[keep] did, then zeros: the same value bit
    # for bit, the gradient too at the shipped configs (tests/test_loss_identity.py), elsewhere within its last bits
    # (a reduction's blocking can see the trailing zeros). With no valid pixel every pixel is used, times 0.
    valid = (target != ignore_index).reshape(-1)
    order = torch.argsort((~valid).to(torch.uint8), stable=True)
    p_s, p_t, valid = p_s[order], p_t[order], valid[order]
    any_valid = valid.any()
    w = torch.where(any_valid, valid, torch.ones_like(valid)).to(p_s.dtype)  # pixels
    count = w.sum()
    inter = 1 - (_pearson(p_s, p_t, dim=1) * w).sum() / count
    intra = 1 - _masked_pearson(p_s, p_t, w, count).mean()
    return (beta * inter + gamma * intra) * any_valid.to(p_s.dtype)


def _masked_pearson(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, count: torch.Tensor,
                    eps: float = 1e-8) -> torch.Tensor:
    """:func:`_pearson` along dim 0 of P×K ``x`` and ``y`` over the rows whose weight ``w`` (P, 0 or 1) is 1;
    ``count`` = w.sum() > 0."""
    w = w[:, None]
    x = (x - (x * w).sum(0, keepdim=True) / count) * w
    y = (y - (y * w).sum(0, keepdim=True) / count) * w
    return (x * y).sum(0) / (x.norm(dim=0) * y.norm(dim=0) + eps)


def cwd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: Optional[torch.Tensor],
    tau: float = 1.0,
    ignore_index: int = 255,
    full_resolution: bool = False,
    align_corners: bool = True,
) -> torch.Tensor:
    """Channel-wise distillation (Shu et al., ICCV 2021): each channel's map becomes a distribution over the
    spatial positions, softmax(x / tau) over h×w; the loss is tau² · KL(teacher || student) summed over the
    positions, averaged over the N×K maps (mmrazor's normalisation).

    Ignored pixels are left out of the spatial softmax of both networks (they receive no probability, so
    their logits change nothing); an image without a valid pixel is left out of the average. Shapes as
    :func:`kd_kl_loss`; the value does not depend on the batch size, nor on tiling the same map.
    """
    s, t, target = _align(student_logits, teacher_logits, target, full_resolution, align_corners)
    s, t = s.float().flatten(2) / tau, t.float().flatten(2) / tau  # N × K × positions
    if target is not None:
        valid = (target != ignore_index).flatten(1)[:, None, :]
        s, t = s.masked_fill(~valid, -1e9), t.masked_fill(~valid, -1e9)  # probability 0, finite logs
        images = valid[:, 0].any(dim=1)
    else:
        images = torch.ones(s.shape[0], dtype=torch.bool, device=s.device)
    log_p_s, log_p_t = F.log_softmax(s, dim=2), F.log_softmax(t, dim=2)
    per_map = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=2)  # N × K
    # the mean over the maps of images with a valid pixel, by masked arithmetic (boolean indexing syncs the host)
    weight = images.to(per_map.dtype)[:, None].expand_as(per_map)
    return (per_map * weight).sum() / weight.sum().clamp(min=1) * tau**2
