"""The dataset facts (data/datasets): the registry and the config key, VOC unchanged, the agreement of data.classes /
data.ignore_label / data.names with data.dataset, and each dataset's evaluation protocol as its papers run it."""

import glob
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from data.datasets import DATASETS, check_data_keys, class_names, get_dataset, palette_of
from data.palette import load_names, voc_palette
from data.transforms import IMAGENET_MEAN, IMAGENET_STD
from engine.inference import predict_probs, scaled_size
from tests.conftest import REPO
from tests.test_inference_reference import CLASSES, CROP, TinyNet, mmseg_reference
from util.config import DATASET_NAMES, load_config
from util.errors import SegKDError


def test_the_config_key_knows_every_registered_dataset():
    assert sorted(DATASET_NAMES) == sorted(DATASETS)
    assert load_config(None, []).data.dataset is None  # the default: what segkd always did
    with pytest.raises(SegKDError, match=r"data.dataset='coco': must be null or one of voc2012, cityscapes"):
        load_config(None, ["data.dataset=coco"])


@pytest.mark.parametrize("name, classes", [("voc2012", 21), ("cityscapes", 19), ("ade20k", 150), ("camvid", 11)])
def test_each_dataset_has_one_colour_per_class(name, classes):
    facts = get_dataset(name)
    assert facts.classes == classes == len(facts.colors()) == len(set(facts.names()))
    assert len(facts.palette()) == 768
    assert facts.palette()[:3 * classes] == [c for rgb in facts.colors() for c in rgb]


def test_voc_is_what_it_was():
    facts = get_dataset("voc2012")
    assert facts.names() == load_names(os.path.join(REPO, "data", "voc2012", "voc2012_names.txt"))
    assert facts.palette() == voc_palette(256)  # 255 still drawn (224, 224, 192)
    cfg = load_config(os.path.join(REPO, "config", "voc2012", "pspnet18_kd.yaml"))
    assert cfg.data.dataset == "voc2012" and class_names(cfg.data) == facts.names()
    plain = load_config(None, ["data.classes=3", "data.names=null"]).data  # no dataset: numbered, VOC's colours
    assert class_names(plain) == ["class_0", "class_1", "class_2"] and palette_of(plain) == voc_palette(256)


def test_names_null_takes_the_datasets_own():
    data = load_config(None, ["data.dataset=cityscapes", "data.classes=19", "data.names=null"]).data
    assert class_names(data)[:3] == ["road", "sidewalk", "building"]
    assert palette_of(data)[:3] == [128, 64, 128]


@pytest.mark.parametrize("overrides, message", [
    (["data.dataset=cityscapes", "data.names=null"],
     r"^data.classes=21 contradicts data.dataset=cityscapes \(19 classes\); set data.classes=19$"),
    (["data.dataset=cityscapes", "data.classes=19"],  # names: VOC's file by default
     r"^data.names=data/voc2012/voc2012_names.txt contradicts data.dataset=cityscapes: 21 names"),
    (["data.dataset=camvid", "data.classes=11", "data.names=null", "data.ignore_label=11"],
     r"^data.ignore_label=11 contradicts data.dataset=camvid \(ignore label 255\)$"),
])
def test_a_contradiction_is_one_line(overrides, message):
    data = load_config(None, overrides).data
    with pytest.raises(SegKDError, match=message) as err:
        check_data_keys(data)
    assert "\n" not in str(err.value)


def test_a_names_file_with_the_same_count_but_other_names_is_refused(tmp_path):
    names = get_dataset("camvid").names()
    (tmp_path / "names.txt").write_text("\n".join(names[1:] + names[:1]) + "\n")
    data = load_config(None, ["data.dataset=camvid", "data.classes=11", f"data.names={tmp_path / 'names.txt'}"]).data
    with pytest.raises(SegKDError, match="first difference at line 1"):
        check_data_keys(data)


def test_a_training_run_with_a_contradiction_writes_nothing(tmp_path):
    from train import main

    run = tmp_path / "run"
    assert main(["--config", "config/cityscapes/deeplabv3_r18_baseline.yaml", f"data.root={tmp_path}",
                 "data.classes=21", f"output.dir={run}"]) == 2
    assert not run.exists()


# ---------------------------------------------------------------- evaluation protocols


@pytest.mark.parametrize("name", sorted(DATASET_NAMES))
def test_every_config_of_a_dataset_evaluates_with_its_protocol(name):
    facts = get_dataset(name)
    paths = sorted(glob.glob(os.path.join(REPO, "config", name, "*.yaml")))
    assert paths
    for path in paths:
        cfg = load_config(path)
        assert cfg.data.dataset == name, path
        check_data_keys(cfg.data)
        got = {key: getattr(cfg.test, key) for key in facts.protocol}
        assert got == facts.protocol, path
        assert cfg.test.scales == [1.0] and cfg.test.flip is False, path  # the tables' single-scale numbers


@pytest.mark.parametrize("name, size, resized", [
    ("cityscapes", (1024, 2048), (1024, 2048)),  # the full image, as it is
    ("camvid", (360, 480), (360, 480)),
    ("ade20k", (384, 512), (512, 683)),  # short side to 512
    ("ade20k", (512, 2560), (410, 2048)),  # long side capped at 4 x 512 (mmseg's (2048, 512))
    ("voc2012", (375, 500), (384, 512)),  # semseg: long side 512, then 473 windows
])
def test_the_protocol_sizes(name, size, resized):
    p = get_dataset(name).protocol
    assert scaled_size(*size, p["base_size"], p["resize"]) == resized


def _whole_reference(model, image, align_corners):
    """CIRKD's eval.py ``predict_whole``: the image through the network as it is, logits zoomed to it (bilinear,
    the model's align_corners), softmax (its argmax is CIRKD's prediction)."""
    x = torch.from_numpy(image.transpose(2, 0, 1).copy()).float()
    x = ((x - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1))[None]
    with torch.no_grad():
        logits = F.interpolate(model(x)["out"], image.shape[:2], mode="bilinear", align_corners=align_corners)
    return F.softmax(logits, 1)[0]


@pytest.mark.parametrize("name, shape", [("cityscapes", (16, 32)), ("camvid", (24, 32))])
def test_cirkd_whole_image_protocol(name, shape):
    """Cityscapes and CamVid as CIRKD scores them, scaled down (base_size = the long side, as 2048 and 480 are for
    the real images): one forward of the whole image, no window, no resize, argmax of the zoomed logits."""
    p = get_dataset(name).protocol
    model = TinyNet(2).eval()
    image = np.random.default_rng(0).uniform(0, 255, (*shape, 3)).astype(np.float32)
    ours = predict_probs(model, image, CLASSES, max(shape), CROP, [1.0], False, 2 / 3, torch.device("cpu"),
                         mode=p["mode"], resize=p["resize"])
    ref = _whole_reference(model, image, align_corners=True)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    slid = predict_probs(model, image, CLASSES, max(shape), 9 * 4, [1.0], False, 2 / 3, torch.device("cpu"))
    assert (slid - ref).abs().max() > 1e-3  # sliding windows are another protocol


def test_ade20k_protocol_is_mmsegs():
    p = get_dataset("ade20k").protocol
    model = TinyNet(2).eval()
    model.align_corners = False
    image = np.random.default_rng(1).uniform(0, 255, (30, 45, 3)).astype(np.float32)
    short = 40  # stands for 512: the short side 30 -> 40
    ours = predict_probs(model, image, CLASSES, short, CROP, [1.0], False, 2 / 3, torch.device("cpu"),
                         mode=p["mode"], resize=p["resize"])
    ref, resized = mmseg_reference(model, image, short, flip=False)
    assert resized == (40, 60)
    np.testing.assert_allclose(ours.numpy().transpose(1, 2, 0), ref, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- the CIRKD tables' row names


def test_rows_named_by_architecture_are_the_tables_rows(tmp_path):
    """scripts/<dataset>/table.sh's runs (deeplabv3_r101_teacher, deeplabv3_r18_<row>): each is the row of that role,
    labelled with its architecture, paired with its baseline, and named by its own folder in the CSV."""
    import csv
    import json

    from tests.test_make_table import make_table, write_run

    root = tmp_path / "runs" / "cityscapes"
    write_run(str(root / "deeplabv3_r101_teacher"), (0.78, 0.85, 0.95), 1, mode="supervised", layers=101)
    for seed, (base, kd) in {1: (0.70, 0.72), 2: (0.71, 0.74)}.items():
        write_run(str(root / "deeplabv3_r18_baseline" / f"seed{seed}"), (base, 0.8, 0.9), seed, mode="supervised")
        write_run(str(root / "deeplabv3_r18_kd_cirkd" / f"seed{seed}"), (kd, 0.8, 0.9), seed, terms=["cirkd"])
    for path in root.rglob("metrics.json"):
        metrics = json.loads(path.read_text())
        path.write_text(json.dumps({**metrics, "arch": "deeplabv3"}))
    out_md, out_csv = tmp_path / "table.md", tmp_path / "table.csv"
    assert make_table.main([str(root), "--seeds", "1 2", "--config-dir", "config/cityscapes", "--out-md",
                            str(out_md), "--out-csv", str(out_csv)]) == 0
    text = out_md.read_text()
    assert "Teacher DeepLabV3-R101" in text and "Student DeepLabV3-R18 baseline" in text
    assert "R18 + logit KD + CIRKD" in text and "config/cityscapes/deeplabv3_r18_kd_cirkd.yaml" in text
    with open(out_csv, newline="") as f:
        records = {rec["row"]: rec for rec in csv.DictReader(f)}
    assert {"deeplabv3_r101_teacher", "deeplabv3_r18_baseline", "deeplabv3_r18_kd_cirkd"} <= set(records)
    assert float(records["deeplabv3_r18_kd_cirkd"]["d_mIoU"]) == pytest.approx(2.5)  # paired with its baseline
