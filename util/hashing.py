"""Digest of a file's bytes, read in 1 MiB blocks (VOC archives are 2 GB; checkpoints hundreds of MB)."""

from __future__ import annotations

import hashlib


def file_hash(path: str, algorithm: str = "sha256") -> str:
    """Hex digest of ``path`` with a ``hashlib`` algorithm (``md5`` for published archive sums)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
