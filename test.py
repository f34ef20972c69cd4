"""Evaluate a trained PSPNet: mIoU, mAcc, allAcc and per-class scores with semseg's test protocol.

    python test.py --config config/synthetic/pspnet18_kd.yaml                       # output.dir/model/final.pth
    python test.py --config config/voc2012/pspnet50_teacher.yaml test.checkpoint=runs/t/model/final.pth
    python test.py --config config/voc2012/dml_pspnet50_pspnet18.yaml           # output.dir/peer0/model/final.pth
    python test.py --config ... test.scales=[0.5,0.75,1.0,1.25,1.5,1.75] test.flip=true   # multi-scale + flip
    torchrun --nproc_per_node=8 test.py --config ...                                 # images sharded over GPUs

Writes to ``test.out_dir``: ``gray/<id>.png`` (class indices), ``color/<id>.png`` (VOC palette) and
``metrics.json``, and prints a per-class table. Without ``test.out_dir`` the output goes to the evaluated
checkpoint's run, ``eval/<ss|ms>[_flip]`` beside its ``model/`` folder: ``output.dir/eval/...`` for the
default checkpoint, the other run's for ``test.checkpoint=OTHER/model/final.pth`` (beside the file itself when
it is not in a ``model/`` folder), so another run's scores never land in this config's run directory. Only the
student's checkpoint is needed: no teacher, no ImageNet weights.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Optional

import torch

from data.dataset import read_list
from data.palette import load_names
from engine.cli import run_command
from engine.evaluate import evaluate, protocol, protocol_name
from engine.flops import count_params, gflops
from model.build import arch_of, model_from_checkpoint
from util.config import REPO_ROOT, Config, check_testing
from util.distributed import DistInfo, barrier
from util.errors import SegKDError


def resolve_paths(cfg: Config) -> tuple[str, str]:
    """(checkpoint, output folder): test.checkpoint (default output.dir/model/final.pth; for a mutual run, peer 0's,
    output.dir/peer0/model/final.pth) and test.out_dir (default ``eval/<protocol>`` in the checkpoint's run
    directory, :func:`checkpoint_run_dir`; the mutual run's own for its peer 0)."""
    ckpt = cfg.test.checkpoint
    if ckpt is None:  # check_testing made sure one of the two is set
        peer = ("peer0",) if cfg.mutual.peers else ()
        ckpt = os.path.join(cfg.output.dir, *peer, "model", "final.pth")
    if not os.path.isfile(ckpt):
        raise SegKDError(f"{ckpt}: checkpoint not found (set test.checkpoint or output.dir)")
    out_dir = cfg.test.out_dir
    if out_dir is None:
        run_dir = cfg.output.dir if cfg.test.checkpoint is None else checkpoint_run_dir(ckpt)
        out_dir = os.path.join(run_dir, "eval", protocol_name(cfg))
    return ckpt, out_dir


def checkpoint_run_dir(ckpt: str) -> str:
    """The run a checkpoint belongs to: ``RUN`` for ``RUN/model/x.pth``, else the checkpoint's own folder. Its scores
    go there, never into this config's ``output.dir`` (scripts/make_table.py would take them for that run's)."""
    folder = os.path.dirname(os.path.abspath(ckpt))
    return os.path.dirname(folder) if os.path.basename(folder) == "model" else folder


def class_names(cfg: Config) -> list[str]:
    """``data.names`` (one name a line, ``data.classes`` lines), or ``class_<i>`` when it is null. A missing file
    or a wrong number of names is an error naming the file: a table with shifted class names is worse than none."""
    if cfg.data.names is None:
        return [f"class_{i}" for i in range(cfg.data.classes)]
    path = cfg.data.names if os.path.isabs(cfg.data.names) else os.path.join(REPO_ROOT, cfg.data.names)
    names = load_names(path)
    if len(names) != cfg.data.classes:
        raise SegKDError(f"{path}: {len(names)} class names for data.classes={cfg.data.classes} "
                         "(set data.names to a matching file, or null for numbered classes)")
    return names


def format_table(result: dict, names: list[str]) -> str:
    rows = [f"{'class':<16} {'IoU':>8} {'Acc':>8}"]
    for name, iou, acc in zip(names, result["iou"], result["acc"]):
        rows.append(f"{name:<16} {iou * 100:8.2f} {acc * 100:8.2f}")
    rows.append(f"{'mean':<16} {result['mIoU'] * 100:8.2f} {result['mAcc'] * 100:8.2f}   allAcc "
                f"{result['allAcc'] * 100:.2f}")
    return "\n".join(rows)


def run(cfg: Config, info: DistInfo) -> dict:
    check_testing(cfg)
    ckpt_path, out_dir = resolve_paths(cfg)
    metrics_path = os.path.join(out_dir, "metrics.json")
    if os.path.exists(metrics_path):
        raise SegKDError(f"{metrics_path}: already exists; remove it or set test.out_dir (nothing was overwritten)")
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


def main(argv: Optional[list[str]] = None) -> int:
    return run_command(evaluate_checkpoint, argv, "Evaluate a PSPNet checkpoint.")


def evaluate_checkpoint(cfg: Config, info: DistInfo) -> int:
    with torch.inference_mode():
        run(cfg, info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
