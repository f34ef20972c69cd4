"""A run's resumable state: what ``model/last.pth`` holds, writing it on rank 0, restoring it, and which
checkpoint a resumed run continues from (rank 0 decides for every rank).

A last.pth holds the student's weights, the optimizer and GradScaler states, the iteration, every rank's
RNG states and the resolved config (final.pth the same but for what only a resume reads: :data:`RESUME_ONLY`);
a resume restores all of it, so a resumed run is bitwise the
uninterrupted one on CPU (tests/test_faults.py). Writes are atomic (util/checkpoint.py).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional

import torch
from torch import nn

from data.loader import rng_state, set_rng_state
from engine.rundir import experiment_diff
from model.build import arch_of, describe_checkpoint, peer_meta
from util.checkpoint import load_checkpoint, load_state_strict, save_checkpoint
from util.config import Config, flat_dict
from util.distributed import DistInfo, all_gather_objects, broadcast_flag, broadcast_object
from util.errors import SegKDError

RESUME_KEYS = ("model", "optimizer", "scaler", "scheduler", "iteration", "rng")
# What only a resume reads: last.pth holds it, final.pth (the finished network, for test.py, teacher.checkpoint and
# export) leaves it out. AdamW's two moments alone are twice the weights: with them in both files a finished run took
# six times its weights on disk, four without them in final.pth.
RESUME_ONLY = ("optimizer", "scaler", "scheduler", "rng", "distill_modules")


def final_state(state: dict[str, Any]) -> dict[str, Any]:
    """A snapshot without :data:`RESUME_ONLY`: meta, ``model``, ``epoch``, ``iteration`` and ``config``."""
    return {k: v for k, v in state.items() if k not in RESUME_ONLY}


class Checkpoints:
    """``output.dir/model``: ``last.pth`` (resumable) and ``final.pth`` (the network). ``saved_at`` is the iteration
    of the last.pth this run holds (None before the first write); ``resumed_from`` the path a resume came from."""

    def __init__(self, cfg: Config, info: DistInfo, meta: dict[str, Any]):
        self.cfg, self.info, self.meta = cfg, info, meta
        self.model_dir = os.path.join(cfg.output.dir, "model")
        self.saved_at: Optional[int] = None
        self.resumed_from: Optional[str] = None
        self.rng_note: Optional[str] = None  # which random state a resume could not carry over (data/loader.py)
        self.test_changes: list[str] = []  # the test.* keys a resume changed (validation follows the new ones)

    def snapshot(self, student: torch.nn.Module, optimizer, scaler, iteration: int, epoch: int,
                 total_iters: int, methods: Optional[torch.nn.Module] = None) -> dict[str, Any]:
        """The checkpoint dict (collective: every rank's RNG states are gathered). ``methods``: the
        distillation methods' modules (connectors), saved under ``distill_modules`` when they have any state;
        :func:`final_state` drops them with the rest of what only a resume reads (final.pth's network is the student
        alone)."""
        rngs = [rng_state(self.info.device)]
        if self.info.distributed:  # every rank's dropout RNG, so a resume is exact on each of them
            rngs = all_gather_objects(rng_state(self.info.device), self.info.world_size)
        return {**self.meta, "model": student.state_dict(), "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "scheduler": {"type": "poly", "power": self.cfg.train.power, "total_iters": total_iters},
                "epoch": epoch, "iteration": iteration, "rng": rngs, "config": self.cfg.to_dict(),
                **({"distill_modules": methods.state_dict()} if methods is not None and methods.state_dict() else {})}

    def write(self, name: str, state: dict[str, Any], path: Optional[str] = None) -> None:
        """Write ``model/<name>`` (or ``path``) on rank 0 (collective). If the write fails, every rank stops."""
        path = path or os.path.join(self.model_dir, name)
        error = None
        if self.info.is_main:
            try:
                save_checkpoint(state, path)
            except SegKDError as e:
                error = e
        if broadcast_flag(error is not None, self.info.device):
            raise error or SegKDError(f"{path}: rank 0 could not write the checkpoint; stopping")
        if name == "last.pth":
            self.saved_at = state["iteration"]

    def write_peers(self, peers: nn.ModuleList, state: dict[str, Any]) -> list[str]:
        """Each peer of a mutual run as ``output.dir/peer<i>/model/final.pth`` (collective): one network, mode
        ``mutual``, with the run's iteration, epoch and config, which test.py and ``teacher.checkpoint`` load. Its
        optimizer state stays in the run's own checkpoints (a peer alone does not resume)."""
        paths = []
        for i, peer in enumerate(peers):
            path = os.path.join(self.cfg.output.dir, f"peer{i}", "model", "final.pth")
            self.write("final.pth", {**peer_meta(self.meta, i), "model": peer.state_dict(),
                                     **{k: state[k] for k in ("epoch", "iteration", "config")}}, path)
            paths.append(path)
        return paths

    def kept(self) -> str:
        """What survives a stop, for its message."""
        if self.saved_at is None:
            return "no checkpoint was written yet"
        return (f"the last good checkpoint, {os.path.join(self.model_dir, 'last.pth')} (iteration {self.saved_at}), "
                "is kept")

    def restore(self, state: dict[str, Any], path: str, student: torch.nn.Module, optimizer, scaler,
                total_iters: int, methods: Optional[torch.nn.Module] = None) -> int:
        """Continue from a ``last.pth`` of this same run: weights, the distillation methods' connectors,
        optimizer, scaler, RNGs; returns the iteration. Any mismatch is a SegKDError raised before anything
        is written."""
        missing = [k for k in RESUME_KEYS if k not in state]
        if state.get("format") != "segkd" or missing:
            lean = state.get("format") == "segkd" and "model" in state and "iteration" in state
            hint = "; a final.pth holds the network only: resume from the run's model/last.pth" if lean else ""
            raise SegKDError(f"{path}: not a segkd last.pth (missing {', '.join(missing) or 'format'}) - "
                             f"cannot resume from it{hint}")
        same = all(state.get(k) == self.meta.get(k) for k in ("mode", "layers", "classes", "peers"))
        if not same or arch_of(state) != arch_of(self.meta):
            raise SegKDError(f"{path}: train.resume is {describe_checkpoint(state)} but this run trains "
                             f"{describe_checkpoint(self.meta)}; give this run's model/last.pth")
        saved = state.get("config")
        diff = ""
        if isinstance(saved, dict):
            new, old = flat_dict(self.cfg), flat_dict(saved)
            diff = experiment_diff(old, new)  # output.* and test.* may differ: engine/rundir.py
            self.test_changes = [f"{k}: {old[k]!r} there, {new[k]!r} now" for k in new
                                 if k.startswith("test.") and k in old and old[k] != new[k]]
        if diff:  # the optimizer state would silently keep the old lr, momentum and weight decay
            raise SegKDError(f"{path}: was trained with another config ({diff}); a resume continues the same "
                             "experiment - change only output.dir or the resumable keys, or start a new run")
        saved_world = len(state["rng"])  # one RNG state per process of the run that wrote it
        if saved_world != self.info.world_size:  # each rank's batch, data shard and random streams would change
            raise SegKDError(f"{path}: was trained by {saved_world} process(es), this run has "
                             f"{self.info.world_size}; resume with {saved_world} (a resume never changes the world "
                             "size: each process's batch, data order and random state depend on it)")
        if state["scheduler"]["total_iters"] != total_iters:
            raise SegKDError(f"{path}: was trained for {state['scheduler']['total_iters']} iterations, this run "
                             f"has {total_iters} (batch size or data changed?)")
        load_state_strict(student, state["model"], path)
        if methods is not None and methods.state_dict():
            if "distill_modules" not in state:
                raise SegKDError(f"{path}: holds no distill_modules for this run's connectors; cannot resume")
            load_state_strict(methods, state["distill_modules"], path)
        try:
            optimizer.load_state_dict(state["optimizer"])
            scaler.load_state_dict(state["scaler"])
        except (ValueError, KeyError, RuntimeError) as e:
            raise SegKDError(f"{path}: optimizer state does not fit this run ({e})") from None
        self.rng_note = set_rng_state(state["rng"][self.info.rank], self.info.device)
        self.resumed_from = path
        if os.path.abspath(path) == os.path.abspath(os.path.join(self.model_dir, "last.pth")):
            self.saved_at = state["iteration"]  # this run's last.pth already holds this iteration
        return state["iteration"]


def rank0_check(check: Optional[Callable[[], None]]) -> None:
    """Run ``check`` (given on rank 0, None on the others); a SegKDError it raises is raised on every rank with its
    message (a collective), so no rank goes on to wait in a collective that rank 0 never joins."""
    problem = None
    if check is not None:
        try:
            check()
        except SegKDError as e:
            problem = str(e)
    problem = broadcast_object(problem)
    if problem:
        raise SegKDError(problem)


def agreed_config(cfg: Config, info: DistInfo) -> None:
    """Refuse, on every rank and before anything is built or written, a run whose processes were given different
    configs (nodes started with other files or overrides would otherwise train to the end, each its own recipe
    under one DDP). The error names the first differing key with rank 0's value and the other rank's."""
    if not info.distributed:
        return
    configs = all_gather_objects(flat_dict(cfg), info.world_size)
    first = configs[0]
    for rank, other in enumerate(configs[1:], start=1):
        diff = sorted(k for k in set(first) | set(other) if first.get(k, "(unset)") != other.get(k, "(unset)"))
        if diff:
            k = diff[0]
            more = f" (+{len(diff) - 1} more: {', '.join(diff[1:4])})" if len(diff) > 1 else ""
            raise SegKDError(f"config differs between processes: {k} is {first.get(k, '(unset)')!r} on rank 0, "
                             f"{other.get(k, '(unset)')!r} on rank {rank}{more}; start every node with the same "
                             "config and overrides")


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
        path = broadcast_object(path)
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


