"""OpenCV's thread pool is off in every training DataLoader worker and in the main process's transforms
(``cv2.setNumThreads(0)``, data/transforms.py:opencv_single_thread), so 32 workers on an 8-GPU node do not each
run every resize on every core."""

import cv2
import pytest
import torch
from torch.utils.data import Dataset

from data.loader import build_train_loader
from data.transforms import build_train_transform
from engine.preemption import shield_workers


class OpenCVThreads(Dataset):
    """Each sample is the OpenCV thread count of the process that loads it."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor(cv2.getNumThreads())


@pytest.fixture
def many_opencv_threads():
    """The main process with a pool of 4 OpenCV threads, which a forked worker would inherit."""
    before = cv2.getNumThreads()
    cv2.setNumThreads(4)
    yield
    cv2.setNumThreads(before)


@pytest.mark.slow  # starts DataLoader worker processes
@pytest.mark.parametrize("shielded", [False, True])
def test_every_loader_worker_runs_opencv_on_one_thread(many_opencv_threads, shielded):
    loader, _ = build_train_loader(OpenCVThreads(), batch_size=2, workers=2, seed=0, rank=0, world_size=1,
                                   pin_memory=False)
    if shielded:
        shield_workers(loader)  # as the trainer does: its worker_init_fn must still run ours
    assert cv2.getNumThreads() == 4
    counts = torch.cat(list(loader)).tolist()
    assert counts == [1, 1, 1, 1]  # getNumThreads() after setNumThreads(0) is 1
    assert cv2.getNumThreads() == 4  # the workers' setting, not the main process's


def test_building_the_train_transform_turns_the_main_process_pool_off(many_opencv_threads):
    build_train_transform(65)
    assert cv2.getNumThreads() == 1
