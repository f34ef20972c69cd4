"""FitNets: a trained connector regresses the student's feature onto the teacher's, and MSE pulls them together.

Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015. The paper's regressor ``r(v; W_r)`` maps the
thin student's "guided" layer to the teacher's "hint" layer and the hint loss is
``1/2 ||u_h - r(v; W_r)||^2``; here, as in CIRKD's segmentation benchmark (``losses/fitnet.py``), the
regressor is a 1x1 convolution without bias, trained jointly with the student (not in a separate stage),
and the squared error is a mean over all N x C_t x h x w elements instead of a sum. The connector adds a
BatchNorm2d after the convolution (CIRKD's has none), so the regressed feature starts at the scale of a
normalised feature whatever the student's scale.

Default weight 10: CIRKD's ``scripts/train_kd/train_fitnet.sh`` (``--lambda-fitnet 10.``, DeepLabV3-R101
teacher, DeepLabV3-R18 student on Cityscapes, on the feature after ASPP, which is our ``out_feat``), on top
of the pixel-wise KD term (``--lambda-kd 1.0``).

Labels are not used: every position of the map counts and ``target`` is ignored.
"""

from __future__ import annotations

import torch
from torch import nn

from model.methods.base import Method, register


def make_connector(student_channels: int, teacher_channels: int) -> nn.Sequential:
    """1x1 conv (no bias) from C_s to C_t channels, then BatchNorm2d(C_t): N x C_s x h x w -> N x C_t x h x w."""
    return nn.Sequential(nn.Conv2d(student_channels, teacher_channels, kernel_size=1, bias=False),
                         nn.BatchNorm2d(teacher_channels))


def fitnet_loss(student: torch.Tensor, teacher: torch.Tensor, connector: nn.Module) -> torch.Tensor:
    """Mean squared error between ``connector(student)`` and ``teacher`` over all N x C_t x h x w elements
    (a mean over channels averaged over the positions), in float32: the distiller runs it, connector included,
    with autocast off (model/distiller.py:float32_term).

    student: N x C_s x h x w; teacher: N x C_t x h x w; connector: maps C_s to C_t channels at the same
    size. The value does not depend on the batch size or on tiling the same map in space.
    """
    if student.shape[0] != teacher.shape[0] or student.shape[2:] != teacher.shape[2:]:
        raise ValueError(f"fitnet: student {tuple(student.shape)} and teacher {tuple(teacher.shape)} differ in "
                         "batch or spatial size")
    hint = connector(student)
    if hint.shape != teacher.shape:
        raise ValueError(f"fitnet: connector output {tuple(hint.shape)} != teacher {tuple(teacher.shape)}")
    return (hint.float() - teacher.float()).pow(2).mean()


@register
class FitNet(Method):
    """FitNets' hint loss with a 1x1 conv + BN connector (``self.connector``, trained with the student)."""

    name, paper = "fitnet", "Romero et al., FitNets: Hints for Thin Deep Nets, ICLR 2015"
    default_tensor, default_weight = "out_feat", 10.0

    def __init__(self, student_channels: int, teacher_channels: int, classes: int, ignore_index: int = 255,
                 **params):
        super().__init__(student_channels, teacher_channels, classes, ignore_index, **params)
        # also when C_s == C_t: FitNets always regresses the student's feature through a trained layer
        self.connector = make_connector(student_channels, teacher_channels)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """student: N x C_s x h x w; teacher: N x C_t x h x w (detached here); target: unused."""
        return fitnet_loss(student, teacher.detach(), self.connector)
