"""RKD: relational KD, the student matches the teacher's distances and angles between samples, not the samples.

Park et al., "Relational Knowledge Distillation", CVPR 2019. For samples x_1..x_M of one network, the
distance-wise potential is ψ_D(x_i, x_j) = ||x_i - x_j|| / μ, μ the mean distance over the pairs i != j (the
authors' code: over the pairs at a non-zero distance; the same unless two nodes coincide); the angle-wise
potential is the cosine of the angle at one sample between two others, <e_ji, e_ki> with
e_ji = (x_j - x_i) / ||x_j - x_i|| (indexed [i, j, k], the vertex first, as the authors' code), over all triplets.
The loss is ``distance_weight`` · mean SmoothL1(ψ_D^s, ψ_D^t) + ``angle_weight`` · mean SmoothL1(ψ_A^s, ψ_A^t)
(Huber with δ = 1). Code followed: the authors' ``metric/loss.py`` (lenscloth/RKD: ``RkdDistance``,
``RKdAngle``: means over all M x M pairs and M x M x M triplets, the degenerate ones included, a zero
difference normalised to 0, the teacher under no_grad) and PaddleClas ``ppcls/loss/rkdloss.py`` (the same on
pooled feature maps). Only the two relational terms; the paper's task loss is this project's CE and KD.

The samples, for segmentation: the nodes of each image. The tensor (``out_feat`` by default, any feature or
logit map) is average-pooled to a ``grid`` x ``grid`` map (``adaptive_avg_pool2d``; a map smaller than
``grid`` keeps its size), and its M = grid² positions are the samples, each image a relation graph of its
own, μ computed per image, the loss averaged over the images. Why per image and not across the batch: the
value does not depend on the batch size or on how a batch is split across processes (a batch-wide graph
would change with the per-GPU batch), as ``skd`` (Liu et al.'s pair-wise term, also on pooled nodes of each
image), and the N·M nodes of a batch-wide graph would make the angle term's (N·M)³ triplets too many.
Pooling is what caps the cost: the angle term holds N x M x M x C differences of unit length and N x M³
cosines (grid 8: M = 64, 262 144 triplets per image; 60x60 maps unpooled would be 4.7e10). Labels are not
used: every position counts, ignore pixels included.

Defaults: ``distance_weight`` 25 and ``angle_weight`` 50 are the paper's λ_RKD-D and λ_RKD-A (its
classification setting); the authors' metric-learning scripts use 1 and 2 (``examples/*.sh``), PaddleClas
1 and 1 (``DistillationRKDLoss``). ``grid`` 8 is ours (PaddleClas's distance term pools each image to 1 x 1 by
default, one sample per image across the batch, which a per-image graph cannot use). Weight 1.0: the two λ
carry the published scale; no segmentation setting is published.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from model.methods.base import Method, Param, positive_int, register


def rkd_nodes(feat: torch.Tensor, grid: int = 8) -> torch.Tensor:
    """N x C x h x w -> N x M x C: the average-pooled ``grid`` x ``grid`` map's positions (M = min(grid, h) ·
    min(grid, w), row by row), in float32."""
    h, w = feat.shape[-2:]
    pooled = F.adaptive_avg_pool2d(feat.float(), (min(grid, h), min(grid, w)))
    return pooled.flatten(2).transpose(1, 2)


def relations(nodes: torch.Tensor, eps: float = 1e-12) -> tuple[torch.Tensor, torch.Tensor]:
    """The distance-wise and angle-wise potentials of each image's nodes.

    nodes: N x M x C. Returns ψ_D: N x M x M, ||x_j - x_i|| divided by the image's mean over the pairs i != j
    (0 where every node coincides), and ψ_A: N x M x M x M, entry [n, i, j, k] the cosine of the angle at x_i
    between x_j and x_k (0 when x_j or x_k coincides with x_i).
    """
    n, m, _ = nodes.shape
    diff = nodes[:, None, :, :] - nodes[:, :, None, :]  # [n, i, j] = x_j - x_i: exact zeros for equal nodes
    dist = diff.norm(dim=-1)
    mean = dist.sum(dim=(1, 2)) / max(m * (m - 1), 1)
    unit = F.normalize(diff, dim=-1, eps=eps)  # a zero difference stays 0, as the authors' F.normalize
    return dist / mean.clamp(min=eps)[:, None, None], unit @ unit.transpose(-1, -2)


def rkd_loss(student: torch.Tensor, teacher: torch.Tensor, distance_weight: float = 25.0,
             angle_weight: float = 50.0, grid: int = 8) -> torch.Tensor:
    """``distance_weight`` · mean over N·M² of SmoothL1(ψ_D^s - ψ_D^t) + ``angle_weight`` · mean over N·M³ of
    SmoothL1(ψ_A^s - ψ_A^t) (:func:`relations` of :func:`rkd_nodes`; Huber δ = 1).

    student: N x C_s x h x w; teacher: N x C_t x h x w (detached here; the channel counts may differ). The value
    does not depend on the batch size, and not on a rotation, translation or positive scaling of either
    network's node features (one factor per image). Returns a scalar.
    """
    if student.shape[0] != teacher.shape[0] or student.shape[2:] != teacher.shape[2:]:
        raise ValueError(f"rkd: student {tuple(student.shape)} and teacher {tuple(teacher.shape)} differ in "
                         "batch or spatial size")
    with torch.no_grad():
        dist_t, angle_t = relations(rkd_nodes(teacher.detach(), grid))
    dist_s, angle_s = relations(rkd_nodes(student, grid))
    return (distance_weight * F.smooth_l1_loss(dist_s, dist_t)
            + angle_weight * F.smooth_l1_loss(angle_s, angle_t))


def _non_negative_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


@register
class RKD(Method):
    """:func:`rkd_loss` between the student's and the teacher's tensor (no connector needed)."""

    name, paper = "rkd", "Park et al., Relational Knowledge Distillation, CVPR 2019"
    default_tensor, default_weight = "out_feat", 1.0
    params = {"distance_weight": Param(25.0, _non_negative_number, "a non-negative finite number"),
              "angle_weight": Param(50.0, _non_negative_number, "a non-negative finite number"),
              "grid": Param(8, lambda v: positive_int(v) and v >= 2, "an integer >= 2")}

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """student: N x C_s x h x w; teacher: N x C_t x h x w; target: unused."""
        return rkd_loss(student, teacher, float(self.distance_weight), float(self.angle_weight), self.grid)
