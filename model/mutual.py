"""Deep mutual learning (Zhang et al., CVPR 2018): two or more networks trained together, each taught by the
others' current predictions instead of by a frozen teacher.

    total = Σ_i  ce_weight   · CE(out_i, y) + aux_weight · CE(aux_i, y)
               + weight      · mean_{j≠i} T² · KL(softmax(out_j.detach() / T) ‖ softmax(out_i / T))
               + feat_weight · mean_{j≠i} FEAT(aux_i, aux_j.detach())

The KL is model/losses.py's ``kd_kl_loss`` (averaged over the valid pixels, times T²), the KD of
``distill.kd_loss=kl`` with the other peer as the teacher; FEAT (``mutual.feat_loss``, off by default) is one of the
aux-logit losses of ``distill.feat_loss`` between the peers, which is UDML's idea (PaddleClas). The other peers'
outputs are detached, so peer i's parameters get gradients from peer i's own loss only: one backward of the sum is
one backward per peer, and one optimizer over every peer's parameter groups (per-parameter state, one poly
schedule) steps each peer as its own optimizer would. The peers are updated together from one forward pass (as
PaddleClas's DML and torchdistill do), not one after the other as in the paper's Algorithm 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch
from torch import nn

from model.distiller import FEAT_LOSSES, _align_corners, compare_logits, float32_term
from model.losses import cross_entropy
from util.distributed import unwrap


class MutualLearner(nn.Module):
    """Owns the peers (each possibly its own DDP module), peer 0 first.

    ``forward(images N×3×H×W, target N×H×W) -> (total, {term: detached value})``: ``ce``, ``aux``, ``dml`` (and
    ``feat``) are the means over the peers, ``peer<i>/<term>`` each peer's; ``total`` is the sum of the peers'
    weighted terms. Shares the :class:`model.distiller.Distiller` interface the trainer uses: ``student`` (here
    every peer, for the checkpoints and the optimizer), ``evaluated`` (peer 0), no teacher, no connectors.
    """

    teacher = None
    teacher_cache = None

    def __init__(self, peers: Sequence[nn.Module], *, ce_weight: float = 1.0, aux_weight: float = 0.4,
                 weight: float = 1.0, temperature: float = 1.0, feat_loss: str = "none", feat_weight: float = 0.4,
                 params: Optional[dict[str, float]] = None, ignore_index: int = 255, full_resolution: bool = False):
        super().__init__()
        if len(peers) < 2:
            raise ValueError(f"mutual learning needs at least 2 peers, got {len(peers)}")
        if feat_loss not in FEAT_LOSSES:
            raise ValueError(f"mutual.feat_loss must be one of {', '.join(FEAT_LOSSES)}, got {feat_loss!r}")
        self.peers = nn.ModuleList(peers)
        self.methods = nn.ModuleDict()  # no connectors: last.pth holds the peers and their optimizer state only
        self.weights = {"ce": ce_weight, "aux": aux_weight, "dml": weight, "feat": feat_weight}
        self.temperature, self.feat_loss = temperature, feat_loss
        self.params = {"smoothl1_beta": 1.0, "cwd_tau": 1.0, "dist_beta": 1.0, "dist_gamma": 1.0, **(params or {})}
        self.ignore_index, self.full_resolution = ignore_index, full_resolution
        self.align_corners = [_align_corners(p) for p in peers]  # each peer's own convention

    @classmethod
    def from_config(cls, peers: Sequence[nn.Module], cfg) -> MutualLearner:
        d, m = cfg.distill, cfg.mutual
        keys = ("smoothl1_beta", "cwd_tau", "dist_beta", "dist_gamma", "dist_global_batch")
        params = {k: getattr(d, k) for k in keys}
        return cls(peers, ce_weight=cfg.train.ce_weight, aux_weight=cfg.train.aux_weight, weight=m.weight,
                   temperature=m.temperature, feat_loss=m.feat_loss, feat_weight=m.feat_weight, params=params,
                   ignore_index=cfg.data.ignore_label, full_resolution=d.full_resolution)

    @property
    def student(self) -> nn.ModuleList:
        """Every peer without its wrappers, peer 0 first: what ``last.pth`` holds (keys ``<i>.<name>``), what the
        optimizer trains (each peer's two parameter groups) and what a resume restores."""
        return nn.ModuleList(unwrap(p) for p in self.peers)

    @property
    def evaluated(self) -> nn.Module:
        """Peer 0, the ``model.*`` network: what validation (``train.val_every``) scores."""
        return self.peers[0]

    def trainable_parameters(self) -> list[nn.Parameter]:
        return []  # every parameter belongs to a peer (and its DDP)

    def forward(self, images: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        outs = [peer(images) for peer in self.peers]
        per_peer = [self.peer_terms(i, outs, target) for i in range(len(outs))]
        total = sum(self.weights[name] * value for terms in per_peer for name, value in terms.items())
        logged = {name: torch.stack([terms[name] for terms in per_peer]).mean() for name in per_peer[0]}
        logged.update({f"peer{i}/{name}": value for i, terms in enumerate(per_peer) for name, value in terms.items()})
        return total, {name: value.detach() for name, value in logged.items()}

    def peer_terms(self, i: int, outs: list[dict[str, torch.Tensor]], target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Peer i's CE, aux CE, KL to every other peer's detached main logits (mean over them) and FEAT."""
        s, ign, ac = outs[i], self.ignore_index, self.align_corners[i]
        others = [o for j, o in enumerate(outs) if j != i]
        terms = {"ce": cross_entropy(s["out"], target, ign, ac), "aux": cross_entropy(s["aux"], target, ign, ac)}
        terms["dml"] = self._mean_over(others, "kl", s["out"], "out", target, ac)
        if self.feat_loss != "none":
            terms["feat"] = self._mean_over(others, self.feat_loss, s["aux"], "aux", target, ac)
        return terms

    def _mean_over(self, others: list[dict[str, torch.Tensor]], loss: str, mine: torch.Tensor, name: str,
                   target: torch.Tensor, ac: bool) -> torch.Tensor:
        def term(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return compare_logits(loss, s, t, y, self.temperature, self.params, self.ignore_index,
                                  self.full_resolution, ac)

        values = [float32_term(term, mine, o[name].detach(), target) for o in others]  # autocast off, float32
        return sum(values) / len(values)


__all__ = ["MutualLearner"]
