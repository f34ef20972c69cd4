"""What the zip-archive preparation tools share (tools/prepare_cityscapes.py, prepare_ade20k.py, prepare_camvid.py):
the archive check (its official name, a zip, the published checksum where there is one), members read with their
CRC checked, labels mapped through the dataset's facts (data/datasets), and a dataset built in ``DEST.partial``
that becomes ``DEST`` with one rename when everything is written, so an interrupted or failed run leaves no
half-written dataset behind (the next run starts that folder again). No command.
"""

from __future__ import annotations

import io
import os
import shutil
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Callable, Optional

import numpy as np
from PIL import Image

from data.datasets import DatasetFacts
from util.errors import SegKDError
from util.hashing import file_hash


@dataclass(frozen=True)
class ZipArchive:
    filename: str  # the official download's name; another name is refused
    flag: str  # the command-line option that passes it
    where: str  # where to download it
    checksum: Optional[tuple[str, str]] = None  # (hashlib algorithm, hex digest) where one is published


def open_archive(path: Optional[str], spec: ZipArchive, skip_checksum: bool = False) -> zipfile.ZipFile:
    """The zip at ``path`` after checking its name, format and (unless ``skip_checksum``) published checksum."""
    if not path:
        raise SegKDError(f"{spec.filename}: pass {spec.flag} PATH (download it from {spec.where})")
    if not os.path.isfile(path):
        raise SegKDError(f"{path}: archive not found ({spec.flag})")
    if os.path.basename(path) != spec.filename:
        raise SegKDError(f"{path}: expected the archive {spec.filename} for {spec.flag} "
                         f"(the official download's name; got {os.path.basename(path)})")
    if spec.checksum is not None and not skip_checksum:
        algorithm, expected = spec.checksum
        print(f"verifying {algorithm} of {path} ...", flush=True)
        actual = file_hash(path, algorithm)
        if actual != expected:
            raise SegKDError(f"{path}: {algorithm} {actual} does not match the published {expected} (a wrong or "
                             "damaged archive; --skip-checksum is for test archives only)")
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise SegKDError(f"{path}: not a readable zip archive ({e}); expected {spec.filename}") from None


def members(archive: zipfile.ZipFile) -> list[str]:
    """The file members' names; one that could write outside the target (absolute, ``..``) is an error."""
    names = []
    for info in archive.infolist():
        parts = PurePosixPath(info.filename).parts
        if info.filename.startswith(("/", "\\")) or ".." in parts:
            raise SegKDError(f"{archive.filename}: refusing unsafe member {info.filename!r} (absolute path or '..')")
        if not info.is_dir():
            names.append(info.filename)
    return names


def read_member(archive: zipfile.ZipFile, name: str) -> bytes:
    """A member's bytes, its CRC checked; a missing or corrupt member is one line naming the archive and it."""
    try:
        return archive.read(name)
    except KeyError:
        raise SegKDError(f"{archive.filename}: has no member {name}") from None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:  # Bad CRC-32, truncated data, bad header
        raise SegKDError(f"{archive.filename}: corrupt member {name} ({e})") from None


def image_size(data: bytes, where: str) -> tuple[int, int]:
    """(H, W) of an image file's bytes, decoded fully so a truncated file is found here, not in training."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return image.size[1], image.size[0]
    except (OSError, SyntaxError, ValueError) as e:
        raise SegKDError(f"{where}: not a readable image ({e})") from None


def raw_label(data: bytes, where: str) -> np.ndarray:
    """A stored label PNG's values (an index image: mode L or P; the values, not the colours)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.mode not in ("L", "P"):
                raise SegKDError(f"{where}: expected a single-channel label PNG (mode L or P), got mode {image.mode}")
            return np.array(image)
    except (OSError, SyntaxError, ValueError) as e:
        raise SegKDError(f"{where}: not a readable label PNG ({e})") from None


def write_file(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def write_label(path: str, label: np.ndarray) -> None:
    """An HxW uint8 class-index array as a mode "L" PNG (the staging folder makes the whole dataset atomic)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.ascontiguousarray(label, dtype=np.uint8)).save(path, format="PNG")


def convert_pair(archive_images: zipfile.ZipFile, image: str, archive_labels: zipfile.ZipFile, label: str,
                 facts: DatasetFacts, root: str, image_out: str, label_out: str) -> None:
    """Copy one image member to ``root/image_out`` and write its label member, mapped to class indices by the
    dataset's label map, to ``root/label_out``; image and label must be readable and of one size."""
    image_bytes = read_member(archive_images, image)
    label_bytes = read_member(archive_labels, label)
    where_image, where_label = f"{archive_images.filename}:{image}", f"{archive_labels.filename}:{label}"
    size = image_size(image_bytes, where_image)
    raw = raw_label(label_bytes, where_label)
    if raw.shape != size:
        raise SegKDError(f"{where_label}: label is {raw.shape[0]}x{raw.shape[1]} (HxW) but its image {image} is "
                         f"{size[0]}x{size[1]}")
    write_file(os.path.join(root, image_out), image_bytes)
    write_label(os.path.join(root, label_out), facts.convert(raw, where_label))


def convert_all(images: zipfile.ZipFile, labels: zipfile.ZipFile, found: dict[str, list[tuple[str, str]]],
                facts: DatasetFacts, root: str, rename: Callable[[str, str], tuple[str, str]],
                progress: int = 0) -> dict[str, list[tuple[str, str]]]:
    """:func:`convert_pair` for every ``(image, label)`` member pair of ``found`` (``{split: pairs}``), written
    under ``root`` at ``rename(image, label)``; returns ``{split: [(image, label) as written]}`` for
    :func:`write_lists`. ``progress`` > 0: a line every that many pairs."""
    lists: dict[str, list[tuple[str, str]]] = {}
    for split, items in found.items():
        lists[split] = []
        for n, (image, label) in enumerate(items, start=1):
            image_out, label_out = rename(image, label)
            convert_pair(images, image, labels, label, facts, root, image_out, label_out)
            lists[split].append((image_out, label_out))
            if progress and n % progress == 0:
                print(f"{split}: {n}/{len(items)}", flush=True)
    return lists


def write_lists(root: str, lists: dict[str, list[tuple[str, str]]], facts: DatasetFacts, expect_real: bool) -> None:
    """``root/<facts.lists[role]>``, one ``image label`` pair a line; with ``expect_real`` each list must hold the
    real archive's count (:attr:`DatasetFacts.counts`)."""
    for role, pairs in lists.items():
        if expect_real and len(pairs) != facts.counts[role]:
            raise SegKDError(f"{facts.lists[role]} would have {len(pairs)} samples, expected {facts.counts[role]} "
                             f"from the real {facts.title} archives (--no-expect-real for other data)")
        if not pairs:
            raise SegKDError(f"{facts.lists[role]}: no {role} samples in the archives")
    for role, pairs in lists.items():
        path = os.path.join(root, facts.lists[role])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(f"{image} {label}\n" for image, label in pairs)
        print(f"{facts.lists[role]}: {len(pairs)} samples", flush=True)


@contextmanager
def staged(dest: str) -> Iterator[Optional[str]]:
    """``DEST.partial`` to build the dataset in, renamed to ``DEST`` when the block ends without an error and
    removed when it fails; yields None (nothing to do) when ``DEST`` already exists."""
    dest = os.path.abspath(dest)
    if os.path.exists(dest):
        print(f"{dest}: already exists, nothing to do (to rebuild, remove it or choose another --dest)")
        yield None
        return
    partial = dest + ".partial"
    if os.path.isdir(partial):
        shutil.rmtree(partial)  # left by an interrupted run
    os.makedirs(partial)
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    os.replace(partial, dest)
    print(f"{dest}: ready", flush=True)


def common_arguments(parser, flags: tuple[str, ...]) -> None:
    """--dest, the archive flags, --skip-checksum and --expect-real."""
    import argparse

    parser.add_argument("--dest", required=True, help="output dataset root (data.root); must not exist yet")
    for flag in flags:
        parser.add_argument(flag, help="the downloaded archive")
    parser.add_argument("--skip-checksum", action="store_true", help="do not check a published checksum (tests)")
    parser.add_argument("--expect-real", action=argparse.BooleanOptionalAction, default=True,
                        help="assert the real archives' sample counts (default: on)")
