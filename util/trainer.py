"""The training loop: poly-lr SGD, AMP, per-step loss reduction, checkpoints, preemption and NaN stops."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import time
from typing import Any, Optional

import torch
import torch.distributed as dist

from data.loader import rng_state, set_rng_state
from model.distiller import Distiller
from util.checkpoint import save_checkpoint
from util.config import Config
from util.distributed import DistInfo, all_reduce_mean, broadcast_flag, unwrap
from util.errors import SegKDError
from util.rundir import RunLog

# Exit statuses: 0 finished, 2 bad input (SegKDError), 3 stopped by train.stop_after, 128+signal when preempted.
STOPPED = 3


def validate_config(cfg: Config, info: DistInfo) -> None:
    """Checks that need no file access, identical on every rank (so all ranks fail together)."""
    t, d = cfg.train, cfg.data
    if cfg.output.dir is None:
        raise SegKDError("output.dir is not set: give the run directory, e.g. output.dir=runs/my_run")
    if d.root is None:
        raise SegKDError("data.root is not set: give the dataset folder, e.g. data.root=datasets/voc2012")
    if d.classes < 2:
        raise SegKDError(f"data.classes={d.classes}: need at least 2 classes")
    if t.crop_size < 32:
        raise SegKDError(f"train.crop_size={t.crop_size}: must be at least 32 (output stride 8)")
    if t.batch_size % info.world_size:
        raise SegKDError(f"train.batch_size={t.batch_size} is not divisible by the {info.world_size} processes")
    per_rank = t.batch_size // info.world_size
    sync = info.distributed and info.device.type == "cuda" and t.sync_bn
    if per_rank < 2 and not sync:
        raise SegKDError(f"train.batch_size={t.batch_size} gives {per_rank} image per process; BatchNorm needs "
                         "at least 2 (or SyncBatchNorm on several GPUs)")
    if t.epochs < 1 and t.iters is None:
        raise SegKDError(f"train.epochs={t.epochs}: must be at least 1")
    for key in ("iters", "stop_after", "checkpoint_every", "log_every"):
        value = getattr(t, key)
        if value is not None and value < 1:
            raise SegKDError(f"train.{key}={value}: must be at least 1")
    if t.amp and t.amp_dtype == "float16" and info.device.type != "cuda":
        raise SegKDError("train.amp_dtype=float16 needs CUDA; use bfloat16 on the CPU")


class StopRequest:
    """Remembers a SIGTERM/SIGINT so the loop can finish its step and checkpoint before exiting."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}

    def _handle(self, signum, frame) -> None:
        self.signum = signum

    def restore(self) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)


class Trainer:
    def __init__(self, cfg: Config, info: DistInfo, distiller: Distiller, optimizer: torch.optim.Optimizer,
                 loader, sampler, log: Optional[RunLog], meta: dict[str, Any]):
        self.cfg, self.info, self.distiller, self.optimizer = cfg, info, distiller, optimizer
        self.loader, self.sampler, self.log, self.meta = loader, sampler, log, meta
        t = cfg.train
        self.iters_per_epoch = len(sampler) // loader.batch_size
        self.total_iters = t.iters or t.epochs * self.iters_per_epoch
        self.epochs = math.ceil(self.total_iters / self.iters_per_epoch)
        self.iteration = 0
        self.amp_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}[t.amp_dtype]
        use_scaler = t.amp and t.amp_dtype == "float16"
        self.scaler = torch.amp.GradScaler(info.device.type, enabled=use_scaler)
        self.model_dir = os.path.join(cfg.output.dir, "model")

    # ---------------------------------------------------------------- state
    def state(self) -> dict[str, Any]:
        rngs = [rng_state()]
        if self.info.distributed:  # every rank's dropout RNG, so a resume is exact on each of them
            rngs = [None] * self.info.world_size
            dist.all_gather_object(rngs, rng_state())
        return {**self.meta, "model": unwrap(self.distiller.student).state_dict(),
                "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                "scheduler": {"type": "poly", "power": self.cfg.train.power, "total_iters": self.total_iters},
                "epoch": self.iteration // self.iters_per_epoch, "iteration": self.iteration,
                "rng": rngs, "config": self.cfg.to_dict()}

    def save(self, name: str) -> None:
        state = self.state()  # collective: every rank takes part
        if self.info.is_main:
            save_checkpoint(state, os.path.join(self.model_dir, name))

    def restore(self, state: dict[str, Any], path: str) -> None:
        if state["scheduler"]["total_iters"] != self.total_iters:
            raise SegKDError(f"{path}: was trained for {state['scheduler']['total_iters']} iterations, this run "
                             f"has {self.total_iters} (batch size or data changed?)")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.iteration = state["iteration"]
        rngs = state["rng"]
        set_rng_state(rngs[self.info.rank] if len(rngs) == self.info.world_size else rngs[0])
        if self.log:
            self.log.info(f"resumed from {path} at iteration {self.iteration}/{self.total_iters}")

    # ---------------------------------------------------------------- loop
    def set_lr(self) -> float:
        factor = (1 - self.iteration / self.total_iters) ** self.cfg.train.power
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        return self.optimizer.param_groups[0]["lr"]

    def step(self, images: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        dev, t = self.info.device, self.cfg.train
        images = images.to(dev, non_blocking=True)
        target = target.to(dev, non_blocking=True)
        if t.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        lr = self.set_lr()
        amp = torch.autocast(dev.type, dtype=self.amp_dtype) if t.amp else contextlib.nullcontext()
        with amp:
            total, terms = self.distiller(images, target)
        values = all_reduce_mean({"loss": total.detach(), **terms}, self.info.world_size)
        bad = [k for k, v in values.items() if not math.isfinite(v)]
        if bad:  # before the update: the weights and the last checkpoint stay good
            term = next((k for k in bad if k != "loss"), "loss")
            raise SegKDError(f"iteration {self.iteration + 1}: loss term '{term}' is {values[term]}; stopping. "
                             f"The last good checkpoint is {os.path.join(self.model_dir, 'last.pth')} (if written)")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.iteration += 1
        return {**values, "lr": lr}

    def fit(self) -> int:
        t = self.cfg.train
        stop = StopRequest()
        start_epoch = self.iteration // self.iters_per_epoch
        if self.log:
            self.log.info(f"{self.meta['mode']} PSPNet-R{self.meta['layers']}: {self.total_iters} iterations, "
                          f"{self.epochs} epochs of {self.iters_per_epoch}, {self.info.world_size} process(es) "
                          f"on {self.info.device.type}")
        tic, done_since = time.time(), 0
        try:
            for epoch in range(start_epoch, self.epochs):
                skip = (self.iteration - epoch * self.iters_per_epoch) * self.loader.batch_size
                self.sampler.set_epoch(epoch, skip)
                self.distiller.train()
                for images, target in self.loader:
                    values = self.step(images, target)
                    done_since += 1
                    if self.log and (self.iteration % t.log_every == 0 or self.iteration == self.total_iters):
                        rate = done_since * t.batch_size / (time.time() - tic)
                        self.report(epoch, values, rate)
                        tic, done_since = time.time(), 0
                    preempted = broadcast_flag(stop.signum is not None, self.info.device)
                    if preempted or self.iteration == t.stop_after:
                        return self.interrupt(stop.signum)
                    if self.iteration % t.checkpoint_every == 0:
                        self.save("last.pth")
                    if self.iteration >= self.total_iters:
                        break
                self.save("last.pth")
                if t.val_every and (epoch + 1) % t.val_every == 0:
                    self.validate()
        finally:
            stop.restore()
        self.check_replicas()
        self.save("final.pth")
        if self.log:
            self.log.info(f"finished: {os.path.join(self.model_dir, 'final.pth')}")
        return 0

    def check_replicas(self) -> None:
        """DDP keeps the replicas' parameters identical; verify it (a desync would silently corrupt the
        student). BN buffers are not compared: without SyncBN each rank updates them from its own batch and
        DDP re-broadcasts rank 0's at the next forward; the checkpoint holds rank 0's."""
        if not self.info.distributed:
            return
        params = unwrap(self.distiller.student).parameters()
        digest = torch.stack([p.double().sum() for p in params]).cpu()
        digests = [None] * self.info.world_size
        dist.all_gather_object(digests, digest)
        if any(not torch.equal(d, digests[0]) for d in digests):
            raise SegKDError("student weights differ between processes after training (DDP desync)")
        if self.log:
            self.log.info(f"student parameters identical on all {self.info.world_size} processes")

    def interrupt(self, signum: Optional[int]) -> int:
        self.save("last.pth")
        if self.log:
            why = f"signal {signal.Signals(signum).name}" if signum else f"train.stop_after={self.cfg.train.stop_after}"
            self.log.info(f"stopped at iteration {self.iteration} ({why}); checkpoint written. Resume with the "
                          "same command plus train.resume=auto")
        return 128 + signum if signum else STOPPED

    def report(self, epoch: int, values: dict[str, float], rate: float) -> None:
        left = self.total_iters - self.iteration
        eta = left * self.cfg.train.batch_size / max(rate, 1e-9)
        losses = " ".join(f"{k} {v:.4f}" for k, v in values.items() if k != "lr")
        self.log.info(f"epoch {epoch + 1}/{self.epochs} iter {self.iteration}/{self.total_iters} {losses} "
                      f"lr {values['lr']:.2e} {rate:.1f} img/s eta {time.strftime('%H:%M:%S', time.gmtime(eta))}")
        self.log.scalars(self.iteration, {**values, "images_per_s": rate})

    def validate(self) -> None:
        from util.evaluate import evaluate

        model = unwrap(self.distiller.student)
        cm = evaluate(model, self.cfg, self.info, self.cfg.data.val_list, progress=False)
        result = cm.compute()
        if self.log:
            scores = {k: result[k] for k in ("mIoU", "mAcc", "allAcc")}
            self.log.scalars(self.iteration, scores, kind="val")
            self.log.info(f"val at iteration {self.iteration}: " + json.dumps(scores))
        self.distiller.train()
