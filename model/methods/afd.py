"""AFD: a small attention network decides which student stage each teacher stage teaches, and how strongly.

Ji et al., "Show, Attend and Distill: Knowledge Distillation via Attention-based Feature Matching", AAAI 2021.
Every teacher layer t is matched against every student layer s; a trained meta-network weighs the pairs. Per
image, the teacher layer's globally pooled feature gives a query q_t (Linear + BN), each student layer's a key
(Linear + BN + ReLU, then a bilinear map, Linear + BN, to one key k_st per teacher layer), and

    α_ts = softmax over s of (<k_st, q_t> + <p_t, p_s>) / sqrt(d),  d = ``qk_dim``, p the trained positional
    embeddings of the layers (Xavier-normal),
    loss = Σ_t mean over the images of Σ_s α_ts · mean over positions of (v_s→t − v_t)²,

with v_t the teacher layer's spatial attention map, mean_c f² over its positions L2-normalised per image, and
v_s→t the student layer's map average-pooled (``adaptive_avg_pool2d``) to the teacher layer's size, then
normalised. Code followed: the authors' ``distill/AFD.py`` (clovaai/attention-feature-distillation:
``nn_bn_relu``, ``LinearTransformTeacher``/``LinearTransformStudent``, ``Sample``, ``cal_diff``), which
PaddleClas ``ppcls/loss/afdloss.py`` reproduces.

The reduced form for segmentation: the layers are the backbone's stages, ``layer1`` .. ``layer4`` of both
networks by default (``distill.afd.tensor``: any list of feature names, the same for both; the authors match
every residual block, 16 teacher blocks against 8 student blocks for ResNet34 -> ResNet18 in PaddleClas's
config). Queries and keys come from the globally pooled feature of each image, so the attention is per image,
as in the paper. With the dilated backbones (output stride 8) ``layer1`` sits at 1/4 and the others at 1/8: a
student map at 1/8 is average-pooled up to a teacher ``layer1``'s size (adaptive pooling repeats cells), as the
authors' ``Sample`` resizes to any teacher shape. Labels are not used: every position counts, ignore pixels
included.

Trainable: the query, key and bilinear layers and the two embeddings (``self.attention``), trained with the
student in the methods' optimizer group, their gradients averaged across processes, saved in ``last.pth``
(``distill_modules``, BN running statistics included), never in ``final.pth``. Their BatchNorm1d, as the
authors', normalises over the images of a process: a step needs at least 2 images per process.

Defaults: ``qk_dim`` 128 (the authors' and PaddleClas's); weight 50: PaddleClas's ResNet34 -> ResNet18 ImageNet
config (``resnet34_distill_resnet18_afd.yaml``: ``AFDLoss`` weight 50 beside KD 0.9 at T 4); the authors' CIFAR-100
command uses 200. The squared differences of unit-norm maps average about 1/(h w) of a position count (as AT's),
so a 60x60 map's term is smaller than ImageNet's 56x56..7x7 stages'. Memory: the teacher's four stages are kept for
the step (about 66 MB per 473-pixel image in float32 for an R50 teacher).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from model.methods.base import Method, Param, positive_int, register


class LinearBN(nn.Sequential):
    """Linear then BatchNorm1d, with a ReLU when ``relu``: N x C_in -> N x C_out (the authors' ``nn_bn_relu``)."""

    def __init__(self, c_in: int, c_out: int, relu: bool):
        super().__init__(nn.Linear(c_in, c_out), nn.BatchNorm1d(c_out), *([nn.ReLU()] if relu else []))


class AttentionNetwork(nn.Module):
    """The meta-network: per image, the attention of each teacher layer over the student layers."""

    def __init__(self, student_channels: Sequence[int], teacher_channels: Sequence[int], qk_dim: int):
        super().__init__()
        self.qk_dim, self.teachers = qk_dim, len(teacher_channels)
        self.query = nn.ModuleList(LinearBN(c, qk_dim, relu=False) for c in teacher_channels)
        self.key = nn.ModuleList(LinearBN(c, qk_dim, relu=True) for c in student_channels)
        self.bilinear = LinearBN(qk_dim, qk_dim * len(teacher_channels), relu=False)
        self.p_t = nn.Parameter(torch.empty(len(teacher_channels), qk_dim))
        self.p_s = nn.Parameter(torch.empty(len(student_channels), qk_dim))
        nn.init.xavier_normal_(self.p_t)
        nn.init.xavier_normal_(self.p_s)

    def forward(self, student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]) -> torch.Tensor:
        """S tensors N x C_s x h x w and T tensors N x C_t x h x w -> N x T x S attention weights (rows sum to 1)."""
        n, s = student[0].shape[0], len(student)
        if self.training and n < 2:
            raise ValueError("afd: the attention network's BatchNorm1d needs at least 2 images per process")
        query = torch.stack([layer(f.mean(dim=(2, 3))) for layer, f in zip(self.query, teacher)], dim=1)  # N x T x d
        key = torch.stack([layer(f.mean(dim=(2, 3))) for layer, f in zip(self.key, student)], dim=1)  # N x S x d
        key = self.bilinear(key.reshape(n * s, -1)).view(n, s, self.teachers, self.qk_dim)  # N x S x T x d
        logits = torch.einsum("nstd,ntd->nts", key, query) + self.p_t @ self.p_s.T
        return torch.softmax(logits / math.sqrt(self.qk_dim), dim=2)


def spatial_attention(feat: torch.Tensor, size: tuple[int, int] | None = None, eps: float = 1e-12) -> torch.Tensor:
    """N x C x h x w -> N x (h' w'): mean_c feat², average-pooled to ``size`` (h', w') when given, L2-normalised
    over the positions per image (an all-zero map stays 0)."""
    energy = feat.float().pow(2).mean(dim=1, keepdim=True)
    if size is not None and tuple(energy.shape[-2:]) != tuple(size):
        energy = F.adaptive_avg_pool2d(energy, size)
    return F.normalize(energy.flatten(1), dim=1, eps=eps)


def afd_loss(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], attention: torch.Tensor
             ) -> torch.Tensor:
    """Σ_t mean over the images of Σ_s attention[:, t, s] · mean over positions of (v_s→t − v_t)²
    (:func:`spatial_attention`; v_s→t pooled to teacher layer t's size).

    student: S tensors N x C_s x h_s x w_s; teacher: T tensors N x C_t x h_t x w_t (detached here);
    attention: N x T x S. Returns a scalar.
    """
    total = attention.new_zeros(())
    for t, f_t in enumerate(teacher):
        size = tuple(f_t.shape[-2:])
        v_t = spatial_attention(f_t.detach())  # N x P
        v_s = torch.stack([spatial_attention(f_s, size) for f_s in student], dim=1)  # N x S x P
        diff = (v_s - v_t[:, None]).pow(2).mean(dim=2)  # N x S
        total = total + (attention[:, t] * diff).sum(dim=1).mean()
    return total


@register
class AFD(Method):
    """Attention-based feature distillation over several tensors (``self.attention`` trains with the student)."""

    name = "afd"
    paper = ("Ji et al., Show, Attend and Distill: Knowledge Distillation via Attention-based Feature Matching, "
             "AAAI 2021")
    default_tensor, default_weight = ["layer1", "layer2", "layer3", "layer4"], 50.0  # a list, as in the config
    several_tensors = True
    params = {"qk_dim": Param(128, positive_int, "an integer >= 1")}

    def __init__(self, student_channels: Sequence[int], teacher_channels: Sequence[int], classes: int,
                 ignore_index: int = 255, **params):
        super().__init__(student_channels, teacher_channels, classes, ignore_index, **params)
        self.attention = AttentionNetwork(student_channels, teacher_channels, self.qk_dim)

    def forward(self, student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor],
                target: torch.Tensor) -> torch.Tensor:
        """student: S tensors N x C_s x h x w; teacher: T tensors N x C_t x h x w (no gradient reaches them);
        target: unused."""
        if len(student) != len(self.attention.key) or len(teacher) != len(self.attention.query):
            raise ValueError(f"afd: built for {len(self.attention.key)} student and {len(self.attention.query)} "
                             f"teacher tensors, got {len(student)} and {len(teacher)}")
        student = [f.float() for f in student]
        teacher = [f.detach().float() for f in teacher]
        return afd_loss(student, teacher, self.attention(student, teacher))
