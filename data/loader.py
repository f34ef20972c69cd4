"""Reproducible, resumable data loading.

Each sample's augmentation is seeded from ``(seed, epoch, index)``, not from a worker's running RNG, so the
batches are a pure function of the config: the same for any number of workers, and the same after a
resume in the middle of an epoch (the sampler skips the samples already seen).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from data.transforms import opencv_single_thread


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed mixing the three numbers (SplitMix-style, stable across processes and runs)."""
    x = (seed * 1_000_003 + epoch) * 2_147_483_647 + index
    x = (x ^ (x >> 31)) * 0x9E3779B97F4A7C15 & 0xFFFFFFFFFFFFFFFF
    return (x ^ (x >> 29)) & 0xFFFFFFFF


class SeededDataset(Dataset):
    """Wraps a dataset so that ``ds[(epoch, i)]`` seeds ``random`` and ``numpy`` before loading sample i."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        s = sample_seed(self.seed, epoch, index)
        random.seed(s)
        np.random.seed(s)
        return self.dataset[index]


class ResumableSampler(DistributedSampler):
    """A DistributedSampler that yields ``(epoch, index)`` and can skip the first samples of an epoch."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int, shuffle: bool = True):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=True)
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        super().set_epoch(epoch)
        self.skip = skip

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = list(super().__iter__())[self.skip:]
        return iter([(self.epoch, i) for i in indices])

    def __len__(self) -> int:
        return self.num_samples - self.skip


def build_train_loader(
    dataset: Dataset, batch_size: int, workers: int, seed: int, rank: int, world_size: int, pin_memory: bool
) -> tuple[DataLoader, ResumableSampler]:
    """``batch_size`` is per process. Incomplete last batches are dropped (BN needs >1 sample)."""
    sampler = ResumableSampler(dataset, world_size, rank, seed)
    loader = DataLoader(
        SeededDataset(dataset, seed), batch_size=batch_size, sampler=sampler, num_workers=workers,
        pin_memory=pin_memory, drop_last=True, persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        worker_init_fn=opencv_single_thread,  # one OpenCV thread per worker: the workers are the parallelism
        # a private generator: creating an epoch's iterator must not draw from the global torch RNG, which
        # drives dropout and is restored on resume
        generator=torch.Generator().manual_seed(seed),
    )
    return loader, sampler


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) in this process."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(device: Optional[torch.device] = None) -> dict:
    """The main process's RNG states, in a form ``torch.load(weights_only=True)`` accepts. ``device``: the one the
    run trains on; of CUDA only its generator is saved (``cuda``: that state, ``cuda_index``: its index), never every
    visible GPU's, so a resume with fewer GPUs visible finds what it needs. A CPU run saves ``cuda: None``."""
    np_state = np.random.get_state()
    cuda = device is not None and device.type == "cuda"
    index = _cuda_index(device) if cuda else -1
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(index) if cuda else None,
        "cuda_index": index,
    }


def set_rng_state(state: dict, device: Optional[torch.device] = None) -> Optional[str]:
    """Restore :func:`rng_state`'s ``state`` on ``device`` (the one this run trains on). Returns None, or one line
    saying which random state could not carry over (a checkpoint of a GPU run resumed on a CPU, or the reverse): the
    Python, NumPy and CPU torch states always do. Also reads the older format, whose ``cuda`` is a list of every
    visible GPU's state: this device's entry is taken when the list has one."""
    random.setstate(tuple(state["python"][:1]) + (tuple(state["python"][1]),) + tuple(state["python"][2:]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    saved = state.get("cuda")
    if isinstance(saved, (list, tuple)):  # the older format: one state per GPU visible when it was saved
        index = _cuda_index(device) if device is not None and device.type == "cuda" else 0
        if saved and index >= len(saved):
            return (f"the checkpoint holds the CUDA random state of {len(saved)} GPU(s), none for cuda:{index}; "
                    "this GPU's dropout draws start from its seed")
        saved = saved[index] if saved else None
    on_cuda = device is not None and device.type == "cuda"
    if saved is None and on_cuda:
        return ("the checkpoint was saved by a CPU run: it holds no CUDA random state, so this GPU's dropout draws "
                "start from its seed")
    if saved is not None and not on_cuda:
        return ("the checkpoint was saved by a GPU run: its CUDA random state cannot carry over to a CPU run, so "
                "dropout draws differ from the interrupted run's")
    if saved is not None:
        torch.cuda.set_rng_state(saved, _cuda_index(device))
    return None


def _cuda_index(device: torch.device) -> int:
    """The index of a CUDA device (``cuda`` alone: the current one)."""
    return device.index if device.index is not None else torch.cuda.current_device()
