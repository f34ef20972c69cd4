"""Evaluate a model over a list file: each process takes every world_size-th image, confusion matrices are
summed across processes. Used by ``test.py`` and by periodic validation in ``train.py``; :func:`score_checkpoint`
is what ``test.py`` does (and ``train.py`` with ``test.after_training``, in the same process): a checkpoint's
``metrics.json``."""

from __future__ import annotations

import json
import os
from typing import Optional

import cv2
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from data.dataset import check_label, read_image, read_label, read_list
from data.datasets import class_names as dataset_class_names
from data.datasets import palette_of
from data.palette import colorize
from engine.inference import predict_batch
from engine.preemption import release_workers, worker_error_line
from util.config import Config, check_testing
from util.distributed import DistInfo, barrier
from util.errors import SegKDError
from util.metrics import ConfusionMatrix


class EvalImages(Dataset):
    """This process's share of the list: (image, label, image path) read and checked, in list order, so
    that ``test.workers`` loader processes decode ahead of the network. Sizes differ: the loader does not batch
    (``test.batch_size`` groups images' windows in :func:`engine.inference.predict_batch`)."""

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
    """The evaluation settings, recorded in metrics.json next to the numbers; ``batch_size`` only when it is not 1
    (images evaluated together: the same protocol up to float rounding)."""
    t = cfg.test
    settings = {"scales": list(t.scales), "flip": t.flip, "base_size": t.base_size, "crop_size": t.crop_size,
                "stride_rate": t.stride_rate, "mode": t.mode, "resize": t.resize}
    return settings if t.batch_size == 1 else {**settings, "batch_size": t.batch_size}


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
    index) and ``save_dir/color/<id>.png`` (the dataset's palette, VOC's without ``data.dataset``).
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
    group: list = []  # test.batch_size images whose windows go through the network together
    while True:
        try:
            group.append(next(items))
        except StopIteration:
            break
        except SegKDError as e:  # a worker's error arrives wrapped in its traceback: keep the one line
            release_workers(batches)
            raise SegKDError(worker_error_line(e)) from None
        if len(group) == t.batch_size:
            _score(model, group, cfg, info.device, cm, save_dir)
            group = []
    _score(model, group, cfg, info.device, cm, save_dir)
    cm.reduce()
    return cm


def _score(
    model: nn.Module, group: list, cfg: Config, device: torch.device, cm: ConfusionMatrix, save_dir: Optional[str],
) -> None:
    """Predict a group of (image, label, path) samples together, add them to ``cm`` and save their predictions."""
    if not group:
        return
    t = cfg.test
    palette = palette_of(cfg.data) if save_dir is not None else None
    preds = predict_batch(model, [image for image, _, _ in group], cfg.data.classes, t.base_size, t.crop_size,
                          t.scales, t.flip, t.stride_rate, device, t.mode, t.resize, t.batch_size)
    for pred, (_, label, image_path) in zip(preds, group):
        cm.update(_tensor(pred), _tensor(label))
        if save_dir is not None:
            name = os.path.splitext(os.path.basename(image_path))[0]
            cv2.imwrite(os.path.join(save_dir, "gray", name + ".png"), pred.astype(np.uint8))
            colorize(pred.astype(np.uint8), palette).save(os.path.join(save_dir, "color", name + ".png"))


def _as_numpy(item):
    """Keep a sample as it is (numpy arrays and a path): no conversion to tensors, no batching."""
    return item


def _tensor(a: np.ndarray):
    return torch.from_numpy(np.ascontiguousarray(a).astype(np.int64))


# ---------------------------------------------------------------- a checkpoint's metrics.json (test.py)
def checkpoint_path(cfg: Config) -> str:
    """test.checkpoint, by default output.dir/model/final.pth (for a mutual run, peer 0's,
    output.dir/peer0/model/final.pth); not checked to exist."""
    if cfg.test.checkpoint is not None:
        return cfg.test.checkpoint
    peer = ("peer0",) if cfg.mutual.peers else ()
    return os.path.join(cfg.output.dir, *peer, "model", "final.pth")


def scores_dir(cfg: Config, ckpt: str) -> str:
    """test.out_dir, by default ``eval/<protocol>`` in the checkpoint's run directory (:func:`checkpoint_run_dir`;
    the mutual run's own for its peer 0)."""
    if cfg.test.out_dir is not None:
        return cfg.test.out_dir
    run_dir = cfg.output.dir if cfg.test.checkpoint is None else checkpoint_run_dir(ckpt)
    return os.path.join(run_dir, "eval", protocol_name(cfg))


def resolve_paths(cfg: Config) -> tuple[str, str]:
    """(checkpoint, output folder): :func:`checkpoint_path`, which must exist, and :func:`scores_dir`."""
    ckpt = checkpoint_path(cfg)  # check_testing made sure test.checkpoint or output.dir is set
    if not os.path.isfile(ckpt):
        raise SegKDError(f"{ckpt}: checkpoint not found (set test.checkpoint or output.dir)")
    return ckpt, scores_dir(cfg, ckpt)


def checkpoint_run_dir(ckpt: str) -> str:
    """The run a checkpoint belongs to: ``RUN`` for ``RUN/model/x.pth``, else the checkpoint's own folder. Its scores
    go there, never into this config's ``output.dir`` (scripts/make_table.py would take them for that run's)."""
    folder = os.path.dirname(os.path.abspath(ckpt))
    return os.path.dirname(folder) if os.path.basename(folder) == "model" else folder


def check_scores_path(out_dir: str) -> str:
    """``out_dir/metrics.json``, refused when it exists (scores are never overwritten)."""
    metrics_path = os.path.join(out_dir, "metrics.json")
    if os.path.exists(metrics_path):
        raise SegKDError(f"{metrics_path}: already exists; remove it or set test.out_dir (nothing was overwritten)")
    return metrics_path


def class_names(cfg: Config) -> list[str]:
    """``data.names`` (one name a line, ``data.classes`` lines), else the ``data.dataset``'s own, else ``class_<i>``.
    A missing file, a wrong number of names or names contradicting ``data.dataset`` is an error naming the file: a
    table with shifted class names is worse than none (:func:`data.datasets.class_names`)."""
    return dataset_class_names(cfg.data)


def format_table(result: dict, names: list[str]) -> str:
    rows = [f"{'class':<16} {'IoU':>8} {'Acc':>8}"]
    for name, iou, acc in zip(names, result["iou"], result["acc"]):
        rows.append(f"{name:<16} {iou * 100:8.2f} {acc * 100:8.2f}")
    rows.append(f"{'mean':<16} {result['mIoU'] * 100:8.2f} {result['mAcc'] * 100:8.2f}   allAcc "
                f"{result['allAcc'] * 100:.2f}")
    return "\n".join(rows)


def score_checkpoint(cfg: Config, info: DistInfo) -> dict:
    """Evaluate the checkpoint of :func:`resolve_paths` and write its ``metrics.json`` (rank 0; a per-class table on
    stdout); the metrics. Call under ``torch.inference_mode()``."""
    # here, not at the top: the table script's probe imports protocol_name, and torchvision takes a second
    from engine.flops import count_params, gflops
    from model.build import arch_of, model_from_checkpoint

    check_testing(cfg)
    ckpt_path, out_dir = resolve_paths(cfg)
    metrics_path = check_scores_path(out_dir)
    names = class_names(cfg)  # before the evaluation: a wrong names file stops it at once
    model, ckpt = model_from_checkpoint(ckpt_path, cfg.data.classes)
    model = model.to(info.device).eval()
    list_file = cfg.test.list or cfg.data.val_list
    save_dir = out_dir if cfg.test.save_predictions else None
    cm = evaluate(model, cfg, info, list_file, save_dir)
    result = cm.compute()
    metrics = {
        "mIoU": result["mIoU"], "mAcc": result["mAcc"], "allAcc": result["allAcc"],
        "per_class": {n: {"iou": i, "acc": a} for n, i, a in zip(names, result["iou"], result["acc"])},
        # where the scores come from: scripts/make_table.py refuses a row whose checkpoint is not in its run
        # (the relative path still holds when the run directory is moved or copied)
        "checkpoint": os.path.abspath(ckpt_path),
        "checkpoint_relative": os.path.relpath(os.path.abspath(ckpt_path), os.path.abspath(out_dir)),
        "iteration": ckpt.get("iteration"),
        "mode": ckpt.get("mode"), "layers": ckpt["layers"], "classes": ckpt["classes"], **arch_of(ckpt),
        "trained_on": ckpt.get("machine"),  # train.py's util.machine.machine(); None for older checkpoints
        "imported": ckpt.get("imported"),  # tools.import_weights: the published file's format, path, sha256
        "list": list_file, "images": len(read_list(cfg.data.root, list_file)),
        "protocol": protocol(cfg), "params": count_params(model),
        # what evaluation computes per sliding window: the network without its aux head on a test.crop_size crop
        "gflops": gflops(ckpt["layers"], cfg.data.classes, cfg.test.crop_size, ckpt),
        "gflops_crop_size": cfg.test.crop_size,
        "config": ckpt.get("config"),
    }
    if info.is_main:
        os.makedirs(out_dir, exist_ok=True)
        tmp = metrics_path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(metrics, f, indent=2, allow_nan=True)
        os.replace(tmp, metrics_path)
        print(format_table(result, names))
        print(f"mIoU {metrics['mIoU'] * 100:.2f}  mAcc {metrics['mAcc'] * 100:.2f}  allAcc "
              f"{metrics['allAcc'] * 100:.2f}  -> {metrics_path}", flush=True)
    barrier()
    return metrics
