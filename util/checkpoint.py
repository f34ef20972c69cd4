"""Checkpoints: written atomically, read with ``weights_only=True``, loaded strictly with explicit key maps.

A segkd checkpoint is a dict of tensors and plain Python values (no pickled classes): ``format``
(``"segkd"``), ``mode`` (``supervised``/``distill``), ``layers``, ``classes``, ``model`` (the student's or
supervised model's state dict, no wrapper prefixes), ``config`` (the resolved config as a dict),
``epoch``, ``iteration``, ``optimizer``, ``scaler``, ``scheduler`` and ``rng`` (every rank's RNG states).
The teacher is never in it.
"""

from __future__ import annotations

import os
import re
from typing import Any

import torch
from torch import nn

from util.errors import SegKDError

# Prefixes a state dict may carry from wrappers: DDP / DataParallel, torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def save_checkpoint(state: dict[str, Any], path: str) -> None:
    """Write to ``path.tmp``, fsync, rename, fsync the folder: a crash at any moment leaves either the
    previous file or the new one at ``path``, never a truncated one. A stale ``path.tmp`` left by a killed
    write is simply overwritten.

    A failed write (e.g. a full disk) removes the temporary file and raises SegKDError saying whether the
    previous checkpoint at ``path`` is intact.
    """
    tmp = f"{path}.tmp"
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        if os.path.islink(tmp) or os.path.exists(tmp):
            os.remove(tmp)  # never write through a stale file or link
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(os.path.dirname(path) or ".")
    except BaseException as e:
        if os.path.lexists(tmp):
            os.remove(tmp)
        if not isinstance(e, OSError):
            raise  # a bug or an interrupt, not the disk: keep the traceback
        kept = "the previous checkpoint is intact" if os.path.isfile(path) else "there is no previous checkpoint"
        raise SegKDError(f"{path}: could not write checkpoint ({e.strerror or e}); {kept}") from None


def _fsync_dir(folder: str) -> None:
    """Make the rename itself durable (a power cut after it must not bring back the old file)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # some filesystems cannot open folders; the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass  # e.g. EINVAL on filesystems without directory fsync
    finally:
        os.close(fd)


def load_checkpoint(path: str) -> dict[str, Any]:
    """Read a segkd checkpoint on the CPU with ``weights_only=True``: tensors and plain containers only, so
    a checkpoint can never run code. A missing file or one that is not a checkpoint is a SegKDError."""
    if not os.path.isfile(path):
        raise SegKDError(f"{path}: checkpoint not found")
    ckpt = read_torch_file(path)
    if not isinstance(ckpt, dict) or "model" not in ckpt or not isinstance(ckpt["model"], dict):
        raise SegKDError(f"{path}: not a segkd checkpoint (expected a dict with a 'model' state dict)")
    return ckpt


def read_torch_file(path: str) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; any failure is one SegKDError naming the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip, EOF and torch errors all mean "not a checkpoint"
        raise SegKDError(f"{path}: not a readable PyTorch checkpoint ({_load_error(e)})") from None


def _load_error(e: Exception) -> str:
    """A short reason. torch's weights_only refusal is a page that suggests loading unsafely: name the
    refused global instead."""
    text = str(e)
    if "Weights only load failed" in text:
        # torch 2.3 says "Unsupported class io.open", later releases "Unsupported global: GLOBAL io.open"
        found = re.search(r"Unsupported (?:global: GLOBAL|class) (\S+)", text)
        what = f"it would import {found.group(1)}" if found else "it holds more than tensors and plain values"
        return f"refused by the safe loader, weights_only=True: {what}"
    lines = text.strip().splitlines()
    return lines[0][:120] if lines else type(e).__name__


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
