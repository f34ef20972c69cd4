"""tools/prepare_voc.py and tools/voc_archives.py on fabricated VOC and SBD archives (a few 12x16 images, no
downloads)."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
import urllib.request

import numpy as np
import pytest
import scipy.io
import scipy.sparse
from PIL import Image

from tools import prepare_voc, voc_archives
from tools.prepare_voc import main, prepare
from tools.voc_archives import SBD_ROOT, VOC_ROOT
from util.errors import SegKDError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOC_TRAIN = ["2007_000010", "2007_000020"]
VOC_VAL = ["2007_000030", "2007_000040"]
SBD_TRAIN = ["2007_000040", "2008_000050", "2008_000070"]  # 2007_000040 is in VOC val: never trained on
SBD_VAL = ["2007_000010", "2008_000060"]  # 2007_000010 is in VOC train: VOC's mask wins
EXTRA_JPG = "2009_000090"  # a detection-only image: in JPEGImages, in no list
EXPECTED_TRAIN = ["2007_000010", "2007_000020", "2008_000050", "2008_000060", "2008_000070"]


def _palette_png(label: np.ndarray, path: str) -> None:
    image = Image.frombytes("P", label.shape[::-1], label.tobytes())
    image.putpalette([(i * 37) % 256 for i in range(768)])
    image.save(path)


def _sbd_mat(label: np.ndarray, path: str) -> None:
    boundaries = np.empty((20, 1), dtype=object)
    for k in range(20):
        boundaries[k, 0] = scipy.sparse.csc_matrix(label.shape, dtype=np.uint8)
    present = np.unique(label[(label > 0) & (label < 255)]).astype(np.uint8)
    gt = {"Boundaries": boundaries, "Segmentation": label, "CategoriesPresent": present}
    scipy.io.savemat(path, {"GTcls": gt})


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _jpg_bytes(rng: np.random.Generator, shape: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (*shape, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def make_archives(tmp, extra_members=(), sbd_extra_ids=()) -> tuple[str, str, dict[str, np.ndarray]]:
    """Write voc.tar and sbd.tgz under ``tmp``; return their paths and each id's expected label."""
    rng = np.random.default_rng(0)
    shape = (12, 16)
    voc_labels = {i: rng.choice([0, 1, 5, 20, 255], size=shape).astype(np.uint8) for i in VOC_TRAIN + VOC_VAL}
    sbd_labels = {i: rng.integers(0, 21, size=shape, dtype=np.uint8) for i in SBD_TRAIN + SBD_VAL}
    expected = {**sbd_labels, **voc_labels}
    voc_tar, sbd_tgz = os.path.join(tmp, "voc.tar"), os.path.join(tmp, "sbd.tgz")
    with tarfile.open(voc_tar, "w") as tar:
        for i in sorted({*VOC_TRAIN, *VOC_VAL, *SBD_TRAIN, *SBD_VAL, EXTRA_JPG}):
            _add_bytes(tar, f"{VOC_ROOT}/JPEGImages/{i}.jpg", _jpg_bytes(rng, shape))
        for i, label in voc_labels.items():
            png = os.path.join(tmp, "label.png")
            _palette_png(label, png)
            with open(png, "rb") as f:
                _add_bytes(tar, f"{VOC_ROOT}/SegmentationClass/{i}.png", f.read())
        for name, ids in (("train", VOC_TRAIN), ("val", VOC_VAL), ("trainval", VOC_TRAIN + VOC_VAL)):
            ids_txt = "".join(i + "\n" for i in ids).encode()
            _add_bytes(tar, f"{VOC_ROOT}/ImageSets/Segmentation/{name}.txt", ids_txt)
        _add_bytes(tar, f"{VOC_ROOT}/Annotations/{EXTRA_JPG}.xml", b"<annotation/>")
        for name in extra_members:
            _add_bytes(tar, name, b"evil")
    with tarfile.open(sbd_tgz, "w:gz") as tar:
        for i, label in sbd_labels.items():
            mat = os.path.join(tmp, "label.mat")
            _sbd_mat(label, mat)
            with open(mat, "rb") as f:
                _add_bytes(tar, f"{SBD_ROOT}/cls/{i}.mat", f.read())
            _add_bytes(tar, f"{SBD_ROOT}/img/{i}.jpg", b"not needed")
        for name, ids in (("train", SBD_TRAIN + list(sbd_extra_ids)), ("val", SBD_VAL)):
            _add_bytes(tar, f"{SBD_ROOT}/{name}.txt", "".join(i + "\n" for i in ids).encode())
    return voc_tar, sbd_tgz, expected


def _snapshot(root: str) -> dict[str, int]:
    return {os.path.join(d, n): os.stat(os.path.join(d, n)).st_mtime_ns
            for d, _, names in os.walk(root) for n in names}


def _read_list(path: str) -> list[str]:
    with open(path) as f:
        return f.read().splitlines()


@pytest.mark.parametrize("workers", ["1", pytest.param("2", marks=pytest.mark.slow)])  # 2: a process pool
def test_prepare_builds_lists_and_labels_and_rerun_is_a_noop(tmp_path, capsys, workers):
    voc_tar, sbd_tgz, expected = make_archives(str(tmp_path))
    dest = str(tmp_path / "voc")
    args = ["--dest", dest, "--voc-tar", voc_tar, "--sbd-tgz", sbd_tgz, "--skip-md5", "--workers", workers]
    assert main(args) == 0
    assert "list/train_aug.txt: 5 samples" in capsys.readouterr().out

    line = "JPEGImages/{0}.jpg SegmentationClassAug/{0}.png"
    assert _read_list(os.path.join(dest, "list", "train_aug.txt")) == [line.format(i) for i in EXPECTED_TRAIN]
    assert _read_list(os.path.join(dest, "list", "val.txt")) == [line.format(i) for i in sorted(VOC_VAL)]
    labels = os.path.join(dest, "SegmentationClassAug")
    assert sorted(os.listdir(labels)) == sorted(i + ".png" for i in expected)
    for image_id, label in expected.items():
        with Image.open(os.path.join(labels, image_id + ".png")) as image:
            assert image.mode == "L"
            np.testing.assert_array_equal(np.array(image), label, err_msg=image_id)
    assert os.path.isfile(os.path.join(dest, "JPEGImages", EXTRA_JPG + ".jpg"))

    before = _snapshot(dest)
    assert main(args) == 0
    assert "already prepared" in capsys.readouterr().out
    assert _snapshot(dest) == before


def test_interrupted_label_stage_resumes_without_redoing_finished_files(tmp_path):
    voc_tar, sbd_tgz, expected = make_archives(str(tmp_path))
    dest = str(tmp_path / "voc")
    prepare(dest, voc_tar, sbd_tgz, skip_md5=True)
    labels = os.path.join(dest, "SegmentationClassAug")
    for stage in ("labels", "lists"):
        os.remove(os.path.join(dest, ".stamps", stage))
    os.remove(os.path.join(labels, "2008_000060.png"))
    before = _snapshot(labels)
    prepare(dest, voc_tar, sbd_tgz, skip_md5=True)
    after = _snapshot(labels)
    assert {k: v for k, v in after.items() if "2008_000060" not in k} == before
    with Image.open(os.path.join(labels, "2008_000060.png")) as image:
        np.testing.assert_array_equal(np.array(image), expected["2008_000060"])


def test_wrong_md5_names_the_file_and_both_sums(tmp_path, capsys):
    voc_tar, sbd_tgz, _ = make_archives(str(tmp_path))
    assert main(["--dest", str(tmp_path / "voc"), "--voc-tar", voc_tar, "--sbd-tgz", sbd_tgz]) == 2
    err = capsys.readouterr().err
    with open(voc_tar, "rb") as f:
        actual = hashlib.md5(f.read()).hexdigest()
    assert err.startswith("error: ") and voc_tar in err
    assert actual in err and voc_archives.VOC.md5 in err
    assert not os.path.exists(tmp_path / "voc" / "raw" / "voc")


def test_member_with_dotdot_is_refused(tmp_path):
    voc_tar, sbd_tgz, _ = make_archives(str(tmp_path), extra_members=["VOCdevkit/../../evil.txt"])
    with pytest.raises(SegKDError, match=r"unsafe member 'VOCdevkit/\.\./\.\./evil\.txt'"):
        prepare(str(tmp_path / "voc"), voc_tar, sbd_tgz, skip_md5=True)
    assert not os.path.exists(tmp_path / "evil.txt")
    assert not os.path.exists(tmp_path / "voc" / "raw" / "voc")
    assert not os.path.exists(tmp_path / "voc" / "raw" / "voc.partial")


def test_real_counts_are_asserted_when_expected(tmp_path):
    voc_tar, sbd_tgz, _ = make_archives(str(tmp_path))
    with pytest.raises(SegKDError, match="train_aug.txt would have 5 lines, expected 10582"):
        prepare(str(tmp_path / "voc"), voc_tar, sbd_tgz, skip_md5=True, expect_real=True)
    assert not os.path.exists(tmp_path / "voc" / "list" / "train_aug.txt")


def test_sbd_id_without_a_voc_image_is_an_error(tmp_path):
    voc_tar, sbd_tgz, _ = make_archives(str(tmp_path), sbd_extra_ids=["2011_999999"])
    with pytest.raises(SegKDError, match=r"train\.txt:4: id 2011_999999 has no image .*2011_999999\.jpg"):
        prepare(str(tmp_path / "voc"), voc_tar, sbd_tgz, skip_md5=True)


def test_missing_scipy_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "scipy.io", None)
    with pytest.raises(SegKDError, match="scipy is needed to read SBD .mat files: pip install scipy"):
        prepare_voc.sbd_label("any.mat")


def test_missing_archive_asks_for_a_path_or_download(tmp_path):
    with pytest.raises(SegKDError, match="VOCtrainval_11-May-2012.tar: pass --voc-tar PATH or --download"):
        prepare(str(tmp_path / "voc"))


class _FakeServer:
    """A urlopen stand-in serving ``data`` with Range support; the first response breaks off halfway."""

    def __init__(self, data: bytes, honour_range: bool = True, break_first: bool = True):
        self.data, self.honour_range, self.break_first, self.ranges = data, honour_range, break_first, []

    def __call__(self, request: urllib.request.Request, timeout: float):
        rng = request.get_header("Range")
        self.ranges.append(rng)
        start = int(rng[len("bytes="):-1]) if rng and self.honour_range else 0
        body, status = self.data[start:], 206 if start else 200
        headers = {"Content-Length": str(len(body))}
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(self.data) - 1}/{len(self.data)}"
        broken = self.break_first and len(self.ranges) == 1
        return _FakeResponse(body, status, headers, break_after=len(body) // 2 if broken else None)


class _FakeResponse(io.BytesIO):
    def __init__(self, body: bytes, status: int, headers: dict[str, str], break_after):
        super().__init__(body)
        self.status, self.headers, self.break_after = status, headers, break_after

    def read(self, n: int = -1) -> bytes:
        if self.break_after is not None and self.tell() >= self.break_after:
            raise ConnectionResetError("connection reset")
        return super().read(min(n, self.break_after - self.tell()) if self.break_after else n)


@pytest.mark.parametrize("honour_range", [True, False])
def test_download_resumes_after_an_interruption(tmp_path, honour_range):
    data = bytes(range(256)) * 4096  # 1 MiB: two blocks of the download loop
    server, path = _FakeServer(data, honour_range), str(tmp_path / "dl" / "archive.tar")
    md5 = hashlib.md5(data).hexdigest()
    with pytest.raises(SegKDError, match="interrupted at 524288 bytes"):
        voc_archives.download("http://x/archive.tar", path, md5, opener=server)
    assert not os.path.exists(path) and os.path.getsize(path + ".part") == len(data) // 2
    voc_archives.download("http://x/archive.tar", path, md5, opener=server)
    assert server.ranges == [None, f"bytes={len(data) // 2}-"]
    with open(path, "rb") as f:
        assert f.read() == data
    assert not os.path.exists(path + ".part")


def test_download_with_wrong_md5_is_removed(tmp_path):
    path = str(tmp_path / "archive.tar")
    server = _FakeServer(b"abc" * 10, break_first=False)
    with pytest.raises(SegKDError, match="archive.tar.part: md5 .* does not match the expected 0+"):
        voc_archives.download("http://x/archive.tar", path, "0" * 32, opener=server)
    assert not os.path.exists(path) and not os.path.exists(path + ".part")


@pytest.mark.slow  # a bash subprocess
def test_prepare_sh_resolves_relative_paths(tmp_path):
    make_archives(str(tmp_path))
    env = {**os.environ, "PYTHON": sys.executable}
    script = os.path.join(REPO, "scripts", "voc2012", "prepare.sh")
    cmd = ["bash", script, "out", "--voc-tar", "voc.tar", "--sbd-tgz=sbd.tgz", "--skip-md5", "--workers", "1"]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert len(_read_list(str(tmp_path / "out" / "list" / "train_aug.txt"))) == len(EXPECTED_TRAIN)


@pytest.mark.slow  # a bash subprocess
def test_prepare_sh_help_is_the_usage_and_every_option_exit_0_and_no_dest_is_exit_2(tmp_path):
    env = {**os.environ, "PYTHON": os.path.relpath(sys.executable, tmp_path)}  # a relative PYTHON stays valid
    script = os.path.join(REPO, "scripts", "voc2012", "prepare.sh")
    done = subprocess.run(["bash", script, "--help"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: {script} DEST") and "--expect-real" in done.stdout
    done = subprocess.run(["bash", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.startswith("usage: ") and os.listdir(tmp_path) == []
