"""CIRKD's mini-batch pixel-to-pixel term (Yang et al., "Cross-Image Relational Knowledge Distillation for
Semantic Segmentation", CVPR 2022).

For every ordered pair of images (i, j) of the batch, each pixel of image i gets a distribution over the
pixels of image j: the softmax, with temperature ``tau``, of its cosine similarities to them. The student
matches the teacher's distributions (KL). Only this mini-batch variant is built: not the memory bank of
pixel and region embeddings from past batches (CIRKD's ``losses/cirkd_memory.py``), nor the region term.
Label-free: every position counts and the labels are unused.

Per process or global batch (``global_batch``, default false): "the batch" is this process's share of it by
default, so with P processes each relates its N/P images among themselves and the logged term is the mean of the
processes' terms. It changes with the process count for the same global batch (issue 41 measured 0.1292, 0.1244,
0.1144 and 0.0945 for 8 images over 1, 2, 4 and 8 processes), and at the VOC config (16 images on 8 GPUs) each GPU
relates 2 images, 4 ordered pairs, where one process would relate 256. Upstream CIRKD computes it per GPU too (its
gather lines are commented out), so the default is the faithful one. ``global_batch: true`` gathers every
process's features first (:func:`~util.distributed.all_gather_with_grad`, the gradient of the local part kept):
the value of one process on the whole batch, on every rank, at that process's memory (below: N is then the global
batch, so ``pool`` 2 is all but needed at 60×60).

Defaults: ``tau`` 0.1 is CIRKD's ``--contrast-temperature``; weight 1.0 is ``train_cirkd.py``'s default
``--lambda-minibatch-pixel`` (its PSPNet-R18 Cityscapes script keeps it). ``pool`` > 1 average-pools the
features first (``pool`` × ``pool`` windows, ceil mode, as CIRKD). CIRKD's ``losses/cirkd_mini_batch.py``
pools 4×4 by itself whenever the features are at least 256×256 since its 2025 revision; its 2022 versions did
not pool (a 2×2 pool commented out, then a 2×2 switch that ``train_cirkd.py`` leaves off). Here pooling is only
what ``pool`` asks, default 1 (none): PSPNet's 60×60 features are below CIRKD's threshold anyway.

Memory: each network's similarities form one (N·hw)² matrix of float32 (all pairs at once); forward and
backward peak at about 3.3 such matrices (measured on CPU, N=4, 36×36), two of them kept for the backward
(the student's log-probabilities, the teacher's probabilities). With 60×60 features (hw = 3600) one matrix
is 0.83 GB for N=4 per GPU (about 2.7 GB at the peak) and 3.3 GB for N=8 (about 11 GB); ``pool`` 2 divides
it by 16. CIRKD's loop over the N² pairs also keeps two matrices' worth for its backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from model.methods.base import Method, Param, positive_int, register
from util.distributed import all_gather_with_grad


def pair_log_softmax(features: torch.Tensor, tau: float) -> torch.Tensor:
    """log softmax over the pixels b of image j of cos(f_{i,a}, f_{j,b}) / tau, for all images i, j and pixels a.

    features: N×C×h×w. Returns N×hw×N×hw, entry [i, a, j, b]; each (i, a, j) row sums to 1 in probability.
    """
    n, c = features.shape[:2]
    x = F.normalize(features, dim=1).flatten(2).transpose(1, 2).reshape(-1, c)  # (N·hw)×C, rows i·hw + a
    similarity = (x / tau) @ x.T  # (N·hw)×(N·hw)
    return F.log_softmax(similarity.view(n, x.shape[0] // n, n, -1), dim=3)  # the softmax of each (i, j) block


def cirkd_pixel_loss(student: torch.Tensor, teacher: torch.Tensor, tau: float = 0.1, pool: int = 1) -> torch.Tensor:
    """KL(teacher row || student row) of :func:`pair_log_softmax`, summed over the row's hw entries, averaged
    over the N·hw rows of each pair and the N² ordered pairs (i, j), i = j included (CIRKD's ``batchmean``
    per pair, divided by N²).

    student: N×C_s×h×w, teacher: N×C_t×h×w (detached here), average-pooled ``pool`` × ``pool`` (ceil mode)
    when ``pool`` > 1. Returns a scalar.
    """
    if student.shape[0] != teacher.shape[0] or student.shape[-2:] != teacher.shape[-2:]:
        raise ValueError(f"student features {tuple(student.shape)} and teacher features {tuple(teacher.shape)} "
                         "differ in batch or spatial size")
    student, teacher = student.float(), teacher.detach().float()
    if pool > 1:
        student = F.avg_pool2d(student, pool, pool, ceil_mode=True)
        teacher = F.avg_pool2d(teacher, pool, pool, ceil_mode=True)
    with torch.no_grad():
        log_p_t = pair_log_softmax(teacher, tau)
        p_t = log_p_t.exp()
        teacher_term = (p_t * log_p_t).sum(dim=3)  # N×hw×N
        del log_p_t  # one (N·hw)² matrix less while the student's is built
    kl = teacher_term - (p_t * pair_log_softmax(student, tau)).sum(dim=3)
    return kl.mean()


@register
class CIRKD(Method):
    """:func:`cirkd_pixel_loss` between the student's and the teacher's features; the target is unused."""

    name, paper = "cirkd", "Yang et al., CVPR 2022"
    default_tensor, default_weight = "out_feat", 1.0
    params = {"tau": Param(0.1, lambda v: v > 0, "positive"),
              "pool": Param(1, positive_int, "an integer >= 1"),
              "global_batch": Param(False, lambda v: isinstance(v, bool), "true or false")}

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.global_batch:  # every process's images, in rank order (module docstring)
            student, teacher = all_gather_with_grad(student), all_gather_with_grad(teacher.detach())
        return cirkd_pixel_loss(student, teacher, self.tau, self.pool)
