"""The training criterion for all three modes: supervised (no teacher) or distilled (frozen teacher).

    total = ce_weight   * CE(out_s, y)          + aux_weight  * CE(aux_s, y)
          + kd_weight   * KL_T(out_s || out_t)  + feat_weight * FEAT(aux_s, aux_t)

FEAT compares the student's aux logits with the *teacher's aux logits* (same shape by construction),
with ``kl`` (the same temperature-scaled KL) or ``smoothl1``; ``none`` drops the term.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from model.losses import cross_entropy, kd_kl_loss, smooth_l1_logits_loss
from model.teacher_cache import TeacherCache


def freeze(module: nn.Module) -> nn.Module:
    """No grads and eval mode (BN running stats and dropout frozen)."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()


class Distiller(nn.Module):
    """Owns the student (possibly DDP-wrapped) and an optional frozen teacher.

    ``forward(images N×3×H×W, target N×H×W) -> (total loss, {term: detached value})``. The teacher stays in
    eval mode across ``.train()`` calls and runs under inference mode; it is never part of the student's
    checkpoint (save ``distiller.student``, not the distiller).
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: Optional[nn.Module] = None,
        *,
        ce_weight: float = 1.0,
        aux_weight: float = 0.4,
        kd_weight: float = 1.0,
        temperature: float = 1.0,
        feat_loss: str = "none",
        feat_weight: float = 0.4,
        smoothl1_beta: float = 1.0,
        ignore_index: int = 255,
        full_resolution: bool = False,
        teacher_cache: Optional[TeacherCache] = None,
    ):
        super().__init__()
        if feat_loss not in ("none", "kl", "smoothl1"):
            raise ValueError(f"distill.feat_loss must be none, kl or smoothl1, got {feat_loss!r}")
        self.student = student
        self.teacher = freeze(teacher) if teacher is not None else None
        self.weights = {"ce": ce_weight, "aux": aux_weight, "kd": kd_weight, "feat": feat_weight}
        self.temperature = temperature
        self.feat_loss = feat_loss
        self.smoothl1_beta = smoothl1_beta
        self.ignore_index = ignore_index
        self.full_resolution = full_resolution
        self.teacher_cache = teacher_cache

    @classmethod
    def from_config(cls, student: nn.Module, teacher: Optional[nn.Module], cfg,
                    teacher_cache: Optional[TeacherCache] = None) -> Distiller:
        d = cfg.distill
        return cls(
            student, teacher,
            ce_weight=cfg.train.ce_weight, aux_weight=cfg.train.aux_weight,
            kd_weight=d.kd_weight, temperature=d.temperature, feat_loss=d.feat_loss,
            feat_weight=d.feat_weight, smoothl1_beta=d.smoothl1_beta,
            ignore_index=cfg.data.ignore_label, full_resolution=d.full_resolution, teacher_cache=teacher_cache,
        )

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # a frozen teacher never updates BN statistics
        return self

    @torch.inference_mode()
    def _teacher_logits(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.teacher(images)

    def teacher_logits(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Teacher {'out','aux'} logits as ordinary tensors (inference tensors cannot enter autograd), from
        the teacher cache when it holds this exact batch."""
        cache = self.teacher_cache
        key = cache.key(images) if cache is not None else None  # hashing the batch once
        cached = cache.get(key, images.device) if cache is not None else None
        if cached is not None:
            return cached
        logits = {k: v.clone() for k, v in self._teacher_logits(images).items()}
        if cache is not None:
            cache.put(key, logits)
        return logits

    def forward(self, images: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        s = self.student(images)
        ign = self.ignore_index
        terms = {"ce": cross_entropy(s["out"], target, ign), "aux": cross_entropy(s["aux"], target, ign)}
        if self.teacher is not None:
            t = self.teacher_logits(images)
            full = self.full_resolution
            terms["kd"] = kd_kl_loss(s["out"], t["out"], target, self.temperature, ign, full)
            if self.feat_loss == "kl":
                terms["feat"] = kd_kl_loss(s["aux"], t["aux"], target, self.temperature, ign, full)
            elif self.feat_loss == "smoothl1":
                terms["feat"] = smooth_l1_logits_loss(s["aux"], t["aux"], target, ign, self.smoothl1_beta, full)
        total = sum(self.weights[name] * value for name, value in terms.items())
        return total, {name: value.detach() for name, value in terms.items()}
