"""The two archives VOC 2012 aug is built from (VOC 2012 trainval, SBD's benchmark.tgz): where they come from
and their md5s, a resumable download (HTTP Range) and an all-or-nothing extraction that refuses members which
could write outside the target. Used by tools/prepare_voc.py (``python -m tools.prepare_voc``); no command.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Callable, Optional

from util.errors import SegKDError
from util.hashing import file_hash

VOC_ROOT = "VOCdevkit/VOC2012"
SBD_ROOT = "benchmark_RELEASE/dataset"


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
