"""Preemption and worker faults: stop requests from signals, data workers that leave signals to the
trainer, workers that stop with their launcher, and one-line messages for errors raised inside DataLoader
workers."""

from __future__ import annotations

import atexit
import functools
import multiprocessing
import os
import re
import signal
import threading
import time
from typing import Callable, Optional

import torch
import torch.utils.data

from util.errors import SegKDError

# How DataLoader re-raises a worker's exception: its message is the worker's whole traceback, whose last
# line is "util.errors.SegKDError: <the one-line message>".
_WORKER_ERROR = re.compile(r"^(?:[\w.]+\.)?SegKDError: (.*)$", re.MULTILINE)


class StopRequest:
    """Remembers a SIGTERM/SIGINT so the loop can finish its step and checkpoint before exiting.

    Every signal only sets the flag, a second one too: torchrun and SLURM may each forward the same
    SIGTERM, and Ctrl-C under torchrun arrives twice. ``kill -9`` aborts at once (checkpoints are atomic).
    """

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}

    def _handle(self, signum, frame) -> None:
        self.signum = signum

    def restore(self) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)


def stop_with_launcher(poll: float = 0.5, grace: float = 30.0) -> Optional[threading.Thread]:
    """Under torchrun (``TORCHELASTIC_RUN_ID`` set): when the launcher, this process's parent, is gone (SIGKILLed,
    its node's job step killed), SIGTERM this process (it finishes its step, writes last.pth and exits 143) and
    SIGKILL it ``grace`` s later if it is still there (a peer that died with the launcher leaves a collective
    hanging). torchrun starts its workers in sessions of their own, so without this they train on and keep writing
    the run folder while a resubmitted job starts on it. A daemon thread polling ``os.getppid()`` (which changes
    when the parent dies) every ``poll`` s; a plain ``python train.py`` is not watched (a closed shell must not stop
    a ``nohup`` run). Returns the thread, or None."""
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return None
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace)
        os.kill(os.getpid(), signal.SIGKILL)

    thread = threading.Thread(target=watch, name="segkd-launcher-watch", daemon=True)
    thread.start()
    return thread


def ignore_stop_signals(worker_id: int, then: Optional[Callable[[int], None]] = None) -> None:
    """DataLoader ``worker_init_fn``: a SIGTERM/SIGINT sent to the whole process group (Ctrl-C, SLURM,
    ``kill -- -PGID``) is for the training process, which checkpoints and then shuts its workers down.
    Without this, torch's worker handler dies on it and the main process crashes mid-step with
    "DataLoader worker is killed by signal: Terminated", writing no checkpoint."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if then is not None:
        then(worker_id)


def shield_workers(loader: torch.utils.data.DataLoader) -> None:
    """Install :func:`ignore_stop_signals` in ``loader``'s workers (before they start), keeping its own
    ``worker_init_fn``. A partial of a module function, so spawn/forkserver can pickle it."""
    _kill_workers_at_exit()
    init = loader.worker_init_fn
    if isinstance(init, functools.partial) and init.func is ignore_stop_signals:
        return
    loader.worker_init_fn = functools.partial(ignore_stop_signals, then=init)


@functools.cache
def _kill_workers_at_exit() -> None:
    """Workers that ignore SIGTERM would hang interpreter exit: multiprocessing's exit hook terminates
    daemonic children with SIGTERM and then joins them. This hook, registered after multiprocessing's and so
    run before it, SIGKILLs them first (they only read data). Registered once per process."""
    atexit.register(_kill_children)


def _kill_children() -> None:
    children = [c for c in multiprocessing.active_children() if c.daemon]
    if children:  # torch's SIGCHLD handler would report each kill as a worker failure
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for child in children:
        child.kill()
        child.join(timeout=5)


def release_workers(iterator) -> None:
    """SIGKILL the worker processes of a DataLoader iterator that stopped on a worker's error (they only read
    data). Its shutdown would otherwise wait 5 s per join for workers that do not answer after an error
    (10 s when shielded: measured, docs/RELIABILITY.md), delaying the error's exit by that much."""
    if getattr(iterator, "_worker_pids_set", False):  # else torch's SIGCHLD handler reports the kill as a crash
        torch.utils.data._utils.signal_handling._remove_worker_pids(id(iterator))
        iterator._worker_pids_set = False
    for worker in getattr(iterator, "_workers", ()):  # torch's multiprocessing iterator; none with 0 workers
        if worker.is_alive():
            worker.kill()
            worker.join(timeout=5)


def worker_error_line(error: SegKDError) -> str:
    """The one-line message of a SegKDError, also when DataLoader re-raised it with a worker's traceback."""
    found = _WORKER_ERROR.findall(str(error))
    return found[-1] if found else str(error)
