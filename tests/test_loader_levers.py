"""The loader's levers change no number the model sees (issue 41.7): OpenCV decodes plain JPEGs to PIL's pixels and
still refuses a truncated file in one line; the label check gives the histogram's verdicts; batches assembled by
``collate_crops`` (normalised into the batch, uint8 labels made int64 by ``batch_to_device``) are bitwise the
per-sample ToTensor + Normalize + default collate batches. And the loader benchmark's semseg comparison runs."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import default_collate

from data.dataset import SegDataset, check_label, plain_jpeg, read_image
from data.loader import batch_to_device, build_train_loader, collate_crops
from data.transforms import build_train_transform, normalize, normalize_into
from tests.conftest import TINY_CLASSES
from tools.loader_bench import check_label_bincount, format_loader, run_loader_benchmark
from util.config import load_config
from util.errors import SegKDError


def _photo(h, w, seed=0):
    rng = np.random.default_rng(seed)
    ramp = (np.linspace(0, 200, w, dtype=np.float32)[None, :, None]
            + np.linspace(0, 50, h, dtype=np.float32)[:, None, None])
    return np.clip(ramp + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)


JPEGS = [  # (height, width, PIL mode, save options): subsamplings, progressive, optimised tables, grey, odd sizes
    (375, 500, "RGB", {"quality": 90}), (333, 499, "RGB", {"quality": 75, "subsampling": 0}),
    (17, 23, "RGB", {"quality": 95, "subsampling": 1}), (500, 375, "RGB", {"quality": 50, "progressive": True}),
    (64, 65, "RGB", {"quality": 90, "optimize": True}), (1, 1, "RGB", {}), (99, 101, "L", {"quality": 80}),
]


@pytest.mark.parametrize("h, w, mode, options", JPEGS)
def test_opencv_decodes_plain_jpegs_to_pils_pixels(tmp_path, h, w, mode, options):
    path = tmp_path / "x.jpg"
    Image.fromarray(_photo(h, w)).convert(mode).save(path, "JPEG", **options)
    assert plain_jpeg(path.read_bytes())  # the OpenCV path is the one tested
    with Image.open(path) as image:
        expected = np.asarray(image.convert("RGB"))
    out = read_image(str(path))
    assert out.dtype == np.uint8 and out.shape == (h, w, 3)
    np.testing.assert_array_equal(out, expected)


def test_exif_orientation_is_ignored_as_pil_does(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90": OpenCV's IMREAD_COLOR would turn the image, PIL does not
    Image.fromarray(_photo(30, 50)).save(tmp_path / "o.jpg", quality=90, exif=exif)
    with Image.open(tmp_path / "o.jpg") as image:
        np.testing.assert_array_equal(read_image(str(tmp_path / "o.jpg")), np.asarray(image.convert("RGB")))


def test_other_files_go_through_pil(tmp_path):
    rgb = _photo(20, 30)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=90)  # OpenCV converts CMYK otherwise
    Image.fromarray(rgb).save(tmp_path / "x.png")
    Image.fromarray(rgb).save(tmp_path / "junk.jpg", quality=90)
    with open(tmp_path / "junk.jpg", "ab") as f:
        f.write(b"\0\0trailing bytes")
    for name in ("cmyk.jpg", "x.png", "junk.jpg"):
        path = tmp_path / name
        assert not plain_jpeg(path.read_bytes()), name
        with Image.open(path) as image:
            np.testing.assert_array_equal(read_image(str(path)), np.asarray(image.convert("RGB")))


@pytest.mark.parametrize("keep", [0.5, 0.9, -2])
def test_truncated_jpeg_is_one_line_naming_the_file(tmp_path, keep):
    Image.fromarray(_photo(120, 160)).save(tmp_path / "full.jpg", quality=90)
    data = (tmp_path / "full.jpg").read_bytes()
    cut = data[: int(len(data) * keep)] if keep > 0 else data[:keep]  # -2: only the end marker missing
    (tmp_path / "cut.jpg").write_bytes(cut)
    assert not plain_jpeg(cut)  # never OpenCV, which may return a half-grey image for it
    with pytest.raises(SegKDError, match=r"cut\.jpg: cannot read image \(.*truncated") as err:
        read_image(str(tmp_path / "cut.jpg"))
    assert "\n" not in str(err.value)


def test_label_check_gives_the_histograms_verdicts():
    rng = np.random.default_rng(0)
    for trial in range(300):
        classes = int(rng.integers(2, 30))
        ignore = int(rng.choice([255, 0, classes - 1, classes, 254, -1, 300]))
        label = rng.integers(0, classes, (7, 9)).astype(np.uint8)
        if trial % 2:
            label.flat[rng.integers(0, label.size, 3)] = rng.integers(0, 256, 3)
        try:
            check_label_bincount(label, classes, ignore, "x.png")
            expected = None
        except ValueError:
            expected = "bad"
        try:
            check_label(label, classes, ignore, "x.png")
            got = None
        except SegKDError:
            got = "bad"
        assert got == expected, (classes, ignore, label)


def test_normalize_into_is_normalize_bitwise():
    rng = np.random.default_rng(0)
    big = rng.uniform(-5, 260, (40, 50, 3)).astype(np.float32)
    for image in (big[3:30, 5:40], big.astype(np.uint8)[:20, :20], big[::2, ::-1]):  # views with odd strides
        out = np.empty((3, *image.shape[:2]), np.float32)
        normalize_into(out, image)
        expected = normalize(torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))))
        assert torch.equal(torch.from_numpy(out), expected)


@pytest.mark.parametrize("uint8", [False, True])
def test_collated_batches_are_the_per_sample_batches(tiny_data, uint8):
    """What the model sees: batch_to_device of the one-pass batch equals that of the old per-sample batch."""
    args = (65, (0.5, 2.0), (-10, 10), 255)
    old = SegDataset(tiny_data, "list/train_aug.txt", TINY_CLASSES, 255, build_train_transform(*args, uint8=uint8))
    new = SegDataset(tiny_data, "list/train_aug.txt", TINY_CLASSES, 255,
                     build_train_transform(*args, uint8=uint8, to_tensor=False), to_tensor=False)
    old_loader, old_sampler = build_train_loader(old, 4, 0, 3, 0, 1, False)
    new_loader, new_sampler = build_train_loader(new, 4, 0, 3, 0, 1, False, collate_fn=collate_crops)
    old_sampler.set_epoch(1)
    new_sampler.set_epoch(1)
    cpu = torch.device("cpu")
    for (oi, ol), (ni, nl) in zip(old_loader, new_loader):
        assert nl.dtype == torch.uint8 and ni.dtype == (torch.uint8 if uint8 else torch.float32)
        assert ol.dtype == torch.int64
        oi, ol = batch_to_device(oi, ol, cpu)
        ni, nl = batch_to_device(ni, nl, cpu)
        assert nl.dtype == torch.int64 and ni.dtype == torch.float32
        assert torch.equal(oi, ni) and torch.equal(ol, nl)


def test_collate_in_a_worker_allocates_shared_memory(monkeypatch):
    import data.loader as loader_module

    monkeypatch.setattr(loader_module, "get_worker_info", lambda: object())  # as inside a DataLoader worker
    image = np.full((5, 6, 3), 7, np.float32)
    images, labels = collate_crops([(image, np.ones((5, 6), np.uint8))] * 2)
    assert images.is_shared() and labels.is_shared()
    assert images.shape == (2, 3, 5, 6) and labels.shape == (2, 5, 6)
    assert torch.equal(images, default_collate([normalize(torch.from_numpy(image.transpose(2, 0, 1).copy()))] * 2))


def test_loader_benchmark_runs_both_pipelines_on_tiny_data(tmp_path):
    cfg = load_config("config/voc2012/pspnet50_teacher.yaml", ["train.crop_size=65", "train.batch_size=2"])
    result = run_loader_benchmark(cfg, [0], batches=1, repeats=2, levers=True, images=3, root=str(tmp_path / "d"))
    rows = {r["pipeline"]: r for r in result["rows"]}
    assert "semseg" in rows and any(name.startswith("segkd (default") for name in rows)
    assert len(rows) == 7 and all(r["workers"] == 0 and len(r["cpu_all"]) == 2 for r in rows.values())
    for metric in ("cpu", "cpu_loader", "wall"):
        assert all(r[metric] > 0 and r[f"{metric}_ratio"] > 0 for r in rows.values())
        assert rows["semseg"][f"{metric}_ratio"] == 1.0
    table = format_loader(result)
    assert "| semseg | " in table and "(1.00x)" in table
