"""The fast tier's weight initialisation: Kaiming's scale, drawn from a pool instead of the generator.

A quarter of the fast tier's CPU time went into drawing initial weights: every ``nn.Conv2d`` draws
``kaiming_uniform_`` and torchvision's ResNet then redraws it with ``kaiming_normal_``, for each of the hundreds of
R50/R101 networks the fast tests build (profile and timings: docs/results/LOG.md, 2026-12-07, sixth session). What
those tests check (key maps, shapes, one implementation against another, error lines) needs weights that are
random, seed-dependent and of a sane scale, not torch's exact draws. So :func:`patched` replaces both initialisers
with a copy from a fixed pool of standard normals at an offset drawn from torch's generator, scaled to the standard
deviation Kaiming's formula gives. The same seed gives the same weights, another seed other weights.

tests/conftest.py applies it to the tests that are not marked ``slow`` only: slow tests train and start processes,
and their in-process networks must be initialised exactly as train.py initialises them.
"""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
from torch.nn import init

POOL_SIZE = 1 << 25  # 128 MB of float32 per process: the largest single weight (R50's PSP conv) is 18.9M values
_pool: list = []


def _standard_normals() -> torch.Tensor:
    if not _pool:
        _pool.append(torch.randn(POOL_SIZE, generator=torch.Generator().manual_seed(20261207)))
    return _pool[0]


def _fill(tensor: torch.Tensor, std: float) -> torch.Tensor:
    pool, n = _standard_normals(), tensor.numel()
    if n > pool.numel():
        with torch.no_grad():
            return tensor.normal_(0.0, std)
    offset = int(torch.randint(0, pool.numel() - n + 1, (1,)))
    with torch.no_grad():
        tensor.copy_(pool[offset:offset + n].view(tensor.shape)).mul_(std)
    return tensor


def _kaiming(plain):
    def draw(tensor, a=0, mode="fan_in", nonlinearity="leaky_relu", generator=None):
        if generator is not None or tensor.device.type != "cpu" or tensor.numel() == 0:
            return plain(tensor, a, mode, nonlinearity, generator)
        fan = init._calculate_correct_fan(tensor, mode)
        return _fill(tensor, init.calculate_gain(nonlinearity, a) / math.sqrt(fan))
    draw.plain = plain
    return draw


@contextlib.contextmanager
def patched():
    """Inside, ``torch.nn.init.kaiming_uniform_`` and ``kaiming_normal_`` (as every layer looks them up) copy from
    the pool; calls with their own ``generator`` or on another device go to torch's own."""
    with pytest.MonkeyPatch.context() as mp:
        for name in ("kaiming_uniform_", "kaiming_normal_"):
            mp.setattr(init, name, _kaiming(getattr(init, name)))
        yield
