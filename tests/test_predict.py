"""predict.py: test.py's protocol on unlabelled images; a folder with an unreadable file writes the others, names
the bad one and exits 1; nothing is overwritten without --overwrite, and a bad config or checkpoint exits 2 before
anything is written."""

import os

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import predict
from engine.inference import predict as predict_map
from model.build import model_from_checkpoint
from tests.test_export import tiny_checkpoint

CONFIG = "config/synthetic/pspnet18_kd.yaml"
PROTOCOL = ["data.classes=2", "test.base_size=48", "test.crop_size=33", "test.scales=[0.75,1.0]", "test.flip=true"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "final.pth"))


def make_images(folder, sizes=((33, 45), (40, 30))):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate(sizes):
        paths.append(os.path.join(folder, f"img{i}.jpg" if i else f"img{i}.png"))
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(paths[-1])
    return paths


def run(args, ckpt):
    return predict.main(["--config", CONFIG, *args, f"test.checkpoint={ckpt}", *PROTOCOL])


def test_folder_with_an_unreadable_file(tmp_path, ckpt, capsys):
    images = make_images(str(tmp_path / "in"))
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG not really")
    out = str(tmp_path / "out")
    assert run(["--out", out, str(tmp_path / "in")], ckpt) == 1
    err = capsys.readouterr().err
    assert f"error: {tmp_path / 'in' / 'broken.png'}: cannot read image" in err
    assert sorted(os.listdir(out)) == ["img0.png", "img0_overlay.png", "img1.png", "img1_overlay.png"]
    model, _ = model_from_checkpoint(ckpt, 2)
    for path in images:
        stem = os.path.splitext(os.path.basename(path))[0]
        mask = cv2.imread(os.path.join(out, stem + ".png"), cv2.IMREAD_UNCHANGED)
        image = np.asarray(Image.open(path).convert("RGB"))
        want = predict_map(model.eval(), image, 2, 48, 33, [0.75, 1.0], True, 2 / 3, torch.device("cpu"))
        assert mask.dtype == np.uint8 and np.array_equal(mask, want)  # the protocol's overrides were applied
        colour = np.asarray(Image.open(os.path.join(out, stem + "_overlay.png")))
        assert np.array_equal(colour, predict.overlay(image, mask))


def test_nothing_is_overwritten_without_the_flag(tmp_path, ckpt, capsys):
    image = make_images(str(tmp_path / "in"), sizes=((33, 40),))[0]
    out = tmp_path / "out"
    out.mkdir()
    (out / "img0_overlay.png").write_bytes(b"mine")
    assert run(["--out", str(out), image], ckpt) == 2
    assert f"{out / 'img0_overlay.png'}: already exists" in capsys.readouterr().err
    assert sorted(os.listdir(out)) == ["img0_overlay.png"] and (out / "img0_overlay.png").read_bytes() == b"mine"
    assert run(["--out", str(out), image, "--overwrite"], ckpt) == 0
    assert sorted(os.listdir(out)) == ["img0.png", "img0_overlay.png"]
    assert (out / "img0_overlay.png").read_bytes() != b"mine"


def test_refusals_before_predicting(tmp_path, ckpt, capsys):
    first = make_images(str(tmp_path / "a"), sizes=((33, 40),))[0]
    second = make_images(str(tmp_path / "b"), sizes=((33, 40),))[0]  # the same name in another folder
    out = str(tmp_path / "out")
    assert run(["--out", out, first, second], ckpt) == 2
    assert "would both write" in capsys.readouterr().err
    assert run(["--out", str(tmp_path / "a"), first, "--overwrite"], ckpt) == 2  # img0.png is the input itself
    assert "would replace an input image" in capsys.readouterr().err
    assert run(["--out", out, first], str(tmp_path / "missing.pth")) == 2
    assert "missing.pth: checkpoint not found" in capsys.readouterr().err
    assert predict.main(["--config", CONFIG, "--out", out, first, f"test.checkpoint={ckpt}", "data.classes=3"]) == 2
    assert "data.classes=3" in capsys.readouterr().err
    assert not os.path.exists(out)


def test_overlay_blends_the_voc_colour():
    image = np.zeros((1, 2, 3), dtype=np.uint8)
    image[0, 1] = 200
    pred = np.array([[1, 0]], dtype=np.uint8)
    # class 1 is VOC's (128, 0, 0); class 0 is black
    assert predict.overlay(image, pred, 0.5).tolist() == [[[64, 0, 0], [100, 100, 100]]]
