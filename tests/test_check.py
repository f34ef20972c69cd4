"""tools/check.py on a tiny fabricated dataset: clean, then with one problem at a time. The problem lines carry the
training dataset's own error messages (data/dataset.py's readers and check_label) after the list line."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from tools.check import check_dataset, format_report, main
from util.errors import SegKDError

IDS = ["a1", "a2", "a3", "b1"]  # a*: train, b1: val
SHAPE = (10, 14)  # H, W


def _write_sample(root: str, image_id: str, rng: np.random.Generator, shape=SHAPE) -> None:
    pixels = rng.integers(0, 255, (*shape, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(f"{root}/JPEGImages/{image_id}.jpg")
    label = rng.choice([0, 3, 20, 255], size=shape).astype(np.uint8)
    if image_id == "a2":  # one palette label, as VOC ships them
        image = Image.frombytes("P", shape[::-1], label.tobytes())
        image.putpalette([(i * 53) % 256 for i in range(768)])
        image.save(f"{root}/Labels/{image_id}.png")
    else:
        Image.fromarray(label).save(f"{root}/Labels/{image_id}.png")


@pytest.fixture
def dataset(tmp_path):
    root = str(tmp_path / "ds")
    for d in ("JPEGImages", "Labels", "list"):
        os.makedirs(os.path.join(root, d))
    rng = np.random.default_rng(0)
    for image_id in IDS:
        _write_sample(root, image_id, rng)
    for name, ids in (("train", IDS[:3]), ("val", IDS[3:])):
        with open(os.path.join(root, "list", name + ".txt"), "w") as f:
            f.writelines(f"JPEGImages/{i}.jpg Labels/{i}.png\n" for i in ids)
    config = tmp_path / "check.yaml"
    config.write_text(f"data:\n  root: {root}\n  train_list: list/train.txt\n  val_list: list/val.txt\n")
    return root, str(config)


def _run(config: str, capsys, *extra: str) -> tuple[int, str]:
    status = main(["--config", config, *extra])
    return status, capsys.readouterr().out


def test_clean_dataset_exits_0_with_statistics(dataset, capsys):
    root, config = dataset
    status, out = _run(config, capsys)
    assert status == 0, out
    assert out.rstrip().endswith("OK: no problems")
    train_row = next(line for line in out.splitlines() if line.startswith("train "))
    assert train_row.split()[1:3] == ["3", "0"] and "L:2 P:1" in train_row
    assert "most common HxW: 10x14: 3" in out
    report = check_dataset(root, {"train": "list/train.txt"}, classes=21, ignore_label=255)
    assert set(report.splits[0].label_values) == {0, 3, 20, 255}
    assert sum(report.splits[0].label_values.values()) == 3 * SHAPE[0] * SHAPE[1]


def _truncate(path: str) -> None:
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])


def _out_of_range(path: str) -> None:
    label = np.array(Image.open(path))
    label[0, 0], label[1, 1] = 21, 40
    Image.fromarray(label).save(path)


def _resize(path: str) -> None:
    Image.open(path).resize((SHAPE[1] + 2, SHAPE[0])).save(path)


def _to_rgb(path: str) -> None:
    Image.open(path).convert("RGB").save(path)


@pytest.mark.parametrize("damage, target, needle", [
    (os.remove, "JPEGImages/a3.jpg", "missing image"),
    (_truncate, "JPEGImages/a1.jpg", "cannot read image"),
    (_out_of_range, "Labels/b1.png", "label values [21, 40] are outside 0..20 and not ignore_label 255"),
    (_resize, "Labels/a2.png", "is 10x14 (HxW) but label"),
    (_to_rgb, "Labels/a1.png", "label has mode RGB"),
])
def test_each_problem_exits_1_naming_the_file(dataset, capsys, damage, target, needle):
    root, config = dataset
    damage(os.path.join(root, target))
    status, out = _run(config, capsys)
    assert status == 1
    lines = [line for line in out.splitlines() if needle in line]
    assert len(lines) == 1, out
    assert os.path.join(root, target) in lines[0]
    list_name = "val.txt" if "b1" in target else "train.txt"
    assert f"{list_name}:" in lines[0]
    assert out.rstrip().endswith("FAILED: 1 problem(s)")


def test_duplicates_and_malformed_lines_name_list_and_line(dataset, capsys):
    root, config = dataset
    with open(os.path.join(root, "list", "train.txt"), "a") as f:
        f.write("JPEGImages/a1.jpg Labels/a1.png\nJPEGImages/a2.jpg\n")
    status, out = _run(config, capsys)
    assert status == 1
    assert "train.txt:4: duplicate entry JPEGImages/a1.jpg (first on line 1)" in out
    assert "train.txt:5: expected 'image_path label_path', got 1 field(s)" in out


def test_problem_order_is_deterministic_and_max_problems_limits_output(dataset, capsys):
    root, config = dataset
    for image_id in IDS[:3]:
        os.remove(os.path.join(root, "Labels", image_id + ".png"))
    serial = format_report(check_dataset(root, {"train": "list/train.txt"}, 21, 255, workers=1))
    threaded = format_report(check_dataset(root, {"train": "list/train.txt"}, 21, 255, workers=3))
    assert serial == threaded
    assert [line.split(": ")[0].rsplit(":", 1)[1] for line in serial.splitlines() if "missing" in line] == [
        "1", "2", "3"]
    status, out = _run(config, capsys, "--max-problems", "2")
    assert status == 1
    assert "showing 2 of 3" in out and sum("missing label" in line for line in out.splitlines()) == 2


def test_overrides_and_bad_config(dataset, capsys, tmp_path):
    root, config = dataset
    status, out = _run(config, capsys, "data.val_list=list/train.txt")
    assert status == 0 and out.count("train.txt") == 2
    assert main(["--config", config, "data.root=" + str(tmp_path / "nowhere")]) == 2
    assert "nowhere: dataset root (data.root) not found" in capsys.readouterr().err
    assert main(["--config", config, "data.train_list=list/none.txt"]) == 1
    assert "none.txt: list file not found" in capsys.readouterr().out
    with pytest.raises(SegKDError, match="dataset root"):
        check_dataset(str(tmp_path / "nowhere"), {}, 21, 255)


def test_unlabeled_list_is_checked_without_opening_a_label(dataset, capsys, tmp_path, monkeypatch):
    """data.unlabeled_list (SSLD): its images are counted and decoded, a broken or duplicated one is a problem line
    naming the list, and no label file is read for them."""
    import tools.check as check

    root, config = dataset
    os.makedirs(os.path.join(root, "Unlabeled"))
    rng = np.random.default_rng(1)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (12, 9, 3), dtype=np.uint8)).save(f"{root}/Unlabeled/u{i}.jpg")
    with open(os.path.join(root, "list", "unlabeled.txt"), "w") as f:
        f.writelines(f"Unlabeled/u{i}.jpg\n" for i in range(3))
    extra = ("data.unlabeled_list=list/unlabeled.txt", "data.unlabeled_ratio=0.5")
    labels_read = []
    real = check.read_label
    monkeypatch.setattr(check, "read_label", lambda path: labels_read.append(path) or real(path))
    status, out = _run(config, capsys, *extra)
    assert status == 0, out
    row = next(line for line in out.splitlines() if line.startswith("unlabeled "))
    assert row.split()[1:3] == ["3", "0"]
    assert "unlabeled: images H min/mean/max 12/12.0/12" in out
    assert not any("Unlabeled" in path for path in labels_read) and len(labels_read) == len(IDS)

    with open(f"{root}/Unlabeled/u1.jpg", "r+b") as f:  # truncated: an unreadable image
        f.truncate(40)
    with open(os.path.join(root, "list", "unlabeled.txt"), "a") as f:
        f.write("Unlabeled/u0.jpg\n")
    status, out = _run(config, capsys, *extra)
    assert status == 1
    assert "unlabeled.txt: duplicate image Unlabeled/u0.jpg (entries 1 and 4)" in out
    assert any("u1.jpg" in line and "unlabeled.txt" in line for line in out.splitlines())

    with open(os.path.join(root, "list", "unlabeled.txt"), "w") as f:
        f.write("Unlabeled/u0.jpg Labels/a1.png\n")  # a labelled pair: the list's own rule
    status, out = _run(config, capsys, *extra)
    assert status == 1 and "expected one image path, got 2 fields" in out
