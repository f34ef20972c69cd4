"""DKD: decoupled knowledge distillation (Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022), per pixel.

KD's KL splits into a target-class part (TCKD: the binary distribution [p_g, 1 - p_g] of the labelled class g
against the rest) and a non-target part (NCKD: the distribution over the K - 1 other classes, renormalised);
DKD weights them apart, ``alpha`` · TCKD + ``beta`` · NCKD, times T². Here each labelled logit position is one
sample (its label from :func:`~model.losses.sample_target`), and the loss averages over them.

Defaults: ``alpha`` 1 and ``beta`` 8 are the authors' code's defaults (mdistiller ``CFG.DKD``, with T = 4),
not an ImageNet setting: its CIFAR-100 configs keep alpha 1 and T 4 and set beta per pair (8 for
ResNet32x4→ResNet8x4, 6 for VGG13→MobileNetV2, 2 for ResNet56→ResNet20); its ImageNet configs use T 1 with
beta 0.5 (ResNet34→ResNet18) or 2 (ResNet50→MobileNetV1). T defaults to 1 here (as this project's KD term).
There is no published setting for PSPNet-R18 segmentation, and weight 1.0 is untuned. The paper's linear
warm-up of the DKD weight over the first epochs (mdistiller ``DKD.WARMUP``: 20 epochs on CIFAR-100, 1 on
ImageNet) is not built.

Computed in log space: log(1 - p_g) is logsumexp over the non-target logits minus logsumexp over all of them,
so it stays finite when p_g rounds to 1 (no eps, no clamp); mdistiller takes log of the probabilities and
masks the target with -1000 instead.
"""

from __future__ import annotations

import torch

from model.losses import _valid_mean, sample_target
from model.methods.base import Method, Param, register


def decoupled_log_probs(logits: torch.Tensor, labels: torch.Tensor,
                        temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """log p_g, log(1 - p_g) and log q, with p = softmax(z / T) over the K classes and q the softmax over the
    K - 1 non-target classes.

    logits: N×K×h×w (K >= 2); labels: N×h×w in [0, K). Returns N×h×w, N×h×w and N×K×h×w (0 at the target
    class, where q has no entry).
    """
    z = logits / temperature
    is_target = torch.zeros_like(z, dtype=torch.bool).scatter_(1, labels[:, None], True)
    others = z.masked_fill(is_target, float("-inf"))
    lse_all, lse_others = torch.logsumexp(z, dim=1), torch.logsumexp(others, dim=1)
    log_p_g = z.gather(1, labels[:, None])[:, 0] - lse_all
    log_q = (others - lse_others[:, None]).masked_fill(is_target, 0.0)
    return log_p_g, lse_others - lse_all, log_q


def dkd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
             alpha: float = 1.0, beta: float = 8.0, temperature: float = 1.0,
             ignore_index: int = 255, align_corners: bool = True) -> torch.Tensor:
    """(alpha · TCKD + beta · NCKD) · T² per logit position, averaged over the valid positions.

    TCKD = KL([p_t,g, 1 - p_t,g] || [p_s,g, 1 - p_s,g]); NCKD = KL(q_t || q_s) (:func:`decoupled_log_probs`).
    student_logits, teacher_logits: N×K×h×w (the teacher detached here); target: N×H×W labels in [0, K) or
    ignore_index, sampled at the logit centres (placed as ``align_corners`` zooms). Every position ignored: 0
    with a graph.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} != teacher logits "
                         f"{tuple(teacher_logits.shape)}")
    if student_logits.shape[1] < 2:
        raise ValueError("DKD needs at least 2 classes (NCKD is over the non-target ones)")
    labels = sample_target(target, tuple(student_logits.shape[-2:]), align_corners)
    classes = labels.masked_fill(labels == ignore_index, 0)  # any class: ignored positions are left out below
    g_s, not_g_s, q_s = decoupled_log_probs(student_logits.float(), classes, temperature)
    g_t, not_g_t, q_t = decoupled_log_probs(teacher_logits.detach().float(), classes, temperature)
    tckd = g_t.exp() * (g_t - g_s) + not_g_t.exp() * (not_g_t - not_g_s)
    nckd = (q_t.exp() * (q_t - q_s)).sum(dim=1)  # the target class: log q is 0 in both, adding 1 · 0
    return _valid_mean(alpha * tckd + beta * nckd, labels, ignore_index) * temperature**2


@register
class DKD(Method):
    """:func:`dkd_loss` between the student's and the teacher's logits."""

    name, paper = "dkd", "Zhao et al., CVPR 2022"
    default_tensor, default_weight = "out", 1.0
    logits_only, same_channels = True, True
    uses_labels = True  # the target class splits the KL
    params = {"alpha": Param(1.0, lambda v: v >= 0, "non-negative"),
              "beta": Param(8.0, lambda v: v >= 0, "non-negative"),
              "temperature": Param(1.0, lambda v: v > 0, "positive")}

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return dkd_loss(student, teacher, target, self.alpha, self.beta, self.temperature, self.ignore_index,
                        self.align_corners)
