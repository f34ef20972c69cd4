"""tools.prepare_cityscapes / prepare_ade20k / prepare_camvid on fabricated archives of the official layout: the
list-file layout segkd reads, labels mapped by each dataset's facts, and every bad input one line with nothing left
behind (no DEST, no DEST.partial)."""

import os
import zipfile

import numpy as np
import pytest
from PIL import Image

from data.datasets import get_dataset
from tests import dataset_archives as fab
from util.errors import SegKDError


def _prepare(name, tmp, arch, dest, **kw):
    if name == "cityscapes":
        from tools.prepare_cityscapes import prepare
        return prepare(dest, arch["images"], arch["labels"], expect_real=kw.get("expect_real", False),
                       skip_checksum=kw.get("skip_checksum", True))
    if name == "ade20k":
        from tools.prepare_ade20k import prepare
        return prepare(dest, arch["archive"], skip_checksum=kw.get("skip_checksum", True),
                       expect_real=kw.get("expect_real", False))
    from tools.prepare_camvid import prepare
    return prepare(dest, arch["archive"], expect_real=kw.get("expect_real", False))


def _fabricate(name, tmp, **kw):
    return {"cityscapes": fab.cityscapes, "ade20k": fab.ade20k, "camvid": fab.camvid}[name](str(tmp), **kw)


def _lists(dest, facts):
    out = {}
    for role, rel in facts.lists.items():
        with open(os.path.join(dest, rel)) as f:
            out[role] = [line.split() for line in f.read().splitlines()]
    return out


def _nothing_left(dest):
    return not os.path.exists(dest) and not os.path.exists(dest + ".partial")


# the archive member each prepared label was made from
RAW_MEMBER = {"cityscapes": lambda label: label.replace("_labelTrainIds.png", "_labelIds.png"),
              "ade20k": lambda label: "ADEChallengeData2016/" + label, "camvid": lambda label: "CamVid/" + label}
EXPECTED_COUNTS = {"cityscapes": {"train": 3, "val": 2}, "ade20k": {"train": 3, "val": 2},
                   "camvid": {"train": 3, "val": 2, "test": 2}}


@pytest.mark.parametrize("name", ["cityscapes", "ade20k", "camvid"])
def test_prepare_writes_lists_and_mapped_labels(tmp_path, name, capsys):
    arch = _fabricate(name, tmp_path)
    dest = str(tmp_path / "out")
    _prepare(name, tmp_path, arch, dest)
    facts = get_dataset(name)
    lists = _lists(dest, facts)
    assert {role: len(pairs) for role, pairs in lists.items()} == EXPECTED_COUNTS[name]
    assert not os.path.exists(dest + ".partial")
    lut = facts.lut()
    checked = 0
    for pairs in lists.values():
        for image, label in pairs:
            assert os.path.isfile(os.path.join(dest, image))
            got = np.array(Image.open(os.path.join(dest, label)))
            source = arch["raw"][RAW_MEMBER[name](label)]
            np.testing.assert_array_equal(got, lut[source])
            assert set(np.unique(got)) <= set(range(facts.classes)) | {255}
            checked += 1
    assert checked == sum(EXPECTED_COUNTS[name].values())
    # a finished DEST is left as it is
    before = {p: os.path.getmtime(os.path.join(r, p)) for r, _, fs in os.walk(dest) for p in fs}
    _prepare(name, tmp_path, arch, dest)
    assert "nothing to do" in capsys.readouterr().out
    assert before == {p: os.path.getmtime(os.path.join(r, p)) for r, _, fs in os.walk(dest) for p in fs}


def test_the_label_maps_are_the_official_tables():
    city = get_dataset("cityscapes").lut()
    assert (city[7], city[8], city[11], city[26], city[33]) == (0, 1, 2, 13, 18)  # road .. bicycle
    assert {int(city[i]) for i in (0, 1, 6, 9, 10, 14, 15, 16, 18, 29, 30)} == {255}
    assert sorted(int(v) for v in city[:34] if v != 255) == list(range(19))
    ade = get_dataset("ade20k").lut()
    assert ade[0] == 255 and ade[1] == 0 and ade[150] == 149
    cam = get_dataset("camvid").lut()
    assert list(cam[:11]) == list(range(11)) and cam[11] == 255


@pytest.mark.parametrize("name, member", [
    ("cityscapes", "gtFine/val/frankfurt/frankfurt_000000_000019_gtFine_labelIds.png"),
    ("ade20k", "ADEChallengeData2016/annotations/validation/ADE_val_00000001.png"),
    ("camvid", "CamVid/testannot/0001TP_000000.png"),
])
def test_label_outside_the_class_table_names_the_member(tmp_path, name, member):
    arch = _fabricate(name, tmp_path, bad_value=True)
    dest = str(tmp_path / "out")
    with pytest.raises(SegKDError, match=rf"{member}: label values \[\d+\] are outside the .* class table"):
        _prepare(name, tmp_path, arch, dest)
    assert _nothing_left(dest)


@pytest.mark.parametrize("name", ["cityscapes", "ade20k", "camvid"])
def test_wrong_archive_name_is_refused(tmp_path, name):
    arch = _fabricate(name, tmp_path)
    key = "images" if name == "cityscapes" else "archive"
    renamed = str(tmp_path / "download.zip")
    os.rename(arch[key], renamed)
    arch[key] = renamed
    dest = str(tmp_path / "out")
    with pytest.raises(SegKDError, match=r"download.zip: expected the archive \S+\.zip"):
        _prepare(name, tmp_path, arch, dest)
    assert _nothing_left(dest)


def _drop_member(path, name):
    tmp = path + ".tmp"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w") as dst:
        for info in src.infolist():
            if info.filename != name:
                dst.writestr(info, src.read(info.filename))
    os.replace(tmp, path)


@pytest.mark.parametrize("name, key, member", [
    ("cityscapes", "labels", "gtFine/train/aachen/aachen_000001_000019_gtFine_labelIds.png"),
    ("ade20k", "archive", "ADEChallengeData2016/annotations/training/ADE_train_00000002.png"),
    ("camvid", "archive", "CamVid/trainannot/0001TP_000001.png"),
])
def test_missing_member_names_it(tmp_path, name, key, member):
    arch = _fabricate(name, tmp_path)
    _drop_member(arch[key], member)
    dest = str(tmp_path / "out")
    with pytest.raises(SegKDError, match=rf"has no {member} for the image"):
        _prepare(name, tmp_path, arch, dest)
    assert _nothing_left(dest)


@pytest.mark.parametrize("name, key, member", [
    ("cityscapes", "images", "leftImg8bit/val/frankfurt/frankfurt_000001_000019_leftImg8bit.png"),
    ("ade20k", "archive", "ADEChallengeData2016/images/validation/ADE_val_00000002.jpg"),
    ("camvid", "archive", "CamVid/test/0001TP_000001.png"),
])
def test_corrupt_member_names_it_and_leaves_nothing(tmp_path, name, key, member):
    arch = _fabricate(name, tmp_path)
    fab.corrupt_member(arch[key], member)
    dest = str(tmp_path / "out")
    with pytest.raises(SegKDError, match=rf"corrupt member {member} \("):
        _prepare(name, tmp_path, arch, dest)
    assert _nothing_left(dest)


def test_not_a_zip_is_one_line(tmp_path):
    from tools.prepare_camvid import main

    (tmp_path / "CamVid.zip").write_bytes(b"not a zip")
    assert main(["--dest", str(tmp_path / "out"), "--archive", str(tmp_path / "CamVid.zip")]) == 2
    assert _nothing_left(str(tmp_path / "out"))


def test_real_counts_are_asserted_by_default(tmp_path):
    arch = _fabricate("camvid", tmp_path)
    dest = str(tmp_path / "out")
    with pytest.raises(SegKDError, match=r"list/train.txt would have 3 samples, expected 367"):
        _prepare("camvid", tmp_path, arch, dest, expect_real=True)
    assert _nothing_left(dest)


def test_ade20k_checksum_is_checked(tmp_path):
    arch = _fabricate("ade20k", tmp_path)
    dest = str(tmp_path / "out")
    with pytest.raises(SegKDError, match=r"sha1 [0-9a-f]{40} does not match the published 219e1696"):
        _prepare("ade20k", tmp_path, arch, dest, skip_checksum=False)
    assert _nothing_left(dest)


def test_cityscapes_checksums_are_checked(tmp_path):
    """Both archives are checked against the published SHA-1s (GluonCV's) before anything is written."""
    arch = _fabricate("cityscapes", tmp_path)
    dest = str(tmp_path / "out")
    with pytest.raises(SegKDError, match=r"leftImg8bit_trainvaltest.zip: sha1 [0-9a-f]{40} does not match the "
                                         r"published 2c0b77ce"):
        _prepare("cityscapes", tmp_path, arch, dest, skip_checksum=False)
    assert _nothing_left(dest)


def test_camvid_without_the_top_folder(tmp_path):
    arch = fab.camvid(str(tmp_path), prefix="")
    dest = str(tmp_path / "out")
    _prepare("camvid", tmp_path, arch, dest)
    assert _lists(dest, get_dataset("camvid"))["test"][0] == ["test/0001TP_000000.png", "testannot/0001TP_000000.png"]
