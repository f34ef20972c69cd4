"""Reproducible, resumable data loading.

Each sample's augmentation is seeded from ``(seed, epoch, index)``, not from a worker's running RNG, so the
batches are a pure function of the config: the same for any number of workers, and the same after a
resume in the middle of an epoch (the sampler skips the samples already seen).

With unlabelled images (``data.unlabeled_list``, SSLD), :class:`MixedSampler` fills each batch with its labelled
images first, in the order :class:`ResumableSampler` gives them, then the unlabelled ones, from a stream of the pool's
own seeded permutations: both parts are a pure function of (seed, epoch, batch), so a resume stays bitwise.

A batch is assembled by :func:`collate_crops` from the augmented numpy crops: images normalised straight into the
batch, labels kept uint8 (the trainer makes them int64 on the device). The values the model sees are bitwise those
of per-sample ToTensor, Normalize and torch's default collate (tests/test_loader_levers.py); the bytes a worker
writes and the main process maps are fewer (docs/BENCHMARKS.md, "Loader vs semseg").
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Iterator, Sequence
from typing import Callable, Optional

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, DistributedSampler, Sampler, get_worker_info

from data.transforms import normalize, normalize_into, set_opencv_threads


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


class MixedSampler(Sampler):
    """Batches of ``labeled`` labelled then ``unlabeled`` unlabelled keys, for a dataset whose first ``n_labeled``
    indices are the labelled images and the next ``n_unlabeled`` the unlabelled pool (a ``ConcatDataset``).

    The labelled part is :class:`ResumableSampler`'s order (DistributedSampler's permutation of epoch e, this rank's
    share, drop_last), ``labeled`` per batch: an epoch is one pass over the labelled images. The unlabelled part is
    a stream of its own, independent of the epochs: pass p of the pool is a permutation seeded from
    (seed, p, -1) (an index no sample has), this rank taking every ``num_replicas``-th element; batch b of the run
    takes the stream's positions b·u .. b·u + u - 1. Unlabelled keys are ``(p, n_labeled + j)``, so each pass
    augments an image afresh (:class:`SeededDataset`). ``set_epoch(epoch, skip)`` as ResumableSampler's (``skip`` in
    samples, whole batches): where the stream stands follows from (epoch, skip), so nothing else is saved."""

    def __init__(self, n_labeled: int, n_unlabeled: int, labeled: int, unlabeled: int, num_replicas: int,
                 rank: int, seed: int):
        self.order = DistributedSampler(range(n_labeled), num_replicas=num_replicas, rank=rank, shuffle=True,
                                        seed=seed, drop_last=True)
        self.n_labeled, self.n_unlabeled = n_labeled, n_unlabeled
        self.labeled, self.unlabeled = labeled, unlabeled
        self.batch = labeled + unlabeled
        self.num_replicas, self.rank, self.seed = num_replicas, rank, seed
        self.per_pass = n_unlabeled // num_replicas  # this rank's images of one pass over the pool
        if self.order.num_samples < labeled or self.per_pass < 1:
            raise ValueError("too few labelled or unlabelled images for one batch per process")
        self.batches = self.order.num_samples // labeled  # per epoch
        self.epoch, self.skip = 0, 0
        self._perm: tuple[int, list[int]] = (-1, [])

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        if skip % self.batch:
            raise ValueError(f"skip={skip} is not a whole number of batches of {self.batch}")
        self.epoch, self.skip = epoch, skip

    def __len__(self) -> int:
        return self.batches * self.batch - self.skip

    def __iter__(self) -> Iterator[tuple[int, int]]:
        self.order.set_epoch(self.epoch)
        order = list(self.order)
        keys = []
        for b in range(self.skip // self.batch, self.batches):
            keys += [(self.epoch, i) for i in order[b * self.labeled:(b + 1) * self.labeled]]
            start = (self.epoch * self.batches + b) * self.unlabeled
            keys += [self.pool_key(p) for p in range(start, start + self.unlabeled)]
        return iter(keys)

    def pool_key(self, position: int) -> tuple[int, int]:
        """The key of this rank's unlabelled stream at ``position``: (pass, n_labeled + image index)."""
        rounds, offset = divmod(position, self.per_pass)
        if self._perm[0] != rounds:
            g = torch.Generator().manual_seed(sample_seed(self.seed, rounds, -1))
            self._perm = (rounds, torch.randperm(self.n_unlabeled, generator=g).tolist())
        return rounds, self.n_labeled + self._perm[1][self.rank + self.num_replicas * offset]


def _batch_tensor(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised tensor for a batch; in a loader worker in shared memory, as torch's default collate
    allocates it, so sending it to the main process copies nothing."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    return torch.empty(0, dtype=dtype).set_(torch.UntypedStorage._new_shared(nbytes), 0, shape)


def collate_crops(samples: Sequence[tuple[np.ndarray, np.ndarray]],
                  label_dtype: torch.dtype = torch.uint8) -> tuple[torch.Tensor, torch.Tensor]:
    """The training loader's ``collate_fn``: B augmented crops (HxWx3 image, float32 or uint8; HxW uint8 label, as
    ``build_train_transform(..., to_tensor=False)`` leaves them) -> (images Bx3xHxW, labels BxHxW ``label_dtype``).

    A float32 crop is normalised straight into its slot of the batch (``normalize_into``); a uint8 crop
    (``train.uint8_batches``) is copied into a uint8 batch that the trainer normalises on the device. Labels stay
    uint8 by default, an eighth of int64's bytes; the trainer converts them on the device (``.long()``, exact). One
    pass over each crop, where per-sample ToTensor, Normalize and torch's stack took four."""
    first_image, first_label = samples[0]
    h, w = first_label.shape
    uint8 = first_image.dtype == np.uint8
    images = _batch_tensor((len(samples), 3, h, w), torch.uint8 if uint8 else torch.float32)
    labels = _batch_tensor((len(samples), h, w), label_dtype)
    images_np, labels_np = images.numpy(), labels.numpy()
    for i, (image, label) in enumerate(samples):
        if uint8:
            images_np[i] = image.transpose(2, 0, 1)
        else:
            normalize_into(images_np[i], image)
        labels_np[i] = label
    return images, labels


def batch_to_device(images: torch.Tensor, labels: torch.Tensor,
                    device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A loader batch as the model takes it, on ``device``: images Bx3xHxW float32 normalised (a uint8 batch,
    ``train.uint8_batches``, is normalised here), labels BxHxW int64 (the uint8 labels of :func:`collate_crops`
    converted here, exactly). The trainer's first step; the loader benchmark times it with the loader."""
    images = images.to(device, non_blocking=True)
    labels = labels.to(device, non_blocking=True).long()
    if images.dtype == torch.uint8:
        images = normalize(images)
    return images, labels


def build_train_loader(
    dataset: Dataset, batch_size: int, workers: int, seed: int, rank: int, world_size: int, pin_memory: bool,
    collate_fn: Optional[Callable] = None, unlabeled: Optional[Dataset] = None, unlabeled_per_batch: int = 0,
    opencv_threads: int = 0,
) -> tuple[DataLoader, ResumableSampler | MixedSampler]:
    """``batch_size`` is per process. Incomplete last batches are dropped (BN needs >1 sample). ``collate_fn``:
    torch's default (the dataset's samples are tensors), or :func:`collate_crops` (they are numpy crops).
    ``unlabeled`` (a pool of unlabelled images): each batch's last ``unlabeled_per_batch`` samples come from it
    (:class:`MixedSampler`); without it the loader is the labelled one, unchanged."""
    if unlabeled is None:
        sampler = ResumableSampler(dataset, world_size, rank, seed)
    else:
        sampler = MixedSampler(len(dataset), len(unlabeled), batch_size - unlabeled_per_batch, unlabeled_per_batch,
                               world_size, rank, seed)
        dataset = ConcatDataset([dataset, unlabeled])
    loader = DataLoader(
        SeededDataset(dataset, seed), batch_size=batch_size, sampler=sampler, num_workers=workers,
        pin_memory=pin_memory, drop_last=True, persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None, collate_fn=collate_fn,
        # OpenCV's threads in each worker (data.opencv_threads; 0: one, the workers are the parallelism)
        worker_init_fn=functools.partial(set_opencv_threads, opencv_threads),
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
