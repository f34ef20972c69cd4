"""Segmentation and distillation losses: small pure functions with documented shapes.

Shapes: N batch, K classes, h×w logit resolution (1/8 of the crop for PSPNet), H×W label resolution.
Every loss averages over the *valid* pixels (label != ignore_index), so its value does not depend on the
batch size, the crop size or the number of classes. That is the bug these functions exist to avoid: a
``'mean'`` reduction over N×K×h×w divides by K, and ``'batchmean'`` divides by N only and so grows with
h×w (torchdistill, and the CIRKD-derived code this project replaces, which patched it with a factor 19).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def resize_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of N×K×h×w logits to N×K×size (align_corners=True, as PSPNet's zoom in semseg)."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=True)


def sample_target(target: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The N×H×W labels at the pixels an N×K×size logit map stands for: with align_corners=True (how the
    logits are zoomed to the label, :func:`resize_logits`) logit (i, j) sits at pixel
    (round(i (H-1)/(h-1)), round(j (W-1)/(w-1))), e.g. 8i for a 473 crop at 1/8. Nearest-neighbour resize
    would sample floor(i H/h) instead, up to 7 pixels away. No new label values can appear."""
    if tuple(target.shape[-2:]) == tuple(size):
        return target
    rows, cols = (_centres(n_in, n_out, target.device) for n_in, n_out in zip(target.shape[-2:], size))
    return target[:, rows][:, :, cols]


def _centres(n_in: int, n_out: int, device: torch.device) -> torch.Tensor:
    if n_out == 1:
        return torch.zeros(1, dtype=torch.long, device=device)
    return torch.round(torch.arange(n_out, device=device, dtype=torch.float64) * ((n_in - 1) / (n_out - 1))).long()


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """Pixel-wise cross-entropy averaged over valid pixels.

    logits: N×K×h×w, upsampled bilinearly to the label size when they differ; target: N×H×W int64.
    Returns 0 (with a graph) when every pixel is ignored, instead of NaN.
    """
    logits = resize_logits(logits, tuple(target.shape[-2:]))
    loss = F.cross_entropy(logits.float(), target, ignore_index=ignore_index, reduction="sum")
    return loss / (target != ignore_index).sum().clamp(min=1)


def _align(
    student: torch.Tensor, teacher: torch.Tensor, target: Optional[torch.Tensor], full_resolution: bool
) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    if student.shape != teacher.shape:
        raise ValueError(f"student logits {tuple(student.shape)} != teacher logits {tuple(teacher.shape)}")
    if target is None:
        return student, teacher, None
    if full_resolution:
        size = tuple(target.shape[-2:])
        return resize_logits(student, size), resize_logits(teacher, size), target
    return student, teacher, sample_target(target, tuple(student.shape[-2:]))


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
) -> torch.Tensor:
    """Temperature-scaled pixel-wise KL(softmax(t/T) || softmax(s/T)), summed over classes, averaged over
    valid pixels, times T² (Hinton et al.) so gradients keep their scale as T changes.

    student_logits, teacher_logits: N×K×h×w (same shape). target: N×H×W labels, sampled at the logits'
    positions (:func:`sample_target`) to find the ignored pixels; with ``full_resolution`` the logits are
    upsampled to H×W instead.
    ``target=None`` averages over all pixels.
    """
    s, t, target = _align(student_logits, teacher_logits, target, full_resolution)
    log_p_s = F.log_softmax(s.float() / temperature, dim=1)
    log_p_t = F.log_softmax(t.float() / temperature, dim=1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1)
    return _valid_mean(kl, target, ignore_index) * temperature**2


def smooth_l1_logits_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: Optional[torch.Tensor],
    ignore_index: int = 255,
    beta: float = 1.0,
    full_resolution: bool = False,
) -> torch.Tensor:
    """SmoothL1 (Huber with ``beta``) between logits, averaged over classes and valid pixels.

    Shapes as :func:`kd_kl_loss`.
    """
    s, t, target = _align(student_logits, teacher_logits, target, full_resolution)
    per_pixel = F.smooth_l1_loss(s.float(), t.float(), reduction="none", beta=beta).mean(dim=1)
    return _valid_mean(per_pixel, target, ignore_index)
