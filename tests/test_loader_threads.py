"""OpenCV's thread pool is off in every training DataLoader worker and in the main process's transforms
(``cv2.setNumThreads(0)``, data/transforms.py:set_opencv_threads, ``data.opencv_threads``), so 32 workers on an
8-GPU node do not each run every resize on every core."""

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


@pytest.mark.slow  # starts DataLoader worker processes
def test_minus_one_leaves_opencvs_pool_as_runs_before_the_key(many_opencv_threads):
    """data.opencv_threads=-1: the workers keep the pool they inherit (OpenCV's default), as before 2026-12-07."""
    loader, _ = build_train_loader(OpenCVThreads(), batch_size=2, workers=1, seed=0, rank=0, world_size=1,
                                   pin_memory=False, opencv_threads=-1)
    assert torch.cat(list(loader)).tolist() == [4, 4, 4, 4]
    build_train_transform(65, opencv_threads=-1)
    assert cv2.getNumThreads() == 4


def test_a_run_config_without_the_key_trained_with_opencvs_pool():
    """A run folder written before data.opencv_threads existed augmented with OpenCV's default pool: resuming or
    extending it under the new default (0) is another experiment, named; with -1 it is the same one."""
    from engine.rundir import experiment_diff
    from util.config import flat_dict, load_config

    new = flat_dict(load_config(None))
    old = {k: v for k, v in new.items() if k != "data.opencv_threads"}
    assert experiment_diff(old, new) == "data.opencv_threads: -1 there, 0 now"
    assert experiment_diff(old, {**new, "data.opencv_threads": -1}) == ""


def test_the_key_refuses_below_minus_one():
    from util.config import load_config
    from util.errors import SegKDError

    with pytest.raises(SegKDError, match="data.opencv_threads"):
        load_config(None, ["data.opencv_threads=-2"])
