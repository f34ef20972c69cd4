"""Build PASCAL VOC 2012 "aug" (VOC 2012 + SBD labels): 10,582 training and 1,449 validation images.

    python -m tools.prepare_voc --dest /data/voc2012 --download
    python -m tools.prepare_voc --dest /data/voc2012 \
        --voc-tar VOCtrainval_11-May-2012.tar --sbd-tgz benchmark.tgz
    scripts/voc2012/prepare.sh /data/voc2012 --download      # the same, from any directory

DEST ends up with ``JPEGImages/<id>.jpg``, ``SegmentationClassAug/<id>.png`` (single-channel index PNGs,
255 = ignore), ``list/train_aug.txt`` = (VOC train | SBD train | SBD val) - VOC val and ``list/val.txt`` =
VOC val, one ``JPEGImages/<id>.jpg SegmentationClassAug/<id>.png`` a line. VOC's own masks win over SBD's
for images in both: they are the finer annotation and the one the val protocol scores against.

Rerunning does nothing twice: archives are extracted into ``raw/<name>.partial`` and renamed when
complete, later stages leave a stamp in ``.stamps/``, and every output file is written under a temporary
name and renamed, so an interrupted run never leaves a half-written file behind.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tarfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Callable, Optional

import numpy as np
from PIL import Image

from util.errors import SegKDError
from util.hashing import file_hash

VOC_ROOT = "VOCdevkit/VOC2012"
SBD_ROOT = "benchmark_RELEASE/dataset"
REAL_COUNTS = {"train_aug": 10582, "val": 1449}


@dataclass(frozen=True)
class Archive:
    key: str  # raw/<key> holds its extracted members
    filename: str
    url: str
    md5: str
    flag: str
    keep: tuple[str, ...]  # member prefixes to extract; the rest of the archive is only read past


VOC = Archive(
    "voc", "VOCtrainval_11-May-2012.tar",
    "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
    "6cd6e144f989b92b3379bac3b3de84fd", "--voc-tar",
    tuple(f"{VOC_ROOT}/{d}/" for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation")),
)
SBD = Archive(
    "sbd", "benchmark.tgz",
    "http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz",
    "82b4d87ceb2ed10f6038a1cba92111cb", "--sbd-tgz",
    (f"{SBD_ROOT}/cls/", f"{SBD_ROOT}/train.txt", f"{SBD_ROOT}/val.txt"),
)


def md5sum(path: str) -> str:
    return file_hash(path, "md5")


def verify_md5(path: str, expected: str) -> None:
    print(f"verifying md5 of {path} ...", flush=True)
    actual = md5sum(path)
    if actual != expected:
        raise SegKDError(f"{path}: md5 {actual} does not match the expected {expected} "
                         "(a wrong or damaged archive; --skip-md5 is for test archives only)")


def download(url: str, path: str, md5: Optional[str], opener: Callable = urllib.request.urlopen) -> None:
    """Fetch ``url`` to ``path`` via ``path.part``, resuming a previous partial download with HTTP Range.

    ``path`` only appears once the whole file is there and (if ``md5`` is given) its md5 matches.
    """
    part = path + ".part"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    have = os.path.getsize(part) if os.path.isfile(part) else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    print(f"downloading {url} -> {path}" + (f" (resuming at {have} bytes)" if have else ""), flush=True)
    try:
        response = opener(request, timeout=60)
    except urllib.error.HTTPError as e:
        if e.code != 416 or not have:  # 416: nothing left past our offset, the .part is complete
            raise SegKDError(f"{url}: HTTP {e.code} {e.reason}") from None
        response = None
    except (urllib.error.URLError, OSError) as e:
        raise SegKDError(f"{url}: cannot download ({e}); fetch it by hand and pass its path") from None
    if response is not None:
        with response:
            _receive(response, part, have, url)
    if md5 is not None:
        try:
            verify_md5(part, md5)
        except SegKDError:
            os.remove(part)  # a finished but wrong download must not be resumed from
            raise
    os.replace(part, path)


def _receive(response, part: str, have: int, url: str) -> None:
    status = getattr(response, "status", None) or response.getcode()
    content_range = response.headers.get("Content-Range", "")
    if have and not (status == 206 and content_range.startswith(f"bytes {have}-")):
        have = 0  # the server ignored the Range header: start again from byte 0
    length = response.headers.get("Content-Length")
    total = have + int(length) if length is not None else None
    done = have
    try:
        with open(part, "ab" if have else "wb") as f:
            for block in iter(lambda: response.read(1 << 20), b""):
                f.write(block)
                done += len(block)
    except OSError as e:
        raise SegKDError(f"{url}: download interrupted at {done} bytes ({e}); rerun to resume") from None
    if total is not None and done < total:
        raise SegKDError(f"{url}: download stopped at {done} of {total} bytes; rerun to resume")


def _safe_members(tar: tarfile.TarFile, archive: str, keep: tuple[str, ...]) -> Iterator[tarfile.TarInfo]:
    """The members under ``keep``; any member that could write outside the target is an error."""
    for member in tar:
        parts = PurePosixPath(member.name).parts
        unsafe = member.name.startswith(("/", "\\")) or ".." in parts or member.isdev()
        if member.issym() or member.islnk():
            unsafe |= member.linkname.startswith("/") or ".." in PurePosixPath(member.linkname).parts
        if unsafe:
            raise SegKDError(f"{archive}: refusing unsafe member {member.name!r} "
                             "(absolute path, '..', outside link or device)")
        name = member.name[2:] if member.name.startswith("./") else member.name
        if any(name.startswith(k) or name + "/" == k for k in keep):
            yield member


def extract(archive: str, target: str, keep: tuple[str, ...]) -> None:
    """Extract the members of ``archive`` under the prefixes ``keep`` into ``target``, all or nothing."""
    partial = target + ".partial"
    if os.path.isdir(partial):
        shutil.rmtree(partial)  # left by an interrupted run
    os.makedirs(partial)
    print(f"extracting {archive} -> {target}", flush=True)
    extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(partial, members=_safe_members(tar, archive, keep), **extra)
    except (tarfile.TarError, EOFError) as e:
        shutil.rmtree(partial)
        raise SegKDError(f"{archive}: cannot extract ({e})") from None
    except BaseException:
        shutil.rmtree(partial)
        raise
    missing = [k for k in keep if not os.path.exists(os.path.join(partial, k))]
    if missing:
        shutil.rmtree(partial)
        raise SegKDError(f"{archive}: has no {missing[0]} (is it the right archive?)")
    os.replace(partial, target)


def read_ids(path: str) -> dict[str, str]:
    """An id list (one image id a line) -> ``{id: "path:lineno"}``."""
    if not os.path.isfile(path):
        raise SegKDError(f"{path}: id list not found")
    ids: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            image_id = line.strip()
            if not image_id:
                continue
            if len(image_id.split()) != 1 or "/" in image_id:
                raise SegKDError(f"{path}:{lineno}: expected one image id, got {line.strip()!r}")
            ids.setdefault(image_id, f"{path}:{lineno}")
    return ids


def voc_label(path: str) -> np.ndarray:
    """VOC's palette PNG -> HxW uint8 class indices (255 kept), not the colours."""
    with Image.open(path) as image:
        if image.mode not in ("P", "L"):
            raise SegKDError(f"{path}: expected a palette (P) label PNG, got mode {image.mode}")
        return np.array(image)


def sbd_label(path: str) -> np.ndarray:
    """SBD's ``cls/<id>.mat`` -> HxW uint8 class indices (``GTcls`` is a 1x1 struct array)."""
    try:
        import scipy.io
    except ImportError:
        raise SegKDError("scipy is needed to read SBD .mat files: pip install scipy") from None
    try:
        seg = np.asarray(scipy.io.loadmat(path, variable_names=["GTcls"])["GTcls"]["Segmentation"][0, 0])
    except (KeyError, ValueError, IndexError, TypeError) as e:
        raise SegKDError(f"{path}: no GTcls.Segmentation in this .mat ({e})") from None
    if seg.ndim != 2 or seg.dtype.kind not in "ui" or seg.min() < 0 or seg.max() > 255:
        raise SegKDError(f"{path}: GTcls.Segmentation is not a 2-D array of 0..255 indices")
    return seg.astype(np.uint8)


def write_png(label: np.ndarray, path: str) -> None:
    """Write an HxW uint8 array as a mode "L" PNG, atomically."""
    tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".tmp")
    Image.fromarray(np.ascontiguousarray(label, dtype=np.uint8)).save(tmp, format="PNG")
    os.replace(tmp, path)


def _convert(task: tuple[str, str, str]) -> None:
    kind, src, dst = task
    if not os.path.isfile(src):
        raise SegKDError(f"{src}: label source not found")
    write_png(voc_label(src) if kind == "voc" else sbd_label(src), dst)


def _stamp_path(dest: str, stage: str) -> str:
    return os.path.join(dest, ".stamps", stage)


def _stamp(dest: str, stage: str) -> None:
    os.makedirs(os.path.join(dest, ".stamps"), exist_ok=True)
    with open(_stamp_path(dest, stage) + ".tmp", "w") as f:
        f.write("done\n")
    os.replace(_stamp_path(dest, stage) + ".tmp", _stamp_path(dest, stage))


def _obtain(spec: Archive, given: Optional[str], dest: str, fetch: bool, skip_md5: bool) -> str:
    if given:
        if not os.path.isfile(given):
            raise SegKDError(f"{given}: archive not found ({spec.flag})")
        path = given
    elif fetch:
        path = os.path.join(dest, "downloads", spec.filename)
        if not os.path.isfile(path):
            download(spec.url, path, None if skip_md5 else spec.md5)
            return path
    else:
        raise SegKDError(f"{spec.filename}: pass {spec.flag} PATH or --download")
    if not skip_md5:
        verify_md5(path, spec.md5)
    return path


def _move_images(dest: str) -> None:
    """Move VOC's JPEGImages into DEST with one rename: no copy, no second 2 GB on disk."""
    src, dst = os.path.join(dest, "raw", VOC.key, VOC_ROOT, "JPEGImages"), os.path.join(dest, "JPEGImages")
    if os.path.exists(_stamp_path(dest, "images")):
        return
    if os.path.isdir(src):
        if os.path.exists(dst):
            raise SegKDError(f"{dst}: exists but was not made by this script; move it away and rerun")
        os.replace(src, dst)
    elif not os.path.isdir(dst):
        raise SegKDError(f"{src}: missing; delete {os.path.join(dest, 'raw', VOC.key)} and rerun")
    _stamp(dest, "images")
    print(f"images: {len(os.listdir(dst))} jpgs in {dst}", flush=True)


def _split_ids(dest: str) -> tuple[dict[str, list[str]], dict[str, tuple[str, str]]]:
    """The two splits' sorted ids and each id's label source ``(kind, path)``."""
    raw = os.path.join(dest, "raw")
    voc_sets = os.path.join(raw, VOC.key, VOC_ROOT, "ImageSets", "Segmentation")
    sbd_dir = os.path.join(raw, SBD.key, SBD_ROOT)
    voc_train = read_ids(os.path.join(voc_sets, "train.txt"))
    voc_val = read_ids(os.path.join(voc_sets, "val.txt"))
    sbd = {**read_ids(os.path.join(sbd_dir, "val.txt")), **read_ids(os.path.join(sbd_dir, "train.txt"))}
    origin = {**sbd, **voc_val, **voc_train}
    jpgs = set(os.listdir(os.path.join(dest, "JPEGImages")))
    for image_id, where in sorted(origin.items()):
        if image_id + ".jpg" not in jpgs:
            raise SegKDError(f"{where}: id {image_id} has no image {dest}/JPEGImages/{image_id}.jpg")
    voc_seg = os.path.join(raw, VOC.key, VOC_ROOT, "SegmentationClass")
    sources = {i: ("sbd", os.path.join(sbd_dir, "cls", i + ".mat")) for i in sbd}
    sources.update({i: ("voc", os.path.join(voc_seg, i + ".png")) for i in {**voc_train, **voc_val}})
    splits = {"train_aug": sorted(set(origin) - set(voc_val)), "val": sorted(voc_val)}
    return splits, sources


def _write_labels(dest: str, sources: dict[str, tuple[str, str]], workers: int) -> None:
    if os.path.exists(_stamp_path(dest, "labels")):
        return
    out = os.path.join(dest, "SegmentationClassAug")
    os.makedirs(out, exist_ok=True)
    done = {name for name in os.listdir(out) if name.endswith(".png")}  # kept from an interrupted run
    tasks = [(kind, src, os.path.join(out, i + ".png")) for i, (kind, src) in sorted(sources.items())
             if i + ".png" not in done]
    print(f"labels: {len(done)} already written, converting {len(tasks)}", flush=True)
    if workers > 1 and len(tasks) > 1:
        with ProcessPoolExecutor(workers) as pool:
            for n, _ in enumerate(pool.map(_convert, tasks, chunksize=64), start=1):
                if n % 2000 == 0:
                    print(f"labels: {n}/{len(tasks)}", flush=True)
    else:
        for task in tasks:
            _convert(task)
    _stamp(dest, "labels")


def _write_lists(dest: str, splits: dict[str, list[str]], expect_real: bool) -> None:
    if expect_real:
        for name, ids in splits.items():
            if len(ids) != REAL_COUNTS[name]:
                raise SegKDError(f"list/{name}.txt would have {len(ids)} lines, expected {REAL_COUNTS[name]} "
                                 "from the real VOC 2012 + SBD archives (--no-expect-real for other data)")
    os.makedirs(os.path.join(dest, "list"), exist_ok=True)
    for name, ids in splits.items():
        path = os.path.join(dest, "list", name + ".txt")
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            f.writelines(f"JPEGImages/{i}.jpg SegmentationClassAug/{i}.png\n" for i in ids)
        os.replace(path + ".tmp", path)
        print(f"list/{name}.txt: {len(ids)} samples", flush=True)
    _stamp(dest, "lists")


def prepare(dest: str, voc_tar: Optional[str] = None, sbd_tgz: Optional[str] = None, fetch: bool = False,
            skip_md5: bool = False, expect_real: Optional[bool] = None, workers: int = 1) -> None:
    """Build the VOC aug dataset in ``dest`` (see the module docstring); a finished ``dest`` is left as is.

    ``expect_real`` (default: ``not skip_md5``) asserts the real archives' 10,582 / 1,449 samples.
    """
    dest = os.path.abspath(dest)
    if os.path.exists(_stamp_path(dest, "lists")):
        print(f"{dest}: already prepared, nothing to do (to rebuild, start from an empty DEST)")
        return
    for spec, given in ((VOC, voc_tar), (SBD, sbd_tgz)):
        target = os.path.join(dest, "raw", spec.key)
        if not os.path.isdir(target):
            extract(_obtain(spec, given, dest, fetch, skip_md5), target, spec.keep)
    _move_images(dest)
    splits, sources = _split_ids(dest)
    _write_labels(dest, sources, workers)
    _write_lists(dest, splits, (not skip_md5) if expect_real is None else expect_real)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Prepare PASCAL VOC 2012 aug (VOC 2012 + SBD) for segkd.")
    parser.add_argument("--dest", required=True, help="output dataset root (data.root)")
    parser.add_argument("--voc-tar", help="VOCtrainval_11-May-2012.tar, already downloaded")
    parser.add_argument("--sbd-tgz", help="SBD's benchmark.tgz, already downloaded")
    parser.add_argument("--download", action="store_true", help="fetch missing archives to DEST/downloads")
    parser.add_argument("--skip-md5", action="store_true", help="do not check archive md5s (test archives)")
    parser.add_argument("--expect-real", action=argparse.BooleanOptionalAction, default=None,
                        help="assert 10,582 / 1,449 samples (default: on unless --skip-md5)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="label processes")
    args = parser.parse_args(argv)
    try:
        prepare(args.dest, args.voc_tar, args.sbd_tgz, args.download, args.skip_md5, args.expect_real,
                max(1, args.workers))
    except SegKDError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
