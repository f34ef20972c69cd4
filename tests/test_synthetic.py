"""The generated VOC stand-in: deterministic bytes, VOC's layout, VOC-like labels."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from data.dataset import SegDataset, read_label
from data.transforms import build_train_transform
from tools.synthetic import generate, main
from util.errors import SegKDError

ARGS = {"train": 6, "val": 3, "classes": 5, "seed": 0}


def _files(root):
    """{relative path: bytes} of every file under root."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("syn") / "a")
    generate(root, workers=1, **ARGS)
    return root


@pytest.mark.slow  # a process pool
def test_same_seed_same_bytes_any_worker_count(tiny, tmp_path):
    again = str(tmp_path / "b")
    generate(again, workers=2, **ARGS)
    assert _files(again) == _files(tiny)


def test_different_seed_differs(tiny, tmp_path):
    other = str(tmp_path / "c")
    generate(other, workers=1, **{**ARGS, "seed": 1})
    a, b = _files(tiny), _files(other)
    assert a.keys() == b.keys()
    assert a["JPEGImages/train_000000.jpg"] != b["JPEGImages/train_000000.jpg"]
    assert a["SegmentationClassAug/val_000002.png"] != b["SegmentationClassAug/val_000002.png"]


def test_layout_and_lists(tiny):
    with open(os.path.join(tiny, "list", "train_aug.txt")) as f:
        train = f.read().splitlines()
    with open(os.path.join(tiny, "ImageSets", "Segmentation", "val.txt")) as f:
        val_ids = f.read().splitlines()
    assert len(train) == 6 and len(val_ids) == 3
    assert train[0] == "JPEGImages/train_000000.jpg SegmentationClassAug/train_000000.png"
    for line in train:
        assert all(os.path.isfile(os.path.join(tiny, p)) for p in line.split())
    with open(os.path.join(tiny, "synthetic.json")) as f:
        record = json.load(f)
    assert {k: record[k] for k in ARGS} == ARGS


def test_labels_are_palette_pngs_with_void_bands(tiny):
    values = set()
    for name in sorted(os.listdir(os.path.join(tiny, "SegmentationClassAug"))):
        path = os.path.join(tiny, "SegmentationClassAug", name)
        image = Image.open(path)
        assert image.mode == "P"
        label = read_label(path)
        jpeg = Image.open(os.path.join(tiny, "JPEGImages", name.replace(".png", ".jpg")))
        assert jpeg.size == image.size and 400 <= max(image.size) <= 500
        assert (label == 255).any(), f"{name}: no void band"
        values |= set(np.unique(label).tolist())
    assert values <= set(range(ARGS["classes"])) | {255}
    assert len(values - {0, 255}) >= 2  # several foreground classes over 9 images


def test_void_band_separates_regions(tiny):
    # No two different classes touch: every class boundary runs through 255 (VOC's outlines).
    label = read_label(os.path.join(tiny, "SegmentationClassAug", "train_000000.png")).astype(int)
    for a, b in ((label[:, 1:], label[:, :-1]), (label[1:], label[:-1])):
        touching = (a != b) & (a != 255) & (b != 255)
        assert not touching.any()


def test_loads_through_segdataset_with_train_transform(tiny):
    ds = SegDataset(tiny, "list/train_aug.txt", classes=ARGS["classes"], transform=build_train_transform(65))
    assert len(ds) == 6
    image, label = ds[3]
    assert image.shape == (3, 65, 65) and image.dtype == torch.float32
    assert label.shape == (65, 65) and set(label.unique().tolist()) <= set(range(5)) | {255}


def test_refuses_other_arguments_in_existing_dir(tiny, tmp_path):
    with pytest.raises(SegKDError, match=r"synthetic set made with"):
        generate(tiny, workers=1, **{**ARGS, "seed": 5})
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(SegKDError, match=r"foreign: directory is not empty"):
        generate(str(foreign), workers=1, **ARGS)
    before = _files(tiny)
    generate(tiny, workers=1, **ARGS)  # same arguments: allowed, same bytes
    assert _files(tiny) == before


def test_cli_bad_classes_exits_2(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "x"), "--classes", "22", "--train", "1", "--val", "1"]) == 2
    assert "--classes" in capsys.readouterr().err
