"""Structured KD, pair-wise term: the student matches the teacher's node-to-node cosine similarities.

Liu et al., "Structured Knowledge Distillation for Semantic Segmentation", CVPR 2019, pair-wise
distillation: the feature map is cut into nodes (max pooling over ``pool`` x ``pool`` patches), the affinity
of two nodes is the cosine similarity of their features, and the loss is the squared difference of the
student's and teacher's affinities averaged over all (i, j) node pairs. The pixel-wise term is plain KD and
the holistic (adversarial) term needs a discriminator; neither is here.

This follows CIRKD's segmentation benchmark (``losses/skd.py``): 2x2 pooling with stride 2 and
``ceil_mode=True`` (so h' = ceil(h / 2)), each node L2-normalised over channels by F.normalize, the gradient
flowing through the normalisation. The authors' code (``structure_knowledge_distillation``,
``utils/utils.py:sim_dis_compute`` and ``--pool-scale 0.5``) differs: its pooling kernel is half the map, so
the graph has 2x2 = 4 nodes, and it detaches the norms (the gradient does not flow through them).

Default weight 10: CIRKD's ``scripts/train_kd/train_skd.sh`` (``--lambda-skd 10``, DeepLabV3-R101 teacher,
DeepLabV3-R18 student on Cityscapes, on the feature after ASPP, which is our ``out_feat``), there alongside
pixel-wise KD (``--lambda-kd 1.``) and the adversarial term (``--lambda-adv 0.001``, ``--lambda-d 0.1``).
The authors' own run used ``--lambda-pa 0.5`` on their 4-node graph.

Cost: the N x M x M similarity matrices, M = h' w' nodes; 900 x 900 per image for a 60x60 map at
``pool`` 2, 16x that at ``pool`` 1.

Labels are not used: every position of the map counts and ``target`` is ignored.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from model.methods.base import Method, Param, positive_int, register


def node_similarity(feat: torch.Tensor, pool: int = 2, eps: float = 1e-12) -> torch.Tensor:
    """N x C x h x w -> N x M x M, M = ceil(h/pool) ceil(w/pool): the cosine similarity of every pair of
    nodes, a node being the channel-wise max over a pool x pool patch (stride pool, the last patch of a row
    or column partial when pool does not divide the size). An all-zero node has similarity 0 to every node.
    On float32 (the input is converted); under autocast the matmul would still run in bfloat16/float16, which is
    why the distiller calls every term with autocast off (model/distiller.py:float32_term)."""
    feat = feat.float()
    if pool > 1:
        feat = F.max_pool2d(feat, kernel_size=pool, stride=pool, ceil_mode=True)
    nodes = F.normalize(feat.flatten(2), p=2.0, dim=1, eps=eps)  # N x C x M
    return nodes.transpose(1, 2) @ nodes


def skd_pairwise_loss(student: torch.Tensor, teacher: torch.Tensor, pool: int = 2) -> torch.Tensor:
    """Mean over the N x M x M entries of (A_s - A_t)^2, A = :func:`node_similarity` (float32 outside autocast).

    student: N x C_s x h x w; teacher: N x C_t x h x w (the channel counts may differ). The value does not
    depend on the batch size, nor on scaling a node's feature by a positive factor; when ``pool`` divides
    h and w, nor on tiling the same map in space (the node graph is tiled, the mean over pairs is the same).
    """
    if student.shape[0] != teacher.shape[0] or student.shape[2:] != teacher.shape[2:]:
        raise ValueError(f"skd: student {tuple(student.shape)} and teacher {tuple(teacher.shape)} differ in "
                         "batch or spatial size")
    return (node_similarity(student, pool) - node_similarity(teacher, pool)).pow(2).mean()


@register
class SKD(Method):
    """SKD's pair-wise distillation between the student's and the teacher's tensor (no connector needed)."""

    name, paper = "skd", "Liu et al., Structured Knowledge Distillation for Semantic Segmentation, CVPR 2019"
    default_tensor, default_weight = "out_feat", 10.0
    params = {"pool": Param(2, positive_int, "an integer >= 1")}


    def forward(self, student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """student: N x C_s x h x w; teacher: N x C_t x h x w (detached here); target: unused."""
        return skd_pairwise_loss(student, teacher.detach(), self.pool)
