"""A disk cache of the frozen teacher's logits, keyed by the exact input batch.

Runs that distil from one teacher on identical batches (the distilled rows of one seed see the same
augmented crops, data/loader.py) need the teacher's forward pass once, not once per run: on a CPU it costs
about as much as the student's whole training step. ``distill.teacher_cache=DIR`` turns it on.

The key is a SHA-256 of the teacher's identity (its checkpoint's bytes), the device type, the autocast
dtype of that device (float16 and bfloat16 runs compute different logits; ``off`` without autocast), the
names of the intermediate tensors stored with the logits (model/methods asks for them; none for a logit-only
entry), and the batch itself (dtype, shape and bytes of the normalised images), so a hit is the teacher's
output for exactly these pixels computed the same way, and a different teacher, crop, augmentation or
precision can never hit. (Entries written before the key named the device and precision are never read
again.) Files are written atomically (``<key>.pt.<pid>.tmp`` then rename), so concurrent runs and a killed
run leave only whole entries.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from typing import Optional

import torch

from util.errors import SegKDError
from util.hashing import file_hash


def file_digest(path: str) -> str:
    """SHA-256 of a file's bytes (the teacher checkpoint: its identity in every cache key)."""
    return file_hash(path, "sha256")


def _autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    """The dtype autocast computes in on ``device_type`` here, None when autocast is off there."""
    try:
        on = torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 has no device argument
        on = torch.is_autocast_enabled() if device_type == "cuda" else torch.is_autocast_cpu_enabled()
    if not on:
        return None
    try:
        return torch.get_autocast_dtype(device_type)
    except AttributeError:  # torch < 2.4
        return torch.get_autocast_gpu_dtype() if device_type == "cuda" else torch.get_autocast_cpu_dtype()


class TeacherCache:
    """``get(key, device)`` -> ``{'out','aux'}`` logits or None; ``put(key, logits)`` stores them (N×K×h×w
    float tensors, on the CPU on disk, returned on ``device``), ``key = cache.key(images)`` hashed once per
    batch. ``hits`` and ``misses`` count calls."""

    def __init__(self, directory: str, teacher_id: str):
        self.directory = directory
        self.teacher_id = teacher_id
        self.hits = self.misses = 0
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as e:
            raise SegKDError(f"{directory}: cannot create distill.teacher_cache ({e.strerror})") from None

    def key(self, images: torch.Tensor, features: Sequence[str] = ()) -> str:
        """Everything that decides the teacher's output for this batch, hashed (the one place the key is
        built); ``features``: the intermediate tensors stored beside the logits."""
        device = images.device.type
        amp = _autocast_dtype(device)
        h = hashlib.sha256(self.teacher_id.encode())
        h.update(f"{images.dtype}|{tuple(images.shape)}|device={device}|autocast={amp or 'off'}".encode())
        if features:
            h.update(f"|features={','.join(sorted(features))}".encode())
        h.update(images.detach().contiguous().cpu().numpy().tobytes())
        return h.hexdigest()

    def _path(self, key: str) -> str:
        return os.path.join(self.directory, key[:2], key + ".pt")

    def get(self, key: str, device: torch.device) -> Optional[dict[str, torch.Tensor]]:
        path = self._path(key)
        if not os.path.isfile(path):
            self.misses += 1
            return None
        try:
            logits = torch.load(path, map_location=device, weights_only=True)
        except FileNotFoundError:  # deleted since the check (a table's DROP_LAST=1 empties a finished seed's cache)
            self.misses += 1
            return None
        except Exception as e:  # a damaged entry: say which, rather than distil from garbage
            raise SegKDError(f"{path}: unreadable teacher-cache entry ({e}); delete it") from None
        self.hits += 1
        return logits

    def put(self, key: str, logits: dict[str, torch.Tensor]) -> None:
        path = self._path(key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        torch.save({k: v.detach().cpu() for k, v in logits.items()}, tmp)
        os.replace(tmp, path)
