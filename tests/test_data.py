"""List parsing, image/label readers, label checks and the paired transforms (tiny inputs, no downloads)."""

import os
import random

import numpy as np
import pytest
import torch
from PIL import Image

from data.dataset import SegDataset, check_label, read_image, read_label, read_list
from data.loader import ResumableSampler
from data.palette import colorize, load_names, save_label_png, voc_palette
from data.transforms import (
    IMAGENET_MEAN,
    Crop,
    Normalize,
    RandomHorizontalFlip,
    ToTensor,
    build_train_transform,
    normalize,
)
from util.errors import SegKDError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write_pair(root, name, h=20, w=30, label=None):
    """A grey RGB PNG image and a palette label under root; returns its list line."""
    os.makedirs(os.path.join(root, "img"), exist_ok=True)
    os.makedirs(os.path.join(root, "lab"), exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 100, np.uint8)).save(os.path.join(root, "img", name + ".png"))
    save_label_png(os.path.join(root, "lab", name + ".png"), np.zeros((h, w), np.uint8) if label is None else label)
    return f"img/{name}.png lab/{name}.png"


def _write_list(root, text, name="list.txt"):
    with open(os.path.join(root, name), "w", newline="") as f:
        f.write(text)
    return name


def test_read_list_tolerates_crlf_and_blank_lines(tmp_path):
    root = str(tmp_path)
    lines = [_write_pair(root, "a"), _write_pair(root, "b")]
    name = _write_list(root, "\r\n" + lines[0] + "\r\n\r\n  \r\n" + lines[1] + "\r\n")
    samples = read_list(root, name)
    assert samples == [(os.path.join(root, "img", n + ".png"), os.path.join(root, "lab", n + ".png"))
                       for n in ("a", "b")]
    assert all(os.path.isabs(p) for pair in samples for p in pair)


def test_read_list_rejects_absolute_path_naming_file_and_line(tmp_path):
    root = str(tmp_path)
    good = _write_pair(root, "a")
    name = _write_list(root, good + "\n/etc/passwd lab/a.png\n")
    with pytest.raises(SegKDError, match=r"list\.txt:2: .*/etc/passwd"):
        read_list(root, name)


@pytest.mark.parametrize("line, pattern", [
    ("img/a.png", r"list\.txt:1: expected"),
    ("img/a.png lab/a.png extra", r"list\.txt:1: expected"),
    ("img/a.png lab/missing.png", r"list\.txt:1: file not found: .*missing\.png"),
    ("img/nope.png lab/a.png", r"list\.txt:1: file not found: .*nope\.png"),
])
def test_read_list_bad_lines(tmp_path, line, pattern):
    root = str(tmp_path)
    _write_pair(root, "a")
    with pytest.raises(SegKDError, match=pattern):
        read_list(root, _write_list(root, line + "\n"))


def test_read_list_missing_list_empty_list_missing_root(tmp_path):
    root = str(tmp_path)
    with pytest.raises(SegKDError, match=r"nothere\.txt: list file not found"):
        read_list(root, "nothere.txt")
    with pytest.raises(SegKDError, match=r"empty\.txt: list file has no samples"):
        read_list(root, _write_list(root, "\n \r\n", "empty.txt"))
    with pytest.raises(SegKDError, match=r"no_root: dataset root not found"):
        read_list(os.path.join(root, "no_root"), "list.txt")


def test_read_label_palette_returns_indices_not_colours(tmp_path):
    label = np.array([[0, 1, 15], [20, 255, 7]], np.uint8)
    path = str(tmp_path / "p.png")
    save_label_png(path, label)
    assert Image.open(path).mode == "P"
    out = read_label(path)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, label)


def test_read_label_grey_values_and_rgb_rejected(tmp_path):
    label = np.array([[0, 3], [255, 9]], np.uint8)
    Image.fromarray(label, mode="L").save(tmp_path / "l.png")
    np.testing.assert_array_equal(read_label(str(tmp_path / "l.png")), label)
    colorize(label).convert("RGB").save(tmp_path / "rgb.png")
    with pytest.raises(SegKDError, match=r"rgb\.png: .*index or palette PNGs"):
        read_label(str(tmp_path / "rgb.png"))


def test_read_image_rgb_order_and_truncated_file(tmp_path):
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 200  # pure red: a BGR mix-up would put it in channel 2
    Image.fromarray(rgb).save(tmp_path / "red.png")
    out = read_image(str(tmp_path / "red.png"))
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    assert out[..., 0].min() == 200 and out[..., 2].max() == 0
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
        tmp_path / "full.jpg", quality=90)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(SegKDError, match=r"cut\.jpg"):
        read_image(str(tmp_path / "cut.jpg"))


def test_check_label_names_file_and_bad_values():
    label = np.array([[0, 4, 21], [255, 30, 21]], np.uint8)
    with pytest.raises(SegKDError, match=r"x\.png: label values \[21, 30\] are outside 0\.\.20"):
        check_label(label, 21, 255, "x.png")
    check_label(label.clip(0, 20), 21, 255, "x.png")  # valid: must not raise
    with pytest.raises(SegKDError, match=r"\[255\]"):
        check_label(np.array([[0, 255]], np.uint8), 21, 254, "x.png")


def test_dataset_size_mismatch_and_bad_values(tmp_path):
    root = str(tmp_path)
    lines = [_write_pair(root, "ok"), _write_pair(root, "bad", label=np.full((20, 30), 9, np.uint8))]
    Image.fromarray(np.zeros((10, 30, 3), np.uint8)).save(os.path.join(root, "img", "small.png"))
    _write_pair(root, "small_label")
    lines.append("img/small.png lab/small_label.png")
    ds = SegDataset(root, _write_list(root, "\n".join(lines)), classes=5)
    image, label = ds[0]
    assert image.shape == (3, 20, 30) and image.dtype == torch.float32 and label.dtype == torch.int64
    with pytest.raises(SegKDError, match=r"bad\.png: label values \[9\]"):
        ds[1]
    with pytest.raises(SegKDError, match=r"small\.png is 30x10 but its label .*small_label\.png is 30x20"):
        ds[2]


def test_train_transform_never_invents_label_values():
    rng = np.random.default_rng(0)
    label = np.zeros((48, 64), np.uint8)
    label[5:30, 10:40], label[20:45, 30:60], label[::7, ::5] = 3, 7, 255
    image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    transform = build_train_transform((40, 56), scale=(0.5, 2.0), rotate=(-10, 10))
    random.seed(123)
    seen = set()
    for _ in range(200):
        out_image, out_label = transform(image, label)
        assert out_image.shape == (3, 40, 56) and out_label.shape == (40, 56)
        seen |= set(torch.unique(out_label).tolist())
    assert seen <= {0, 3, 7, 255}
    assert {0, 3, 7} <= seen  # the check above is not vacuous


def test_padding_only_adds_ignore():
    label = np.full((10, 12), 4, np.uint8)
    image = np.zeros((10, 12, 3), np.uint8)
    out_image, out_label = Crop(16, crop_type="center", ignore_label=255)(image, label)
    assert out_label.shape == (16, 16) and out_image.shape == (16, 16, 3)
    assert set(np.unique(out_label).tolist()) == {4, 255}
    assert (out_label == 4).sum() == 120  # every original pixel kept, the rest padding
    pad_pixel = out_image[0, 0]
    np.testing.assert_allclose(pad_pixel, np.round(IMAGENET_MEAN), atol=1)


def test_train_pipeline_pads_with_the_exact_mean():
    """The default (float) pipeline pads a small image with the exact ImageNet mean, which normalises to 0
    (a uint8 image would pad with the rounded mean (124, 116, 104): 0.3 to 0.5 grey levels off)."""
    image, label = np.full((12, 12, 3), 200, np.uint8), np.full((12, 12), 1, np.uint8)
    transform = build_train_transform(40, scale=(1.0, 1.0), rotate=(0.0, 0.0))
    random.seed(0)
    for _ in range(5):
        out_image, out_label = transform(image, label)
        padded = out_label == 255
        assert padded.sum() == 40 * 40 - 144
        assert out_image[:, padded].abs().max().item() == 0.0
        assert (out_image[:, ~padded] > 0.5).all()  # the image itself, 200 grey levels, is not zero


@pytest.mark.parametrize("size, crop_type", [(17, "rand"), ((9, 25), "rand"), ((31, 5), "center")])
def test_crop_shapes(size, crop_type):
    h, w = (size, size) if isinstance(size, int) else size
    image, label = np.zeros((20, 22, 3), np.uint8), np.zeros((20, 22), np.uint8)
    out_image, out_label = Crop(size, crop_type=crop_type)(image, label)
    assert out_image.shape == (h, w, 3) and out_label.shape == (h, w)


def test_flip_moves_image_and_label_together():
    # The image's red channel encodes the label, so after any flip they must still agree.
    label = np.random.default_rng(1).integers(0, 5, (9, 13)).astype(np.uint8)
    image = np.stack([label * 40, np.zeros_like(label), np.zeros_like(label)], axis=-1)
    flip = RandomHorizontalFlip(p=0.5)
    random.seed(0)
    flipped = 0
    for _ in range(20):
        out_image, out_label = flip(image, label)
        np.testing.assert_array_equal(out_image[..., 0], out_label * 40)
        flipped += not np.array_equal(out_label, label)
    assert 0 < flipped < 20
    np.testing.assert_array_equal(RandomHorizontalFlip(p=1.0)(image, label)[1], label[:, ::-1])


def test_to_tensor_keeps_0_255_and_normalize_values():
    image = np.zeros((2, 3, 3), np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 255, 0, 128
    tensor, label = ToTensor()(image, np.full((2, 3), 7, np.uint8))
    assert tensor.shape == (3, 2, 3) and float(tensor[0, 0, 0]) == 255.0 and label.dtype == torch.int64
    normed, _ = Normalize()(tensor, label)
    assert torch.equal(normalize(tensor[None])[0], normed)  # batched, as the trainer calls it
    expected = [(255 - 0.485 * 255) / (0.229 * 255), (0 - 0.456 * 255) / (0.224 * 255),
                (128 - 0.406 * 255) / (0.225 * 255)]
    torch.testing.assert_close(normed[:, 1, 2], torch.tensor(expected))
    assert float(tensor[0, 0, 0]) == 255.0  # the input tensor is not modified in place


def test_palette_and_names_files():
    palette = voc_palette()
    assert len(palette) == 768 and palette[3:6] == [128, 0, 0] and palette[255 * 3:] == [224, 224, 192]
    names = load_names(os.path.join(REPO, "data", "voc2012", "voc2012_names.txt"))
    assert len(names) == 21 and names[0] == "background" and names[-1] == "tvmonitor"
    with open(os.path.join(REPO, "data", "voc2012", "voc2012_colors.txt")) as f:
        colours = [[int(v) for v in line.split()] for line in f if line.strip()]
    assert colours == [palette[3 * i:3 * i + 3] for i in range(21)]


def test_sampler_reshuffles_every_epoch_reproducibly_and_shards_disjointly():
    data = list(range(40))
    order = {}
    for epoch in (0, 1):
        for rank in (0, 1):
            s = ResumableSampler(data, num_replicas=2, rank=rank, seed=3)
            s.set_epoch(epoch)
            order[epoch, rank] = [i for e, i in s]
            assert {e for e, _ in s} == {epoch}  # the epoch travels with the index (it seeds augmentation)
    assert order[0, 0] != order[1, 0]  # a new order each epoch
    assert sorted(order[0, 0] + order[0, 1]) == data  # the two ranks split the epoch without overlap
    again = ResumableSampler(data, num_replicas=2, rank=0, seed=3)
    again.set_epoch(1, skip=5)  # a resume 5 samples into epoch 1 continues the same order
    assert [i for _, i in again] == order[1, 0][5:]
    other_seed = ResumableSampler(data, num_replicas=2, rank=0, seed=4)
    other_seed.set_epoch(1)
    assert [i for _, i in other_seed] != order[1, 0]
