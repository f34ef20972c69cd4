"""The training loop, read top to bottom: ``fit`` -> ``train_one_epoch`` -> ``step`` (warmup + poly lr, AMP,
the distiller's loss, backward) -> ``flush`` (loss terms to the host every ``train.log_every`` iterations)
-> ``report`` / ``validate``; then checkpoints (engine/state.py holds what they contain) and fit's helpers.
Built by ``train.py`` from the parts engine/setup.py makes.

Faults (docs/RELIABILITY.md): SIGTERM/SIGINT finish the step (with several processes the next one too: the ranks
agree on the signal one step late, so no step waits for the host), write ``model/last.pth`` and exit 128+signal
on every rank; checkpoints are atomic, so a SIGKILL loses at most ``train.checkpoint_every`` iterations;
a non-finite loss stops the run at the next flush, which precedes every checkpoint write, so no checkpoint
holds it; a bad first batch fails before the run directory exists.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import signal
import time
from collections.abc import Iterator
from typing import Any, Optional

import torch

from data.loader import batch_to_device, rng_state, set_rng_state
from engine.preemption import StopRequest, release_workers, shield_workers, worker_error_line
from engine.rundir import RunLog
from engine.state import Checkpoints, final_state, rank0_check
from model.build import network_name
from model.distiller import Distiller
from util.config import Config
from util.distributed import (
    DistInfo,
    MaxVote,
    all_gather_objects,
    all_reduce_mean,
    average_gradients,
    broadcast_flag,
    unwrap,
)
from util.errors import SegKDError

# Exit statuses: 0 finished, 2 bad input, non-finite loss or failed checkpoint write (SegKDError), 3 stopped
# by train.stop_after, 128+signal when preempted (130 SIGINT, 143 SIGTERM).
STOPPED = 3


class Trainer:
    """Owns the loop over ``total_iters`` steps of ``loader`` and the checkpoints in ``output.dir/model``.
    ``log`` is None on ranks other than 0."""

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
        self.checkpoints = Checkpoints(cfg, info, meta)
        self._checked = False  # preflight() done
        self._tic, self._done_since = 0.0, 0
        self._pending: list[torch.Tensor] = []  # per-step loss terms not yet synced to the host (flush())
        self._names: list[str] = []
        self._lr = 0.0
        self._vote: Optional[MaxVote] = None  # this step's stop-signal vote, read after the next step (agreed_signal)

    # ---------------------------------------------------------------- the loop, top to bottom
    def fit(self) -> int:
        """Train to ``total_iters``. Returns the exit status (0, :data:`STOPPED` or 128+signal)."""
        t = self.cfg.train
        self.preflight()
        self.announce()
        stop = StopRequest()
        shield_workers(self.loader)  # before iter() starts the (persistent) workers
        try:
            for epoch in range(self.iteration // self.iters_per_epoch, self.epochs):
                if self.iteration >= self.total_iters:
                    break  # resumed at the very end of a partial last epoch
                code = self.train_one_epoch(epoch, stop)
                if code is not None:
                    return code
                self.save("last.pth")
                if t.val_every and (epoch + 1) % t.val_every == 0:
                    self.validate()
        except SegKDError as e:
            if self.log:
                self.log.error(str(e))
            raise
        finally:
            stop.restore()
        self.check_replicas()
        cache = self.distiller.teacher_cache
        if self.log and cache is not None:
            self.log.info(f"teacher cache {cache.directory}: {cache.hits} hits, {cache.misses} misses")
        self.save("final.pth")
        if self.log:
            self.log.info(f"finished: {os.path.join(self.checkpoints.model_dir, 'final.pth')}")
        return 0

    def train_one_epoch(self, epoch: int, stop: StopRequest) -> Optional[int]:
        """One epoch from the current iteration; an exit status when stopped early, else None."""
        t = self.cfg.train
        self.sampler.set_epoch(epoch, (self.iteration - epoch * self.iters_per_epoch) * self.loader.batch_size)
        self.distiller.train()
        self._tic, self._done_since = time.time(), 0
        for images, target in self.batches():
            self.step(images, target)
            self._done_since += 1
            if self.iteration % t.log_every == 0 or self.iteration == self.total_iters:
                values = self.flush()  # every rank: a collective
                if self.log:
                    self.report(epoch, values, self._done_since * t.batch_size / (time.time() - self._tic))
                self._tic, self._done_since = time.time(), 0
            signum = self.agreed_signal(stop.signum)
            if signum or self.iteration == t.stop_after:
                return self.interrupt(signum)
            if self.iteration % t.checkpoint_every == 0:
                self.save("last.pth")
            if self.iteration >= self.total_iters:
                break
        return None

    def step(self, images: torch.Tensor, target: torch.Tensor) -> None:
        dev, t = self.info.device, self.cfg.train
        images, target = batch_to_device(images, target, dev)  # uint8 labels -> int64, uint8 images normalised
        if t.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        lr = self.set_lr()
        amp = torch.autocast(dev.type, dtype=self.amp_dtype) if t.amp else contextlib.nullcontext()
        with amp:
            total, terms = self.distiller(images, target)
        # no host sync here: the terms wait on the device until flush() (every log_every iterations and
        # before any checkpoint), so a GPU never idles for a .item()
        self._names = ["loss", *terms]
        self._pending.append(torch.stack([total.detach().float().reshape(()), *(v.detach().float().reshape(())
                                                                                for v in terms.values())]))
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if self.info.distributed:  # DDP averages the student's gradients; the methods' connectors are ours
            average_gradients(self.distiller.trainable_parameters(), self.info.world_size)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.iteration += 1
        self._lr = lr

    def set_lr(self) -> float:
        """Poly decay, times a linear warmup over the first ``train.warmup_iters`` iterations."""
        t = self.cfg.train
        factor = (1 - self.iteration / self.total_iters) ** t.power
        if self.iteration < t.warmup_iters:
            factor *= (self.iteration + 1) / t.warmup_iters
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        return self.optimizer.param_groups[0]["lr"]

    def flush(self) -> dict[str, float]:
        """Average the loss terms of the steps since the last flush over steps and processes (one collective
        and one host sync) and stop if any step's term is not finite, naming that step. Called before every
        checkpoint write, so a non-finite loss never reaches a checkpoint: the last good one is kept."""
        if not self._pending:
            return {}
        rows = all_reduce_mean(torch.stack(self._pending), self.info.world_size)  # steps x terms
        first = self.iteration - len(self._pending) + 1
        self._pending = []
        finite = torch.isfinite(rows)
        if not finite.all():
            step = int((~finite.all(dim=1)).nonzero()[0])
            bad = [n for n, ok in zip(self._names, finite[step].tolist()) if not ok]
            term = next((n for n in bad if n != "loss"), "loss")
            value = rows[step, self._names.index(term)].item()
            raise SegKDError(f"iteration {first + step}: loss term '{term}' is {value}; stopping, "
                             f"{self.checkpoints.kept()}")
        return {**dict(zip(self._names, rows.mean(dim=0).tolist())), "lr": self._lr}

    def report(self, epoch: int, values: dict[str, float], rate: float) -> None:
        left = self.total_iters - self.iteration
        eta = left * self.cfg.train.batch_size / max(rate, 1e-9)
        losses = " ".join(f"{k} {v:.4f}" for k, v in values.items() if k != "lr")
        self.log.info(f"epoch {epoch + 1}/{self.epochs} iter {self.iteration}/{self.total_iters} {losses} "
                      f"lr {values['lr']:.2e} {rate:.1f} img/s eta {time.strftime('%H:%M:%S', time.gmtime(eta))}")
        self.log.scalars(self.iteration, {**values, "images_per_s": rate})

    def validate(self) -> None:
        from engine.evaluate import evaluate

        model = unwrap(self.distiller.evaluated)
        cm = evaluate(model, self.cfg, self.info, self.cfg.data.val_list, progress=False)
        result = cm.compute()
        if self.log:
            scores = {k: result[k] for k in ("mIoU", "mAcc", "allAcc")}
            self.log.scalars(self.iteration, scores, kind="val")
            self.log.info(f"val at iteration {self.iteration}: " + json.dumps(scores))
        self.distiller.train()

    # ---------------------------------------------------------------- checkpoints
    def save(self, name: str) -> None:
        """Write ``model/<name>`` (collective); a non-finite loss since the last flush stops here first."""
        self.flush()
        if name == "last.pth" and self.checkpoints.saved_at == self.iteration:
            return  # already written at this iteration (a checkpoint_every multiple at an epoch end)
        state = self.checkpoints.snapshot(unwrap(self.distiller.student), self.optimizer, self.scaler, self.iteration,
                                          self.iteration // self.iters_per_epoch, self.total_iters,
                                          self.distiller.methods)
        self.checkpoints.write(name, state if name == "last.pth" else final_state(state))
        if name == "final.pth" and "peers" in self.meta:  # a mutual run: each peer's own checkpoint too
            paths = self.checkpoints.write_peers(unwrap(self.distiller.student), state)
            if self.log:
                self.log.info(f"peer checkpoints: {', '.join(paths)}")

    def restore(self, state: dict[str, Any], path: str) -> None:
        """Continue from ``path``'s state (engine/state.py checks it is this same run)."""
        self.iteration = self.checkpoints.restore(state, path, unwrap(self.distiller.student), self.optimizer,
                                                  self.scaler, self.total_iters, self.distiller.methods)

    # ---------------------------------------------------------------- helpers of fit()
    def preflight(self) -> None:
        """Load this rank's first batch in the main process, so a bad image or label fails here, before the
        run directory exists, as one line naming the file. RNG-neutral: the run is unchanged by it.
        All ranks agree, so none of them starts writing while another has failed."""
        if self._checked or self.iteration >= self.total_iters:
            return
        epoch = self.iteration // self.iters_per_epoch
        self.sampler.set_epoch(epoch, (self.iteration - epoch * self.iters_per_epoch) * self.loader.batch_size)
        keys = list(itertools.islice(iter(self.sampler), self.loader.batch_size))
        saved, error = rng_state(self.info.device), None
        try:
            for key in keys:
                self.loader.dataset[key]
        except SegKDError as e:
            error = e
        finally:
            set_rng_state(saved, self.info.device)
        if broadcast_flag(error is not None, self.info.device):
            raise error or SegKDError("another process found bad input in its first batch (see its error)")
        self._checked = True

    def announce(self) -> None:
        """The run's first log line: it creates the run directory (RunLog is lazy)."""
        net = network_name(self.meta)
        # the first message creates and locks a new run folder: a job that lost that race stops on every rank
        rank0_check((lambda: self.log.info(f"{self.meta['mode']} {net}: {self.total_iters} iterations, "
                                           f"{self.epochs} epochs of {self.iters_per_epoch}, {self.info.world_size} "
                                           f"process(es) on {self.info.device.type}")) if self.log else None)
        if not self.log:
            return
        if self.checkpoints.resumed_from:
            self.log.purge_step = self.iteration + 1  # TensorBoard hides what the interrupted run logged later
            self.log.scalars(self.iteration, {}, kind="resume")  # metrics.jsonl: later rows supersede
            self.log.info(f"resumed from {self.checkpoints.resumed_from} at iteration "
                          f"{self.iteration}/{self.total_iters}")
            if self.checkpoints.rng_note:
                self.log.info(f"warning: resume: {self.checkpoints.rng_note}")
            if self.checkpoints.test_changes:  # validation (train.val_every) and the final scores use the new ones
                changes = "; ".join(self.checkpoints.test_changes)
                self.log.info(f"resume: evaluated with other test.* keys than before ({changes})")

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The loader's batches; a bad sample (also in a worker) is one line naming its file."""
        it = iter(self.loader)
        while True:
            try:
                batch = next(it)
            except StopIteration:
                return
            except SegKDError as e:
                release_workers(it)
                raise SegKDError(f"{worker_error_line(e)} (python -m tools.check finds every such file; fix "
                                 "it, then resume with train.resume=auto)") from None
            yield batch

    def agreed_signal(self, signum: Optional[int]) -> int:
        """The stop signal any rank received (0 if none), identical on every rank: they stop together. With several
        processes it is read one step late, from the asynchronous all-reduce the previous step started
        (:class:`~util.distributed.MaxVote`): reading this step's at once would make the host wait for the step's
        kernels every iteration. A signal received during step i stops every rank after step i + 1."""
        if not self.info.distributed:
            return signum or 0
        previous, self._vote = self._vote, MaxVote(signum or 0, self.info.device)
        return previous.result() if previous is not None else 0

    def check_replicas(self) -> None:
        """DDP keeps the replicas' parameters identical, and the trainer averages the connectors' gradients itself;
        verify both (a desync would silently corrupt the student, or the hint a connector gives it). BN buffers are
        not compared: without SyncBN each rank updates them from its own batch and DDP re-broadcasts rank 0's at the
        next forward; the checkpoint holds rank 0's."""
        if not self.info.distributed:
            return
        groups = {"student": list(unwrap(self.distiller.student).parameters()),
                  "distillation connector": self.distiller.trainable_parameters()}
        averaged_by = {"student": "DDP", "distillation connector": "the trainer's gradient averaging"}
        digests = {name: torch.stack([p.double().sum() for p in params]).cpu()
                   for name, params in groups.items() if params}
        gathered = all_gather_objects(digests, self.info.world_size)
        for name in digests:
            if any(not torch.equal(g[name], digests[name]) for g in gathered):
                raise SegKDError(f"{name} weights differ between processes after training ({averaged_by[name]} "
                                 "out of sync)")
        if self.log:
            what = f"every peer's ({len(self.meta['peers'])} peers)" if "peers" in self.meta else "student"
            if len(digests) > 1:
                what += " and distillation connector"
            self.log.info(f"{what} parameters identical on all {self.info.world_size} processes")

    def interrupt(self, signum: int) -> int:
        self.save("last.pth")
        if self.log:
            why = f"signal {signal.Signals(signum).name}" if signum else f"train.stop_after={self.cfg.train.stop_after}"
            self.log.info(f"stopped at iteration {self.iteration} ({why}); checkpoint written. Resume with the "
                          "same command plus train.resume=auto")
        return 128 + signum if signum else STOPPED
