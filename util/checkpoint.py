"""Checkpoints: written atomically, read with ``weights_only=True``, loaded strictly with explicit key maps.

A segkd checkpoint is a dict: ``model`` (the student's or supervised model's state dict, no wrapper
prefixes), ``config`` (the resolved config as a dict), ``epoch``, ``iteration``, and for ``last.pth`` also
``optimizer``, ``scaler`` and ``rng``. The teacher is never in it.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from typing import Any

import torch
from torch import nn

from util.errors import SegKDError

# Prefixes a state dict may carry from wrappers: DDP / DataParallel, torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def save_checkpoint(state: dict[str, Any], path: str) -> None:
    """Write to ``path.tmp``, fsync, then rename: a crash leaves the previous file intact.

    A failed write (e.g. a full disk) removes the temporary file and raises SegKDError saying that the
    previous checkpoint at ``path`` is untouched.
    """
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        kept = "the previous checkpoint is intact" if os.path.exists(path) else "no previous checkpoint"
        raise SegKDError(f"{path}: could not write checkpoint ({e.strerror or e}); {kept}") from None


def load_checkpoint(path: str) -> dict[str, Any]:
    """Read a segkd checkpoint on the CPU. A missing file or one that is not a checkpoint is a SegKDError."""
    if not os.path.isfile(path):
        raise SegKDError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SegKDError(f"{path}: not a readable PyTorch checkpoint ({first[:120]})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or not isinstance(ckpt["model"], dict):
        raise SegKDError(f"{path}: not a segkd checkpoint (expected a dict with a 'model' state dict)")
    return ckpt


def strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Explicit key map: drop wrapper prefixes (``module.``, ``_orig_mod.``) wherever they lead a key."""
    out = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        out[key] = value
    return out


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` with a one-line error listing missing/unexpected/mismatched keys."""
    state = strip_prefixes(state)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    problems = []
    for name, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch", shapes)):
        if keys:
            more = f" (+{len(keys) - 5} more)" if len(keys) > 5 else ""
            problems.append(f"{name}: {', '.join(keys[:5])}{more}")
    if problems:
        raise SegKDError(f"{source}: weights do not fit the model; " + "; ".join(problems))
    model.load_state_dict(state, strict=True)
