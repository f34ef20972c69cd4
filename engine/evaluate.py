"""Evaluate a model over a list file: each process takes every world_size-th image, confusion matrices are
summed across processes. Used by ``test.py`` and by periodic validation in ``train.py``."""

from __future__ import annotations

import os
from typing import Optional

import cv2
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from data.dataset import check_label, read_image, read_label, read_list
from data.palette import colorize
from engine.inference import predict
from engine.preemption import release_workers, worker_error_line
from util.config import Config
from util.distributed import DistInfo
from util.errors import SegKDError
from util.metrics import ConfusionMatrix


class EvalImages(Dataset):
    """This process's share of the list: (image, label, image path) read and checked, in list order, so
    that ``test.workers`` loader processes decode ahead of the network. Sizes differ: no batching."""

    def __init__(self, samples: list[tuple[str, str]], classes: int, ignore_label: int):
        self.samples, self.classes, self.ignore_label = samples, classes, ignore_label

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        image_path, label_path = self.samples[index]
        image, label = read_image(image_path), read_label(label_path)
        check_label(label, self.classes, self.ignore_label, label_path)
        if image.shape[:2] != label.shape:
            raise SegKDError(f"{image_path}: image size {image.shape[:2]} != label size {label.shape} ({label_path})")
        return image, label, image_path


def protocol(cfg: Config) -> dict:
    """The evaluation settings, recorded in metrics.json next to the numbers."""
    t = cfg.test
    return {"scales": list(t.scales), "flip": t.flip, "base_size": t.base_size, "crop_size": t.crop_size,
            "stride_rate": t.stride_rate, "mode": t.mode, "resize": t.resize}


def protocol_name(cfg: Config) -> str:
    """``ss`` (single scale) or ``ms`` (several), with ``_flip``: the default eval folder name; ``whole_`` before
    it for ``test.mode=whole`` and ``_short`` after it for ``test.resize=short`` (mmseg's protocol:
    ``whole_ss_short``)."""
    name = "ss" if len(cfg.test.scales) == 1 and cfg.test.scales[0] == 1.0 else "ms"
    name = ("whole_" if cfg.test.mode == "whole" else "") + name + ("_flip" if cfg.test.flip else "")
    return name + ("_short" if cfg.test.resize == "short" else "")


def evaluate(
    model: nn.Module, cfg: Config, info: DistInfo, list_file: str, save_dir: Optional[str] = None,
    progress: bool = True,
) -> ConfusionMatrix:
    """Predict every image of ``list_file`` (relative to data.root) and return the reduced confusion matrix.

    With ``save_dir``, each process writes its images' predictions to ``save_dir/gray/<id>.png`` (class
    index) and ``save_dir/color/<id>.png`` (VOC palette).
    """
    samples = read_list(cfg.data.root, list_file)
    t = cfg.test
    if save_dir is not None:
        for sub in ("gray", "color"):
            os.makedirs(os.path.join(save_dir, sub), exist_ok=True)
    cm = ConfusionMatrix(cfg.data.classes, cfg.data.ignore_label)
    model.eval()
    mine = samples[info.rank::info.world_size]  # every image once over the processes, none twice
    loader = DataLoader(EvalImages(mine, cfg.data.classes, cfg.data.ignore_label), batch_size=None,
                        shuffle=False, num_workers=t.workers, collate_fn=_as_numpy)
    batches = iter(loader)
    items = iter(tqdm(batches, total=len(loader), disable=not (progress and info.is_main), desc="eval", leave=False))
    while True:
        try:
            image, label, image_path = next(items)
        except StopIteration:
            break
        except SegKDError as e:  # a worker's error arrives wrapped in its traceback: keep the one line
            release_workers(batches)
            raise SegKDError(worker_error_line(e)) from None
        pred = predict(model, image, cfg.data.classes, t.base_size, t.crop_size, t.scales, t.flip, t.stride_rate,
                       info.device, t.mode, t.resize)
        cm.update(_tensor(pred), _tensor(label))
        if save_dir is not None:
            name = os.path.splitext(os.path.basename(image_path))[0]
            cv2.imwrite(os.path.join(save_dir, "gray", name + ".png"), pred.astype(np.uint8))
            colorize(pred.astype(np.uint8)).save(os.path.join(save_dir, "color", name + ".png"))
    cm.reduce()
    return cm


def _as_numpy(item):
    """Keep a sample as it is (numpy arrays and a path): no conversion to tensors, no batching."""
    return item


def _tensor(a: np.ndarray):
    return torch.from_numpy(np.ascontiguousarray(a).astype(np.int64))
