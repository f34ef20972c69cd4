"""engine/evaluate.py reads images with test.workers loader processes: same matrix as in-process reading,
every image once across processes, and a bad file in a worker is still a one-line error naming it."""

import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from engine.evaluate import evaluate
from model.pspnet import build_pspnet
from tests.conftest import REPO, TINY_CLASSES, tiny_overrides
from util.config import load_config
from util.distributed import DistInfo
from util.errors import SegKDError

BASELINE = os.path.join(REPO, "config/synthetic/pspnet18_baseline.yaml")
pytestmark = pytest.mark.slow  # every test starts test.workers loader processes


def info(rank=0, world_size=1):
    return DistInfo(rank=rank, local_rank=rank, world_size=world_size, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_pspnet(18, TINY_CLASSES).eval()


def matrix(model, root, tmp, *extra, rank=0, world_size=1, save=None):
    cfg = load_config(BASELINE, [*tiny_overrides(root, str(tmp)), *extra])
    return evaluate(model, cfg, info(rank, world_size), cfg.data.val_list, save, progress=False).mat.clone()


def test_workers_give_the_same_matrix(model, tiny_data, tmp_path):
    in_process = matrix(model, tiny_data, tmp_path, "test.workers=0")
    with_workers = matrix(model, tiny_data, tmp_path, "test.workers=2")
    assert in_process.sum() > 0
    assert torch.equal(in_process, with_workers)


def test_two_processes_share_the_images_without_duplicates(model, tiny_data, tmp_path):
    whole = matrix(model, tiny_data, tmp_path, "test.workers=2")
    saved = [tmp_path / "rank0", tmp_path / "rank1"]
    parts = [matrix(model, tiny_data, tmp_path, "test.workers=2", rank=r, world_size=2, save=str(saved[r]))
             for r in range(2)]
    assert torch.equal(parts[0] + parts[1], whole)  # what all_reduce sums under torchrun
    names = [sorted(os.listdir(d / "gray")) for d in saved]
    assert names[0] and names[1] and not set(names[0]) & set(names[1])
    with open(os.path.join(tiny_data, "list", "val.txt"), encoding="utf-8") as f:
        expected = sorted(os.path.splitext(os.path.basename(line.split()[0]))[0] + ".png" for line in f)
    assert sorted(names[0] + names[1]) == expected


def test_bad_label_in_a_worker_is_one_line(model, tiny_data, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(tiny_data, root)
    with open(root / "list" / "val.txt", encoding="utf-8") as f:
        label_rel = f.readlines()[-1].split()[1]
    label_path = root / label_rel
    label = np.array(Image.open(label_path))
    label[0, 0] = 9  # neither a class of 4 nor 255
    Image.fromarray(label, mode="L").save(label_path)
    with pytest.raises(SegKDError) as err:
        matrix(model, str(root), tmp_path / "run", "test.workers=2")
    message = str(err.value)
    assert "\n" not in message and "Traceback" not in message
    assert str(label_path) in message and "9" in message
