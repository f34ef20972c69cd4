"""Spherical KD: both networks' logits are put on one sphere, then distilled with temperature KD, per pixel.

Guo et al., "Reducing the Teacher-Student Gap via Spherical Knowledge Distillation", 2020 (arXiv 2010.07485).
A small student cannot match the confidence (the logit norm) of a large teacher; the paper keeps only the
direction: each logit vector is mean-centred and divided by its standard deviation over the K classes (a layer
norm without affine, eps 1e-7: the authors' ``F.layer_norm(output, (num_classes,), None, None, 1e-7)``), then
multiplied by a common ``multiplier`` (the sphere's radius is ``multiplier`` · sqrt(K)), and Hinton's KD at
temperature T compares the two. Code followed: the authors' README (forjiuzhou/Spherical-Knowledge-Distillation,
"two lines added to Hinton KD", multiplier 2 to 3) and PaddleClas ``ppcls/loss/skdloss.py`` (``multiplier`` 2.0,
``F.layer_norm(..., epsilon=1e-7)``).

Per pixel for segmentation: every logit position of ``out`` (default) or ``aux`` is one sample; the KL is
summed over the classes, averaged over the positions whose label (sampled at the logit centres, as KD does) is
not ignore, times T² (the project's KD, :func:`model.losses.kd_kl_loss`). Ignored pixels are left out; a batch
without a valid pixel gives 0 with a graph. PaddleClas's cross-entropy to the teacher differs from the KL by
the teacher's entropy, a constant: the same gradient. Its built-in ``(1 - alpha)`` CE is not here (the
project's CE is ``train.ce_weight``).

Defaults: ``multiplier`` 2.0 and ``temperature`` 1.0 are PaddleClas's ResNet34 -> ResNet18 ImageNet config
(``resnet34_distill_resnet18_skd.yaml``: T 1, multiplier 2, alpha 0.9 on this term against 0.1 on CE); the
authors' ImageNet command uses T 4. Weight 1.0: the place of Hinton's KD term in this project's recipe
(``distill.kd_weight`` 1); no segmentation setting is published.

Not to be confused with ``skd`` (model/methods/skd.py): Liu et al.'s *structured* KD (pair-wise feature
similarities). The name ``sphere`` is this one. Close kin: ``distill.kd_loss=kl_std`` (Sun et al., CVPR 2024)
divides by the unbiased std plus eps and has no multiplier; ``sphere`` at T equals ``kl_std`` at
T / multiplier up to that std convention (a factor sqrt((K - 1) / K) on the temperature,
the T² factor aside) and the eps.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from model.losses import kd_kl_loss
from model.methods.base import Method, Param, register


def spherical_logits(logits: torch.Tensor, multiplier: float = 2.0, eps: float = 1e-7) -> torch.Tensor:
    """N x K x h x w -> N x K x h x w: each position's K logits minus their mean, divided by sqrt(their biased
    variance + eps), times ``multiplier`` (PaddleClas's ``F.layer_norm`` over the classes, no affine). In float32."""
    z = logits.float().movedim(1, -1)
    return (F.layer_norm(z, z.shape[-1:], None, None, eps) * multiplier).movedim(-1, 1)


def sphere_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
                multiplier: float = 2.0, temperature: float = 1.0, ignore_index: int = 255,
                align_corners: bool = True) -> torch.Tensor:
    """T² · mean over the valid positions of KL(softmax(s_t / T) || softmax(s_s / T)), s = :func:`spherical_logits`.

    student_logits, teacher_logits: N x K x h x w (the teacher detached here); target: N x H x W labels,
    sampled at the logit centres (placed as ``align_corners`` zooms) to leave ignored positions out. The value
    does not change when a position's logits are shifted by a constant or scaled by a positive factor (up to
    eps), nor with the batch size. Returns a scalar.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"sphere: student logits {tuple(student_logits.shape)} != teacher logits "
                         f"{tuple(teacher_logits.shape)}")
    s = spherical_logits(student_logits, multiplier)
    t = spherical_logits(teacher_logits.detach(), multiplier)
    return kd_kl_loss(s, t, target, temperature, ignore_index, False, align_corners)


def _positive_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


@register
class Sphere(Method):
    """:func:`sphere_loss` between the student's and the teacher's logits (``out`` or ``aux``)."""

    name = "sphere"
    paper = "Guo et al., Reducing the Teacher-Student Gap via Spherical Knowledge Distillation, 2020"
    default_tensor, default_weight = "out", 1.0
    logits_only, same_channels = True, True
    params = {"multiplier": Param(2.0, _positive_number, "a positive finite number"),
              "temperature": Param(1.0, _positive_number, "a positive finite number")}

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """student, teacher: N x K x h x w logits; target: N x H x W labels."""
        return sphere_loss(student, teacher, target, float(self.multiplier), float(self.temperature),
                           self.ignore_index, self.align_corners)
