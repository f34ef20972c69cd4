"""The run directory: resolved config, git commit, human log, metrics.jsonl and tensorboard scalars.

Only rank 0 creates a :class:`RunLog`; other ranks get ``None`` and write nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any, Optional

from util.config import REPO_ROOT, Config, flat_dict, load_config, save_config
from util.errors import SegKDError

# Keys that may differ between a run and its resumption without it being another experiment.
RESUMABLE_KEYS = {"train.resume", "train.stop_after", "train.workers", "train.log_every", "train.checkpoint_every"}


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
    """Refuse an ``output.dir`` that already holds a run, unless resuming that same experiment."""
    run_dir = cfg.output.dir
    saved = os.path.join(run_dir, "config.yaml")
    if not os.path.exists(saved):
        if cfg.train.resume == "auto" and os.path.isdir(run_dir) and os.listdir(run_dir):
            raise SegKDError(f"{run_dir}: train.resume=auto but this folder holds no segkd run (no config.yaml)")
        return
    if cfg.train.resume is None:
        raise SegKDError(f"{run_dir}: output.dir already holds a run; resume it with train.resume=auto "
                         "or choose another output.dir (nothing was overwritten)")
    old = flat_dict(load_config(saved))
    new = flat_dict(cfg)
    diff = sorted(k for k in new if k not in RESUMABLE_KEYS and old.get(k) != new[k])
    if diff:
        k = diff[0]
        raise SegKDError(f"{run_dir}: holds a different experiment ({k}: {old.get(k)!r} there, {new[k]!r} now"
                         f"{f', +{len(diff) - 1} more keys' if len(diff) > 1 else ''}); refusing to resume into it")


class RunLog:
    """Human log (stdout + ``train.log``), ``metrics.jsonl`` and tensorboardX scalars under ``tb/``."""

    def __init__(self, run_dir: str, cfg: Config, log_name: str = "train.log"):
        os.makedirs(os.path.join(run_dir, "model"), exist_ok=True)
        self.run_dir = run_dir
        if not os.path.exists(os.path.join(run_dir, "config.yaml")):
            save_config(cfg, os.path.join(run_dir, "config.yaml"))
        with open(os.path.join(run_dir, "git_commit.txt"), "a", encoding="utf-8") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {git_commit()} {' '.join(sys.argv)}\n")
        self._log = open(os.path.join(run_dir, log_name), "a", encoding="utf-8")
        self._jsonl = open(os.path.join(run_dir, "metrics.jsonl"), "a", encoding="utf-8")
        self._tb: Optional[Any] = None

    @property
    def tb(self):
        if self._tb is None:  # lazy: tensorboardX import and event file only when scalars are written
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(self.run_dir, "tb"))
        return self._tb

    def info(self, message: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {message}"
        print(line, flush=True)
        self._log.write(line + "\n")
        self._log.flush()

    def scalars(self, step: int, values: dict[str, float], kind: str = "train") -> None:
        for name, value in values.items():
            self.tb.add_scalar(f"{kind}/{name}", value, step)
        self._jsonl.write(json.dumps({"kind": kind, "iteration": step, **values}) + "\n")
        self._jsonl.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        self._log.close()
        self._jsonl.close()
