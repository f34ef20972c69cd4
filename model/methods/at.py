"""Attention transfer: the student matches the teacher's spatial attention map, where each network looks.

Zagoruyko and Komodakis, "Paying More Attention to Attention: Improving the Performance of Convolutional
Neural Networks via Attention Transfer", ICLR 2017. The activation-based attention map of a feature is
F(A) = sum_c |A_c|^p, flattened over the positions and L2-normalised; here the channels are averaged instead
of summed (the normalisation cancels the factor). The paper's loss (eq. 2) is the L2 norm of the difference
of the normalised maps, ``beta/2 ||a_s - a_t||_2``; the authors' code (szagoruyko/attention-transfer,
``at_loss``) and CIRKD's segmentation benchmark (``losses/at.py``), which this follows, use the squared
difference averaged over the N x h*w entries instead. Both fix p = 2 and square the signed feature; for
p = 2 that is |f|^p, for other p the paper's absolute value is kept.

That mean makes the value scale as 1/(h w): the normalised map has unit norm per image, so its squared
entries average 1/(h w). Hence the large weight, and a weight tuned at one feature size is 4x stronger at
half the size in each direction.

Default weight 10000: CIRKD's ``scripts/train_kd/train_at.sh`` (``--lambda-at 10000.``, DeepLabV3-R101
teacher, DeepLabV3-R18 student on Cityscapes 512x1024 crops, i.e. a 64x128 map after ASPP, which is our
``out_feat``), on top of the pixel-wise KD term (``--lambda-kd 1.0``). Our 473 crops give 60x60 maps, so
the same weight is about 2.3x stronger here.

Labels are not used: every position of the map counts and ``target`` is ignored.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from model.methods.base import Method, Param, register


def attention_map(feat: torch.Tensor, p: float = 2.0, eps: float = 1e-12) -> torch.Tensor:
    """N x C x h x w -> N x (h*w): mean over channels of |feat|^p per position, L2-normalised per image
    (an all-zero map stays zero: F.normalize divides by max(norm, eps)). On float32 (the distiller turns
    autocast off around it: model/distiller.py:float32_term)."""
    mag = feat.float().abs()
    # |x|^p with gradient 0 at x = 0 for every p > 0: pow's gradient p x^(p-1) is infinite at 0 when p < 1
    # and times abs's 0 gives NaN, which ReLU'd features (many exact zeros) would hit at once
    nonzero = mag > 0
    powered = torch.where(nonzero, torch.where(nonzero, mag, torch.ones_like(mag)).pow(p), torch.zeros_like(mag))
    return F.normalize(powered.mean(dim=1).flatten(1), p=2.0, dim=1, eps=eps)


def at_loss(student: torch.Tensor, teacher: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Mean over the N x h*w entries of (a_s - a_t)^2, a = :func:`attention_map` (float32).

    student: N x C_s x h x w; teacher: N x C_t x h x w (the channel counts may differ). The value does not
    depend on the batch size, nor on scaling a network's feature map by a positive factor; it scales as
    1/(h w) (see the module docstring).
    """
    if student.shape[0] != teacher.shape[0] or student.shape[2:] != teacher.shape[2:]:
        raise ValueError(f"at: student {tuple(student.shape)} and teacher {tuple(teacher.shape)} differ in "
                         "batch or spatial size")
    return (attention_map(student, p) - attention_map(teacher, p)).pow(2).mean()


def _positive_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


@register
class AT(Method):
    """Attention transfer between the student's and the teacher's tensor (no connector needed)."""

    name, paper = "at", "Zagoruyko and Komodakis, Paying More Attention to Attention, ICLR 2017"
    default_tensor, default_weight = "out_feat", 10000.0
    params = {"p": Param(2.0, _positive_number, "a positive finite number")}


    def forward(self, student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """student: N x C_s x h x w; teacher: N x C_t x h x w (detached here); target: unused."""
        return at_loss(student, teacher.detach(), float(self.p))
