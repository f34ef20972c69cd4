"""IFVD: intra-class feature variation distillation (Wang et al., "Intra-class Feature Variation Distillation
for Semantic Segmentation", ECCV 2020).

Per image, each class present has a prototype, the mean feature of its pixels; each pixel's cosine similarity
to its own class's prototype maps how far it strays from its class. The student matches the teacher's map
(squared difference, averaged over the labelled pixels). Channel counts may differ: each network is compared
with its own prototypes.

Default weight 20: CIRKD's ``--lambda-ifv 20.`` (``scripts/train_kd/train_ifvd.sh``, earlier
``train_scripts/train_kd/train_ifvd.sh``), for a DeepLabV3-R101 teacher and a DeepLabV3-R18 student on
Cityscapes, beside KD (1.0) and an adversarial term; it was not tuned for PSPNet-R18 here.

Where this differs from CIRKD's ``losses/ifvd.py``: the labels are taken at the feature centres
(:func:`~model.losses.sample_target`) rather than nearest-resized (floor index); ignored pixels are left out of
every prototype and out of the mean, where CIRKD gives them their own feature as "prototype" (similarity 1 in
both networks, difference 0) and averages over all N·h·w positions, which shrinks the loss by the fraction of
ignored pixels; prototypes divide by the pixel count, not count + 1e-6. As in CIRKD the student's prototypes
are not detached, so its gradient also flows through them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from model.losses import _valid_mean, sample_target
from model.methods.base import Method, register


def prototype_similarity(features: torch.Tensor, labels: torch.Tensor, classes: int,
                         ignore_index: int = 255) -> torch.Tensor:
    """Cosine similarity (over channels) of each pixel's feature to the mean feature of its class's pixels in
    the same image.

    features: N×C×h×w; labels: N×h×w int64 at the same resolution. Returns N×h×w; ignored pixels are in no
    prototype and get 0.
    """
    n, c, h, w = features.shape
    # N×P×K by comparison, not F.one_hot, whose range checks read the labels' min and max on the host (a sync per
    # call on a GPU); an ignored pixel's row is all zero
    flat_labels = labels.flatten(1)[..., None]  # N×P×1
    onehot = (flat_labels == torch.arange(classes, device=labels.device)) & (flat_labels != ignore_index)
    onehot = onehot.to(features.dtype)
    flat = features.flatten(2)  # N×C×P
    prototypes = flat @ onehot / onehot.sum(1).clamp(min=1)[:, None, :]  # N×C×K (0 for absent classes)
    own = prototypes @ onehot.transpose(1, 2)  # N×C×P: each pixel's class prototype
    return F.cosine_similarity(flat, own, dim=1).view(n, h, w)


def ifvd_loss(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor, classes: int,
              ignore_index: int = 255, align_corners: bool = True) -> torch.Tensor:
    """Mean over the valid pixels of (sim_s - sim_t)², sim = :func:`prototype_similarity` of each network.

    student: N×C_s×h×w, teacher: N×C_t×h×w (detached here); target: N×H×W labels in [0, classes) or
    ignore_index, sampled at the feature centres (placed as ``align_corners`` zooms). Every pixel ignored: 0
    with a graph.
    """
    if student.shape[0] != teacher.shape[0] or student.shape[-2:] != teacher.shape[-2:]:
        raise ValueError(f"student features {tuple(student.shape)} and teacher features {tuple(teacher.shape)} "
                         "differ in batch or spatial size")
    labels = sample_target(target, tuple(student.shape[-2:]), align_corners)
    sim_s = prototype_similarity(student.float(), labels, classes, ignore_index)
    sim_t = prototype_similarity(teacher.detach().float(), labels, classes, ignore_index)
    return _valid_mean((sim_s - sim_t) ** 2, labels, ignore_index)


@register
class IFVD(Method):
    """:func:`ifvd_loss` between the student's and the teacher's features."""

    name, paper = "ifvd", "Wang et al., ECCV 2020"
    default_tensor, default_weight = "out_feat", 20.0
    uses_labels = True  # the class prototypes are means over each labelled class

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return ifvd_loss(student, teacher, target, self.classes, self.ignore_index, self.align_corners)
