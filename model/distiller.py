"""The training criterion for all three modes: supervised (no teacher) or distilled (frozen teacher).

    total = ce_weight   * CE(out_s, y)        + aux_weight  * CE(aux_s, y)
          + kd_weight   * KD(out_s, out_t)    + feat_weight * FEAT(aux_s, aux_t)

KD (``distill.kd_loss``) compares the main logits: ``kl`` (temperature-scaled KL), ``dist``, ``kl_std`` or
``sym_kl`` (SSLD's symmetric KL). FEAT (``distill.feat_loss``) compares the student's aux logits with the *teacher's
aux logits* (same shape by construction): ``kl``, ``smoothl1``, ``cwd``, ``dist``, ``kl_std`` or ``sym_kl``; ``none``
drops the term. Each is a
function of model/losses.py; :data:`KD_LOSSES` and :data:`FEAT_LOSSES` list them.

Every distillation term (KD, FEAT and each method of ``distill.terms``; deep mutual learning's too) runs through
:func:`float32_term`: autocast off, its tensors in float32. Under AMP the networks run in bfloat16/float16, the
terms' similarities, sums and softmaxes do not (docs/GPU.md); a method added later inherits this.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import nn

from model.losses import (
    cross_entropy,
    cwd_loss,
    dist_loss,
    kd_kl_loss,
    kl_std_loss,
    smooth_l1_logits_loss,
    sym_kl_loss,
)
from model.methods import LOGITS, METHODS, TENSORS, Method, check_params, method_class, pick, tensor_names
from model.teacher_cache import TeacherCache
from util.config import UNLABELED_LABEL
from util.distributed import unwrap
from util.errors import SegKDError

KD_LOSSES = ("kl", "dist", "kl_std", "sym_kl")
FEAT_LOSSES = ("none", "kl", "smoothl1", "cwd", "dist", "kl_std", "sym_kl")


@dataclass
class Term:
    """One registered method applied to the tensor ``tensor`` of both networks, with its loss weight."""

    name: str
    method: Method
    tensor: str | tuple[str, ...]  # a tuple for a method comparing several tensors (AFD)
    weight: float


def float32_term(fn: Callable[..., torch.Tensor], *tensors: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    """``fn(*tensors)`` with autocast off and every floating-point tensor in float32 (labels pass unchanged): the
    one place the distillation terms get their precision. Under bfloat16/float16 autocast, matmul and its kin run in
    the low precision even on float32 inputs, which made IFVD's per-class sums overflow float16 (NaN) and SKD's and
    CIRKD's similarities rounding noise late in training. Outside autocast on float32 tensors it changes nothing.
    A list of tensors (a method comparing several, AFD) has each of its tensors converted."""
    def as_float32(t):
        if isinstance(t, (list, tuple)):
            return [as_float32(x) for x in t]
        return t.float() if t.is_floating_point() else t

    first = tensors[0][0] if isinstance(tensors[0], (list, tuple)) else tensors[0]
    # the meta device (FLOP counts, engine.flops) has no autocast to turn off, and refuses the context
    off = nullcontext() if first.device.type == "meta" else torch.autocast(first.device.type, enabled=False)
    with off:
        return fn(*(as_float32(t) for t in tensors))


def freeze(module: nn.Module) -> nn.Module:
    """No grads and eval mode (BN running stats and dropout frozen)."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()


class Distiller(nn.Module):
    """Owns the student (possibly DDP-wrapped) and an optional frozen teacher.

    ``forward(images N×3×H×W, target N×H×W) -> (total loss, {term: detached value})``. With ``unlabeled_label``
    (SSLD's unlabelled images, ``data.unlabeled_list``), pixels of that label count for the distillation terms
    (KD, FEAT, the label-free methods: anything but ignore) and not for CE and aux CE, which so see the labelled
    images alone. The teacher stays in
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
        kd_loss: str = "kl",
        feat_loss: str = "none",
        feat_weight: float = 0.4,
        smoothl1_beta: float = 1.0,
        cwd_tau: float = 1.0,
        dist_beta: float = 1.0,
        dist_gamma: float = 1.0,
        dist_global_batch: bool = False,
        ignore_index: int = 255,
        full_resolution: bool = False,
        teacher_cache: Optional[TeacherCache] = None,
        terms: Sequence[Term] = (),
        unlabeled_label: Optional[int] = None,
    ):
        super().__init__()
        if kd_loss not in KD_LOSSES:
            raise ValueError(f"distill.kd_loss must be one of {', '.join(KD_LOSSES)}, got {kd_loss!r}")
        if feat_loss not in FEAT_LOSSES:
            raise ValueError(f"distill.feat_loss must be one of {', '.join(FEAT_LOSSES)}, got {feat_loss!r}")
        self.student = student
        self.teacher = freeze(teacher) if teacher is not None else None
        self.weights = {"ce": ce_weight, "aux": aux_weight, "kd": kd_weight, "feat": feat_weight}
        self.temperature = temperature
        self.kd_loss, self.feat_loss = kd_loss, feat_loss
        self.params = {"smoothl1_beta": smoothl1_beta, "cwd_tau": cwd_tau, "dist_beta": dist_beta,
                       "dist_gamma": dist_gamma, "dist_global_batch": dist_global_batch}
        self.ignore_index = ignore_index
        # SSLD: pixels of unlabelled images carry this label (data.unlabeled_list); CE and aux CE ignore them
        self.unlabeled_label = unlabeled_label
        self.full_resolution = full_resolution
        # the student's convention (model.align_corners) places its logits on the label's pixels in CE and KD
        self.align_corners = _align_corners(student)
        self.teacher_cache = teacher_cache
        if teacher is None and terms:
            raise ValueError("distillation terms need a teacher")
        no_aux = [role for role, net in (("student", student), ("teacher", teacher)) if net is not None
                  and not has_aux_head(net)]
        if feat_loss != "none" and no_aux:
            raise SegKDError(f"distill.feat_loss={feat_loss} compares aux logits, but the "
                             f"{' and the '.join(no_aux)} has no aux head (CIRKD's MobileNetV3, "
                             "model.backbone=*_cirkd); set distill.feat_loss=none")
        if aux_weight and not has_aux_head(student):
            raise SegKDError(f"train.aux_weight={aux_weight}: the network has no aux head (CIRKD's MobileNetV3, "
                             "model.backbone=*_cirkd, has none); set train.aux_weight=0")
        # the methods' trainable modules (connectors) live here: trained, checkpointed, never in the student
        self.methods = nn.ModuleDict({t.name: t.method for t in terms})
        self.term_tensors = {t.name: t.tensor for t in terms}
        self.weights.update({t.name: t.weight for t in terms})
        self.features = tuple(sorted({n for t in terms for n in tensor_names(t.tensor)} - set(LOGITS)))

    @classmethod
    def from_config(cls, student: nn.Module, teacher: Optional[nn.Module], cfg,
                    teacher_cache: Optional[TeacherCache] = None) -> Distiller:
        d = cfg.distill
        terms = build_terms(cfg, student, teacher) if teacher is not None else []
        return cls(
            student, teacher,
            ce_weight=cfg.train.ce_weight, aux_weight=cfg.train.aux_weight,
            kd_weight=d.kd_weight, temperature=d.temperature, kd_loss=d.kd_loss, feat_loss=d.feat_loss,
            feat_weight=d.feat_weight, smoothl1_beta=d.smoothl1_beta, cwd_tau=d.cwd_tau, dist_beta=d.dist_beta,
            dist_gamma=d.dist_gamma, dist_global_batch=d.dist_global_batch,
            ignore_index=cfg.data.ignore_label, full_resolution=d.full_resolution, teacher_cache=teacher_cache,
            terms=terms, unlabeled_label=UNLABELED_LABEL if cfg.data.unlabeled_list is not None else None,
        )

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # a frozen teacher never updates BN statistics
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The methods' own parameters (connectors): optimised with the student, never part of it."""
        return list(self.methods.parameters())

    @torch.inference_mode()
    def _teacher_outputs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.teacher(images, features=self.features) if self.features else self.teacher(images)

    def teacher_logits(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Teacher {'out','aux'} logits (and the tensors the terms name) as ordinary tensors (inference
        tensors cannot enter autograd), from the teacher cache when it holds this exact batch."""
        cache = self.teacher_cache
        key = cache.key(images, self.features) if cache is not None else None  # hashing the batch once
        cached = cache.get(key, images.device) if cache is not None else None
        if cached is not None:
            return cached
        logits = {k: v.clone() for k, v in self._teacher_outputs(images).items()}
        if cache is not None:
            cache.put(key, logits)
        return logits

    def forward(self, images: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        s = self.student(images, features=self.features) if self.features else self.student(images)
        ign = self.ignore_index
        ac = self.align_corners
        labeled = target  # what CE sees: an unlabelled image's pixels are ignored, the distillation terms count them
        if self.unlabeled_label is not None:
            labeled = target.masked_fill(target == self.unlabeled_label, ign)
        terms = {"ce": cross_entropy(s["out"], labeled, ign, ac)}
        if "aux" in s:  # a network without an aux head (CIRKD's MobileNetV3) returns none
            terms["aux"] = cross_entropy(s["aux"], labeled, ign, ac)
        if self.teacher is not None:
            t = self.teacher_logits(images)
            terms["kd"] = self.compare(self.kd_loss, s["out"], t["out"], target)
            if self.feat_loss != "none":
                terms["feat"] = self.compare(self.feat_loss, s["aux"], t["aux"], target)
            for name, method in self.methods.items():
                tensor = self.term_tensors[name]
                terms[name] = float32_term(method, pick(s, tensor), pick(t, tensor), target)
        total = sum(self.weights[name] * value for name, value in terms.items())
        return total, {name: value.detach() for name, value in terms.items()}

    def compare(self, loss: str, student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The distillation loss named ``loss`` between two N×K×h×w logit maps, with this distiller's
        parameters (model/losses.py documents each), in float32 (:func:`float32_term`)."""
        return float32_term(lambda s, t, y: compare_logits(loss, s, t, y, self.temperature, self.params,
                                                           self.ignore_index, self.full_resolution, self.align_corners),
                            student, teacher, target)

    @property
    def evaluated(self) -> nn.Module:
        """The network validation scores and final.pth holds: the student."""
        return self.student


def compare_logits(loss: str, student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor, temperature: float,
                   params: dict[str, float], ignore_index: int, full_resolution: bool, align_corners: bool
                   ) -> torch.Tensor:
    """The loss of :data:`KD_LOSSES` / :data:`FEAT_LOSSES` named ``loss`` between two N×K×h×w logit maps;
    ``params``: ``smoothl1_beta``, ``cwd_tau``, ``dist_beta``, ``dist_gamma`` (and ``dist_global_batch``, False if
    absent)."""
    ign, full, p, ac = ignore_index, full_resolution, params, align_corners
    if loss == "kl":
        return kd_kl_loss(student, teacher, target, temperature, ign, full, ac)
    if loss == "kl_std":
        return kl_std_loss(student, teacher, target, temperature, ign, full, ac)
    if loss == "sym_kl":
        return sym_kl_loss(student, teacher, target, temperature, ign, full, ac)
    if loss == "smoothl1":
        return smooth_l1_logits_loss(student, teacher, target, ign, p["smoothl1_beta"], full, ac)
    if loss == "cwd":
        return cwd_loss(student, teacher, target, p["cwd_tau"], ign, full, ac)
    return dist_loss(student, teacher, target, p["dist_beta"], p["dist_gamma"], ign, full, ac,
                     bool(p.get("dist_global_batch", False)))


def build_terms(cfg, student: nn.Module, teacher: nn.Module) -> list[Term]:
    """The ``distill.terms`` of a config as :class:`Term` s, every key checked before any training: an unknown
    method or tensor name, a bad parameter, or tensors the method cannot compare is one line naming the key."""
    d, classes = cfg.distill, cfg.data.classes
    names = list(d.terms)
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise SegKDError(f"distill.terms names {', '.join(twice)} more than once")
    s_channels, t_channels = _channels(student, classes), _channels(teacher, classes)
    terms = []
    for name in names:
        cls = method_class(name)
        if cls.uses_labels and cfg.data.unlabeled_list is not None:
            raise SegKDError(f"distill.terms: {name} uses the labels' classes, which the images of "
                             f"data.unlabeled_list={cfg.data.unlabeled_list} do not have; drop one of them "
                             f"(label-free: {', '.join(n for n in sorted(METHODS) if not METHODS[n].uses_labels)})")
        section: dict[str, Any] = getattr(d, name).to_dict()
        weight, tensor = section.pop("weight"), section.pop("tensor")
        tensor = tensor if isinstance(tensor, str) else tuple(tensor)  # a list for several_tensors methods (afd)
        check_params(name, section)
        if not tensor_names(tensor):
            raise SegKDError(f"distill.{name}.tensor=[]: name at least one tensor")
        for one in tensor_names(tensor):
            if one not in TENSORS:
                raise SegKDError(f"distill.{name}.tensor={one!r}: must be one of {', '.join(TENSORS)}")
            if cls.logits_only and one not in LOGITS:
                raise SegKDError(f"distill.{name}.tensor={one!r}: {name} compares class logits, use out or aux")
            if one not in s_channels or one not in t_channels:
                raise SegKDError(f"distill.{name}.tensor={one!r}: the student or the teacher has no such tensor")
        cs, ct = pick(s_channels, tensor), pick(t_channels, tensor)
        if cls.same_channels and cs != ct:
            raise SegKDError(f"distill.{name}.tensor={tensor!r}: the student's has {cs} channels, the teacher's "
                             f"{ct}, and {name} has no connector (fitnet has)")
        method = cls(cs, ct, classes, cfg.data.ignore_label, align_corners=_align_corners(student), **section)
        terms.append(Term(name, method, tensor, float(weight)))
    return terms


def _align_corners(student: nn.Module) -> bool:
    """The student's ``model.align_corners`` (True for a network without the attribute)."""
    return getattr(unwrap(student), "align_corners", True)


def _channels(model: nn.Module, classes: int) -> dict[str, int]:
    """Channels of every tensor a network can return by name (its logits have ``classes``; "aux" only with an aux
    head)."""
    logits = [name for name in LOGITS if name != "aux" or has_aux_head(model)]
    return {**getattr(unwrap(model), "feature_channels", {}), **{name: classes for name in logits}}


def has_aux_head(model: nn.Module) -> bool:
    """Whether a network computes aux logits: every segkd segmentor but CIRKD's MobileNetV3 (``aux_head`` None)."""
    return getattr(unwrap(model), "aux_head", True) is not None


__all__ = ["Distiller", "FEAT_LOSSES", "compare_logits", "KD_LOSSES", "METHODS", "Term", "build_terms", "float32_term",
           "freeze"]
