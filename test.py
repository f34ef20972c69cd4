"""Evaluate a trained PSPNet: mIoU, mAcc, allAcc and per-class scores with semseg's test protocol.

    python test.py --config config/synthetic/pspnet18_kd.yaml                       # output.dir/model/final.pth
    python test.py --config config/voc2012/pspnet50_teacher.yaml test.checkpoint=runs/t/model/final.pth
    python test.py --config config/voc2012/dml_pspnet50_pspnet18.yaml           # output.dir/peer0/model/final.pth
    python test.py --config ... test.scales=[0.5,0.75,1.0,1.25,1.5,1.75] test.flip=true   # multi-scale + flip
    torchrun --nproc_per_node=8 test.py --config ...                                 # images sharded over GPUs

Writes to ``test.out_dir``: ``gray/<id>.png`` (class indices), ``color/<id>.png`` (the ``data.dataset``'s palette,
VOC's without one) and ``metrics.json``, and prints a per-class table. Without ``test.out_dir`` the output goes to
the evaluated checkpoint's run, ``eval/<ss|ms>[_flip]`` beside its ``model/`` folder: ``output.dir/eval/...`` for
the default checkpoint, the other run's for ``test.checkpoint=OTHER/model/final.pth`` (beside the file itself when
it is not in a ``model/`` folder), so another run's scores never land in this config's run directory. Only the
student's checkpoint is needed: no teacher, no ImageNet weights.
"""

from __future__ import annotations

import sys
from typing import Optional

import torch

from engine.cli import run_command
from engine.evaluate import checkpoint_run_dir, class_names, format_table, resolve_paths, score_checkpoint
from util.config import Config
from util.distributed import DistInfo

__all__ = ["checkpoint_run_dir", "class_names", "format_table", "resolve_paths", "run", "main"]


def run(cfg: Config, info: DistInfo) -> dict:
    """Evaluate the configured checkpoint and write its metrics.json (:func:`engine.evaluate.score_checkpoint`)."""
    return score_checkpoint(cfg, info)


def main(argv: Optional[list[str]] = None) -> int:
    return run_command(evaluate_checkpoint, argv, "Evaluate a PSPNet checkpoint.")


def evaluate_checkpoint(cfg: Config, info: DistInfo) -> int:
    with torch.inference_mode():
        run(cfg, info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
