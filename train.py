"""Train a PSPNet: a supervised teacher, a supervised student, a student distilled from a teacher, or peers
trained together by mutual learning (``mutual.peers``).

    python train.py --config config/synthetic/pspnet50_teacher.yaml
    python train.py --config config/synthetic/pspnet18_kd.yaml teacher.checkpoint=runs/t/model/final.pth
    torchrun --nproc_per_node=8 train.py --config config/voc2012/pspnet18_kd_aux_kl.yaml
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 train.py --config ...
    python -m tools.launch --standalone --nproc-per-node 8 --max-restarts 3 train.py --config ... train.resume=auto
    python train.py --config config/synthetic_cpu/dml_pspnet18_pspnet18.yaml   # output.dir/peer<i>/model/final.pth
    python train.py --config ... train.resume=auto        # continue from output.dir/model/last.pth
    python train.py --config ... test.after_training=true # then test.py's evaluation, in the same process

A config with ``teacher.checkpoint`` distils; one without trains supervised. ``train.batch_size`` is the
global batch, split across processes. SIGTERM/SIGINT finish the current step, write model/last.pth and
exit; ``train.resume=auto`` continues. See README.md for the run directory's contents.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Optional

import torch

from data.datasets import check_data_keys
from data.loader import seed_everything
from engine.cli import run_command
from engine.evaluate import check_scores_path, checkpoint_path, class_names, score_checkpoint, scores_dir
from engine.rundir import RunLog, check_run_dir
from engine.setup import build_data, build_distiller, build_optimizer
from engine.state import agreed_config, agreed_resume, rank0_check
from engine.trainer import Trainer
from model.build import run_meta, teacher_file
from util.config import Config, check_training
from util.distributed import DistInfo, barrier
from util.machine import machine


def run(cfg: Config, info: DistInfo) -> int:
    agreed_config(cfg, info)  # every process the same config, before anything is checked, built or written
    torch.backends.cudnn.benchmark = info.device.type == "cuda"  # fixed crop size: autotune once
    sync_bn = info.distributed and info.device.type == "cuda" and cfg.train.sync_bn
    check_training(cfg, info.world_size, sync_bn, info.device.type)
    check_data_keys(cfg.data)
    if cfg.teacher.checkpoint:
        teacher_file(cfg)  # before the student is built (ImageNet weights) and the loader's workers start
    check_run_dir(cfg)
    if cfg.test.after_training:  # what test.py would refuse stops the run now, not after the training
        check_scores_path(scores_dir(cfg, checkpoint_path(cfg)))
        class_names(cfg)
    code = train(cfg, info)
    if code == 0 and cfg.test.after_training:
        torch.backends.cudnn.benchmark = False  # test.py's setting: the same kernels, the same scores
        with torch.inference_mode():
            score_checkpoint(cfg, info)  # reads model/final.pth back, as test.py: the same metrics.json
    return code


def train(cfg: Config, info: DistInfo) -> int:
    """Build the run and train it; the exit status (0: model/final.pth written)."""
    log = RunLog(cfg.output.dir, cfg) if info.is_main else None
    try:
        rank0_check(log.claim if log else None)  # a folder whose processes still run is refused by every rank
        loader, sampler = build_data(cfg, info)
        seed_everything(cfg.train.seed)  # identical initial weights on every rank and every run
        distiller = build_distiller(cfg, info)
        seed_everything(cfg.train.seed + info.rank)  # dropout differs across ranks, reproducibly
        optimizer = build_optimizer(distiller.student, cfg, distiller.trainable_parameters())
        resume, state = agreed_resume(cfg, info)
        barrier()
        # the machine goes into every checkpoint: CPUs differ in their arithmetic, a paired table names each seed's
        # CPU
        meta = {**run_meta(cfg, distiller.teacher is not None), "machine": machine(info.device)}
        trainer = Trainer(cfg, info, distiller, optimizer, loader, sampler, log, meta)
        if state is not None:
            trainer.restore(state, resume)
        return trainer.fit()
    finally:
        if log is not None:
            log.close()


def main(argv: Optional[list[str]] = None) -> int:
    return run_command(run, argv, "Train a PSPNet (supervised or distilled).")


if __name__ == "__main__":
    start = time.time()
    code = main()
    if code == 0 and int(os.environ.get("RANK", "0")) == 0:
        print(f"done in {math.ceil(time.time() - start)} s", flush=True)
    sys.exit(code)
