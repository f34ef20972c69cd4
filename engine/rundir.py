"""The run directory: resolved config, git commit, human log, metrics.jsonl and tensorboard scalars.

Only rank 0 creates a :class:`RunLog`; other ranks get ``None`` and write nothing. A RunLog creates the
folder with its first message, not when constructed, so a run that fails its checks (bad data, a
checkpoint that does not fit) writes nothing.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from typing import Any, Optional

try:
    import fcntl
except ImportError:  # not POSIX: runs are not locked
    fcntl = None

from util.config import REPO_ROOT, Config, flat_dict, load_config, save_config
from util.errors import SegKDError

# Keys that may differ between a run and its resumption without it being another experiment.
RESUMABLE_KEYS = {"train.resume", "train.stop_after", "train.workers", "train.log_every", "train.checkpoint_every",
                  "distill.teacher_cache"}


def git_commit() -> str:
    """The repository's HEAD commit, with ``-dirty`` when tracked files have uncommitted changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def check_run_dir(cfg: Config) -> None:
    """Refuse an ``output.dir`` that already holds a run, unless resuming that same experiment, and one
    that holds files of something else (never scatter a run among them)."""
    run_dir = cfg.output.dir
    saved = os.path.join(run_dir, "config.yaml")
    if not os.path.exists(saved):
        other = _foreign_entries(run_dir)
        if other:
            why = "train.resume=auto but this folder" if cfg.train.resume == "auto" else "output.dir"
            raise SegKDError(f"{run_dir}: {why} holds no segkd run (no config.yaml) but other files "
                             f"({', '.join(other[:3])}); choose a new or empty folder")
        return
    if cfg.train.resume is None:
        raise SegKDError(f"{run_dir}: output.dir already holds a run; resume it with train.resume=auto "
                         "or choose another output.dir (nothing was overwritten)")
    new = flat_dict(cfg)  # how the run is evaluated (test.*, e.g. test.after_training) does not change its training
    diff = experiment_diff(flat_dict(load_config(saved)), new)
    if diff:
        raise SegKDError(f"{run_dir}: holds a different experiment ({diff}); refusing to resume into it")


# Keys whose default is not what the code did before the key existed: a run config without them trained so.
LEGACY = {"data.opencv_threads": -1}  # OpenCV's default pool, before 2026-12-07


# Sections that say where a run is written and how it is evaluated, never what it trains: they may differ between
# two calls of one experiment (a resume, a table's rerun with other TEST_EXTRA, a folder moved).
NOT_THE_EXPERIMENT = ("output.", "test.")


def experiment_diff(old: dict[str, Any], new: dict[str, Any], also_ignore: tuple[str, ...] = ()) -> str:
    """The keys that make ``new`` another experiment than ``old`` (flat configs), as one phrase for an error
    (``"train.base_lr: 0.01 there, 0.02 now, +1 more key: train.momentum"``), or "" when it is the same one.
    Resumable keys, :data:`NOT_THE_EXPERIMENT` and ``also_ignore`` may differ; a key that ``old`` lacks (written by
    an older segkd) counts with its default value, or with what the older code did where that is not the default
    (:data:`LEGACY`)."""
    defaults = {**flat_dict(load_config(None)), **LEGACY}
    diff = sorted(k for k in new if k not in RESUMABLE_KEYS and k not in also_ignore
                  and not k.startswith(NOT_THE_EXPERIMENT) and old.get(k, defaults.get(k)) != new[k])
    if not diff:
        return ""
    k = diff[0]
    more = f", +{len(diff) - 1} more: {', '.join(diff[1:4])}{', ...' if len(diff) > 4 else ''}" if len(diff) > 1 else ""
    return f"{k}: {old.get(k, defaults.get(k))!r} there, {new[k]!r} now{more}"


def _foreign_entries(run_dir: str) -> list[str]:
    """Entries of an existing folder other than hidden files and an empty ``model/`` (left by a run killed
    before it wrote its config)."""
    if not os.path.isdir(run_dir):
        if os.path.exists(run_dir):
            raise SegKDError(f"{run_dir}: output.dir is a file, not a folder")
        return []
    other = []
    for name in sorted(os.listdir(run_dir)):
        path = os.path.join(run_dir, name)
        if name.startswith(".") or (name == "model" and os.path.isdir(path) and not os.listdir(path)):
            continue
        other.append(name)
    return other


LOCK_NAME = ".segkd.lock"  # hidden: not one of a folder's foreign entries


class RunLock:
    """An exclusive ``flock`` on ``run_dir/.segkd.lock`` held by rank 0 while it trains, so a second job started on
    a folder whose processes still run (a launcher that died before its workers stopped, a resubmission racing the
    old job) is refused instead of writing the same checkpoints. The kernel drops the lock when its holder exits,
    however it exits: a stale lock file never blocks. The file is never removed (removing it would let two jobs lock
    two different files of one name); it holds the holder's pid and host, for the message."""

    def __init__(self, run_dir: str):
        self.run_dir, self.path = run_dir, os.path.join(run_dir, LOCK_NAME)
        self._fd: Optional[int] = None

    def acquire(self, sign: bool = True) -> None:
        """Take the lock (once); a SegKDError naming the folder and its holder when another process has it.
        ``sign``: create the file if needed and write this process's pid and host into it (a run that writes its
        folder anyway); without, a claim that may still be refused writes nothing: it locks the file if there is one
        (no file: no job of this code holds the folder, and the run's first message takes the lock)."""
        if self._fd is not None:
            if sign:
                self._sign()
            return
        if fcntl is None:
            return
        try:
            fd = os.open(self.path, os.O_RDWR | (os.O_CREAT if sign else 0), 0o644)
        except FileNotFoundError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise SegKDError(f"{self.run_dir}: output.dir is in use by a training job still running ({holder} holds "
                             f"{self.path}); wait for it to stop or end it, then resume with train.resume=auto"
                             ) from None
        self._fd = fd
        if sign:
            self._sign()

    def _sign(self) -> None:
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None


def _drop_partial_line(path: str) -> None:
    """A SIGKILL during a write can leave half a line at the end of a log; cut it so that the lines
    appended after a resume stay one JSON object each."""
    if not os.path.isfile(path):
        return
    with open(path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


class RunLog:
    """Human log (stdout + ``train.log``), ``metrics.jsonl`` and tensorboardX scalars under ``tb/``.

    Set :attr:`purge_step` before the first scalar when resuming: TensorBoard then hides the steps at and
    after it that an interrupted run had logged, and which the resumed run logs again.
    """

    def __init__(self, run_dir: str, cfg: Config, log_name: str = "train.log"):
        self.run_dir, self.cfg, self.log_name = run_dir, cfg, log_name
        self.purge_step: Optional[int] = None
        self._log: Optional[Any] = None
        self._jsonl: Optional[Any] = None
        self._tb: Optional[Any] = None
        self.lock = RunLock(run_dir)

    def claim(self) -> None:
        """Lock the run folder now if it holds a run (a resume), before anything in it is read for resuming or
        written; a new folder is locked when the first message creates it. SegKDError when another job holds it."""
        if os.path.exists(os.path.join(self.run_dir, "config.yaml")):
            self.lock.acquire(sign=False)  # signed by the first message, after every check has passed

    def _open(self) -> None:
        if self._log is not None:
            return
        run_dir = self.run_dir
        os.makedirs(os.path.join(run_dir, "model"), exist_ok=True)
        self.lock.acquire()  # before the config, the commit line or a log line is written
        if not os.path.exists(os.path.join(run_dir, "config.yaml")):
            save_config(self.cfg, os.path.join(run_dir, "config.yaml"))
        with open(os.path.join(run_dir, "git_commit.txt"), "a", encoding="utf-8") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {git_commit()} {' '.join(sys.argv)}\n")
        for name in (self.log_name, "metrics.jsonl"):
            _drop_partial_line(os.path.join(run_dir, name))
        self._log = open(os.path.join(run_dir, self.log_name), "a", encoding="utf-8")
        self._jsonl = open(os.path.join(run_dir, "metrics.jsonl"), "a", encoding="utf-8")

    @property
    def tb(self):
        if self._tb is None:  # lazy: tensorboardX import and event file only when scalars are written
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(self.run_dir, "tb"), purge_step=self.purge_step)
        return self._tb

    def info(self, message: str) -> None:
        self._open()
        line = f"[{time.strftime('%H:%M:%S')}] {message}"
        print(line, flush=True)
        self._log.write(line + "\n")
        self._log.flush()

    def error(self, message: str) -> None:
        """Record why a started run stopped in ``train.log`` (the entry point prints it on stderr). Before
        the first message nothing is written: a run that never started leaves no folder."""
        if self._log is not None:
            self._log.write(f"[{time.strftime('%H:%M:%S')}] error: {message}\n")
            self._log.flush()

    def scalars(self, step: int, values: dict[str, float], kind: str = "train") -> None:
        self._open()
        for name, value in values.items():
            self.tb.add_scalar(f"{kind}/{name}", value, step)
        self._jsonl.write(json.dumps({"kind": kind, "iteration": step, **values}) + "\n")
        self._jsonl.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._log is not None:
            self._log.close()
            self._jsonl.close()
        self.lock.release()
