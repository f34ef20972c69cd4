"""The generated benchmark's CPU tier (--preset cpu): deterministic, colour not predictive of class, VOC-loadable."""

import json
import os

import numpy as np
import pytest

from data.dataset import SegDataset, read_image, read_label
from tests.test_synthetic import _files
from tools.synthetic import generate, main
from tools.synthetic_cpu import CPU_NAMES, render_cpu
from util.errors import SegKDError

ARGS = {"train": 6, "val": 3, "classes": 8, "seed": 0, "preset": "cpu"}


@pytest.fixture(scope="module")
def cpu_set(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("cpu") / "a")
    generate(root, workers=1, **ARGS)
    return root


@pytest.mark.slow  # a process pool
def test_same_arguments_same_bytes_any_worker_count(cpu_set, tmp_path):
    again = str(tmp_path / "b")
    generate(again, workers=2, **ARGS)
    assert _files(again) == _files(cpu_set)
    other = str(tmp_path / "c")
    generate(other, workers=1, **{**ARGS, "seed": 1})
    assert _files(other)["JPEGImages/train_000000.jpg"] != _files(cpu_set)["JPEGImages/train_000000.jpg"]


def test_layout_names_and_record(cpu_set):
    with open(os.path.join(cpu_set, "synthetic.json")) as f:
        assert json.load(f) == {"format": 1, "train": 6, "val": 3, "classes": 8, "seed": 0, "preset": "cpu"}
    with open(os.path.join(cpu_set, "names.txt")) as f:
        assert f.read().splitlines() == CPU_NAMES
    image = read_image(os.path.join(cpu_set, "JPEGImages", "val_000001.jpg"))
    label = read_label(os.path.join(cpu_set, "SegmentationClassAug", "val_000001.png"))
    assert image.shape == (96, 96, 3) and label.shape == (96, 96)
    assert set(np.unique(label)) <= set(range(8)) | {255}


def test_loads_through_the_dataset_class(cpu_set):
    ds = SegDataset(cpu_set, "list/train_aug.txt", classes=8)
    image, label = ds[0]
    assert tuple(image.shape) == (3, 96, 96) and tuple(label.shape) == (96, 96)
    assert len(ds) == 6


def test_every_class_appears_and_colour_does_not_tell_it():
    """Per-class mean colour of foreground pixels over 600 scenes: every class within a few levels of the
    mean of all foreground pixels (a class drawn in its own colour would be ~100 levels away)."""
    sums, counts = np.zeros((8, 3)), np.zeros(8)
    for i in range(600):
        image, label = render_cpu(0, 0, i, 8)
        for c in range(1, 8):
            mask = label == c
            sums[c] += image[mask].sum(0)
            counts[c] += mask.sum()
    assert (counts[1:] > 50000).all(), counts  # every class is there, in quantity
    means = sums[1:] / counts[1:, None]
    overall = sums[1:].sum(0) / counts[1:].sum()
    assert np.abs(means - overall).max() < 12, means.round(1)


def test_classes_subset_and_bad_arguments(tmp_path):
    _, label = render_cpu(0, 0, 5, 3)
    assert set(np.unique(label)) <= {0, 1, 2, 255}
    with pytest.raises(SegKDError, match="--classes: expected 2..8 for --preset cpu"):
        generate(str(tmp_path / "x"), 4, 2, 9, 0, 1, "cpu")
    with pytest.raises(SystemExit) as stop:  # argparse: "invalid choice: 'gpu' (choose from 'voc', 'cpu')"
        main(["--out", str(tmp_path / "y"), "--preset", "gpu"])
    assert stop.value.code == 2 and not (tmp_path / "y").exists()


def test_a_set_of_the_other_tier_is_refused(cpu_set):
    with pytest.raises(SegKDError, match="holds a synthetic set made with"):
        generate(cpu_set, workers=1, **{**ARGS, "preset": "voc"})
