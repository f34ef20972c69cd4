"""Build ADE20K (the SceneParsing benchmark's 150 classes) from ``ADEChallengeData2016.zip``: 20,210 training and
2,000 validation images.

    python -m tools.prepare_ade20k --dest datasets/ade20k --archive ADEChallengeData2016.zip

Download it from http://sceneparsing.csail.mit.edu/ (http://data.csail.mit.edu/places/ADEchallenge/
ADEChallengeData2016.zip). DEST ends up with ``images/{training,validation}/ADE_*.jpg`` (copied as they are),
``annotations/{training,validation}/ADE_*.png`` (the stored 0..150 mapped by data/datasets/ade20k.py: 0 "other" to
255, 1..150 to 0..149) and ``list/train.txt``, ``list/val.txt``. Every image needs its annotation and every
annotation its image; a value above 150 is an error naming the member. Built in ``DEST.partial``, renamed when
complete (tools/zip_archives.py).
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Optional

from data.datasets import get_dataset
from tools.zip_archives import ZipArchive, common_arguments, convert_all, members, open_archive, staged, write_lists
from util.errors import SegKDError

ROOT = "ADEChallengeData2016"
# The SHA-1 GluonCV's scripts/datasets/ade20k.py checks this download against (no md5 is published by MIT).
ARCHIVE = ZipArchive("ADEChallengeData2016.zip", "--archive", "http://sceneparsing.csail.mit.edu/",
                     ("sha1", "219e1696abb36c8ba3a3afe7fb2f4b4606a897c7"))
SPLITS = {"train": "training", "val": "validation"}


def pairs(names: list[str], archive: str) -> dict[str, list[tuple[str, str]]]:
    """{train|val: [(image member, annotation member)]}, sorted; an image or annotation alone is an error."""
    present = set(names)
    found: dict[str, list[tuple[str, str]]] = {}
    for role, folder in SPLITS.items():
        images = sorted(n for n in names if re.fullmatch(rf"{ROOT}/images/{folder}/[^/]+\.jpg", n))
        found[role] = []
        for image in images:
            label = f"{ROOT}/annotations/{folder}/{image.rsplit('/', 1)[1][:-4]}.png"
            if label not in present:
                raise SegKDError(f"{archive}: has no {label} for the image {image}")
            found[role].append((image, label))
        paired = {label for _, label in found[role]}
        for name in sorted(n for n in names if re.fullmatch(rf"{ROOT}/annotations/{folder}/[^/]+\.png", n)):
            if name not in paired:
                raise SegKDError(f"{archive}: {name} has no image {ROOT}/images/{folder}/...jpg")
    if not any(found.values()):
        raise SegKDError(f"{archive}: no {ROOT}/images/training/*.jpg (is it {ARCHIVE.filename}?)")
    return found


def prepare(dest: str, archive: Optional[str], skip_checksum: bool = False, expect_real: bool = True) -> None:
    facts = get_dataset("ade20k")
    with open_archive(archive, ARCHIVE, skip_checksum) as zf, staged(dest) as root:
        if root is None:
            return
        lists = convert_all(zf, zf, pairs(members(zf), zf.filename), facts, root,
                            lambda image, label: (image[len(ROOT) + 1:], label[len(ROOT) + 1:]), progress=2000)
        write_lists(root, lists, facts, expect_real)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Prepare ADE20K (ADEChallengeData2016, 150 classes) for segkd.")
    common_arguments(parser, ("--archive",))
    args = parser.parse_args(argv)
    try:
        prepare(args.dest, args.archive, args.skip_checksum, args.expect_real)
    except SegKDError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
