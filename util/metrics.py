"""Segmentation metrics from one confusion matrix accumulated over the whole dataset.

The matrix is int64 and built with ``bincount`` (``histc`` works in float and saturates past 2^24 pixels
per bin, which VOC exceeds). Accumulating over the dataset, not averaging per image, is the protocol of
hszhao/semseg and torchvision's references.
"""

from __future__ import annotations

import torch

from util.distributed import all_reduce_sum


class ConfusionMatrix:
    """``mat[t, p]`` counts pixels of true class ``t`` predicted as ``p``; ignore pixels are skipped."""

    def __init__(self, num_classes: int, ignore_index: int = 255):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """pred, target: integer tensors of the same shape (any), class indices."""
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} != label shape {tuple(target.shape)}")
        pred = pred.reshape(-1).to(torch.int64)
        target = target.reshape(-1).to(torch.int64)
        keep = target != self.ignore_index
        pred, target = pred[keep], target[keep]
        if target.numel() and (target.min() < 0 or target.max() >= self.num_classes):
            raise ValueError(f"label values outside 0..{self.num_classes - 1}: {target.unique().tolist()}")
        n = self.num_classes
        counts = torch.bincount(target * n + pred, minlength=n * n)
        self.mat += counts.reshape(n, n).to(self.mat.device)

    def reduce(self) -> None:
        """Sum the matrices of all processes (no-op outside torch.distributed)."""
        self.mat = all_reduce_sum(self.mat)

    def compute(self) -> dict[str, object]:
        """Per-class IoU and accuracy, their means (mIoU, mAcc) and pixel accuracy (allAcc).

        Means are over the classes present in the labels: a class absent from the labels has no defined
        accuracy, and counting its IoU as 0 (as semseg's ``+1e-10`` does) would punish small val sets.
        On VOC val every class is present, so both conventions agree. Absent classes report NaN."""
        m = self.mat.to(torch.float64)
        tp = m.diag()
        gt = m.sum(1)
        union = gt + m.sum(0) - tp
        iou = tp / union
        acc = tp / gt
        present = gt > 0
        return {
            "mIoU": float(iou[present].mean()) if present.any() else float("nan"),
            "mAcc": float(acc[present].mean()) if present.any() else float("nan"),
            "allAcc": float(tp.sum() / gt.sum()) if gt.sum() > 0 else float("nan"),
            "iou": iou.tolist(),
            "acc": acc.tolist(),
        }
