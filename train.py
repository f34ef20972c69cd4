"""Train a PSPNet: a supervised teacher, a supervised student, or a student distilled from a teacher.

    python train.py --config config/synthetic/pspnet50_teacher.yaml
    python train.py --config config/synthetic/pspnet18_kd.yaml teacher.checkpoint=runs/t/model/final.pth
    torchrun --nproc_per_node=8 train.py --config config/voc2012/pspnet18_kd_aux_kl.yaml
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 train.py --config ...
    python train.py --config ... train.resume=auto        # continue from output.dir/model/last.pth

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

from data.loader import seed_everything
from engine.setup import build_data, build_distiller, build_optimizer
from model.build import checkpoint_meta
from util.checkpoint import load_checkpoint
from util.config import Config, parse_cli
from util.distributed import DistInfo, barrier, broadcast_flag, cleanup, init_distributed
from util.errors import SegKDError
from util.rundir import RunLog, check_run_dir
from util.trainer import Trainer, validate_config


def resume_path(cfg: Config) -> Optional[str]:
    if cfg.train.resume is None:
        return None
    if cfg.train.resume == "auto":
        path = os.path.join(cfg.output.dir, "model", "last.pth")
        return path if os.path.exists(path) else None
    return cfg.train.resume


def agreed_resume(cfg: Config, info: DistInfo) -> tuple[Optional[str], Optional[dict]]:
    """(checkpoint path, its state) to resume from, or (None, None): rank 0 decides, every rank loads.

    Each rank resolving ``train.resume=auto`` on its own would let nodes with a node-local ``output.dir``
    disagree about the iteration and hang; a rank that cannot read rank 0's checkpoint stops every rank."""
    path = resume_path(cfg) if info.is_main else None
    if info.distributed:
        box = [path]
        torch.distributed.broadcast_object_list(box, src=0)
        path = box[0]
    if path is None:
        return None, None
    state, problem = None, None
    try:
        state = load_checkpoint(path)
    except SegKDError as e:
        problem = str(e)
    if not info.distributed:
        if problem:
            raise SegKDError(problem)
        return path, state
    if broadcast_flag(problem is not None, info.device):
        shared = "output.dir (and train.resume) must be on a file system that every node shares"
        if problem is None:
            raise SegKDError(f"another rank cannot read {path}, which rank 0 resumes from; {shared}")
        if info.is_main:
            raise SegKDError(problem)
        reason = problem[len(path) + 2:] if problem.startswith(f"{path}: ") else problem
        raise SegKDError(f"{path}: rank 0 resumes from it but this rank cannot read it ({reason}); {shared}")
    return path, state


def run(cfg: Config, info: DistInfo) -> int:
    validate_config(cfg, info)
    check_run_dir(cfg)
    loader, sampler = build_data(cfg, info)
    seed_everything(cfg.train.seed)  # identical initial weights on every rank and every run
    distiller = build_distiller(cfg, info)
    seed_everything(cfg.train.seed + info.rank)  # dropout differs across ranks, reproducibly
    optimizer = build_optimizer(distiller.student, cfg)
    mode = "distill" if distiller.teacher is not None else "supervised"
    resume, state = agreed_resume(cfg, info)
    log = RunLog(cfg.output.dir, cfg) if info.is_main else None
    barrier()
    meta = checkpoint_meta(cfg.model, cfg, mode)
    trainer = Trainer(cfg, info, distiller, optimizer, loader, sampler, log, meta)
    if state is not None:
        trainer.restore(state, resume)
    try:
        return trainer.fit()
    finally:
        if log is not None:
            log.close()


def main(argv: Optional[list[str]] = None) -> int:
    info = None
    try:
        cfg, _ = parse_cli(sys.argv[1:] if argv is None else argv, "Train a PSPNet (supervised or distilled).")
        info = init_distributed(cfg.train.device)
        torch.backends.cudnn.benchmark = info.device.type == "cuda"  # fixed crop size: autotune once
        return run(cfg, info)
    except SegKDError as e:
        rank = f"[rank {info.rank}] " if info is not None and info.distributed else ""
        print(f"error: {rank}{e}", file=sys.stderr, flush=True)
        return 2
    finally:
        cleanup()


if __name__ == "__main__":
    start = time.time()
    code = main()
    if code == 0 and int(os.environ.get("RANK", "0")) == 0:
        print(f"done in {math.ceil(time.time() - start)} s", flush=True)
    sys.exit(code)
