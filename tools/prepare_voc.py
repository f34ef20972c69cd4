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
name and renamed, so an interrupted run never leaves a half-written file behind. The archives themselves
(sources, md5s, resumable download, safe extraction) are tools/voc_archives.py; this module turns them into
the dataset.
"""

from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from typing import Optional

import numpy as np
from PIL import Image

from tools.voc_archives import SBD, SBD_ROOT, VOC, VOC_ROOT, Archive, download, extract, verify_md5
from util.errors import SegKDError

REAL_COUNTS = {"train_aug": 10582, "val": 1449}


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
