"""Build Cityscapes (gtFine, 19 trainIds) from its two official archives: 2,975 training and 500 validation images.

    python -m tools.prepare_cityscapes --dest datasets/cityscapes \
        --images leftImg8bit_trainvaltest.zip --labels gtFine_trainvaltest.zip

Download both from https://www.cityscapes-dataset.com/downloads/ (an account is needed). DEST ends up with
``leftImg8bit/{train,val}/<city>/<id>_leftImg8bit.png`` (the images, copied as they are),
``gtFine/{train,val}/<city>/<id>_gtFine_labelTrainIds.png`` (the ``_labelIds.png`` of gtFine mapped to the 19
trainIds by the official label table, data/datasets/cityscapes.py; every other id is 255) and ``list/train.txt``,
``list/val.txt``. The test split is left out: its gtFine labels are placeholders. Every image needs its labelIds and
every labelIds its image; a label value outside the 34 labelIds is an error naming the member. The dataset is built
in ``DEST.partial`` and renamed to DEST when complete (tools/zip_archives.py).
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Optional

from data.datasets import get_dataset
from tools.zip_archives import ZipArchive, common_arguments, convert_all, members, open_archive, staged, write_lists
from util.errors import SegKDError

SITE = "https://www.cityscapes-dataset.com/downloads/"
# SHA-1s as GluonCV's scripts/datasets/cityscapes.py checks them (the downloads page's md5s are not recorded here).
IMAGES = ZipArchive("leftImg8bit_trainvaltest.zip", "--images", SITE,
                    ("sha1", "2c0b77ce9933cc635adda307fbba5566f5d9d404"))
LABELS = ZipArchive("gtFine_trainvaltest.zip", "--labels", SITE, ("sha1", "99f532cb1af174f5fcc4c5bc8feea8c66246ddbc"))
SPLITS = ("train", "val")
_IMAGE = re.compile(r"leftImg8bit/(train|val)/([^/]+)/(\2_\d{6}_\d{6})_leftImg8bit\.png")


def pairs(image_members: list[str], label_members: set[str], labels_name: str) -> dict[str, list[tuple[str, str]]]:
    """{split: [(image member, labelIds member)]}, sorted; an image without its labelIds is an error."""
    found: dict[str, list[tuple[str, str]]] = {split: [] for split in SPLITS}
    for name in sorted(image_members):
        m = _IMAGE.fullmatch(name)
        if not m:
            continue
        split, city, stem = m.groups()
        label = f"gtFine/{split}/{city}/{stem}_gtFine_labelIds.png"
        if label not in label_members:
            raise SegKDError(f"{labels_name}: has no {label} for the image {name}")
        found[split].append((name, label))
    images = {label for split in found.values() for _, label in split}
    for name in sorted(label_members):
        if re.fullmatch(r"gtFine/(train|val)/[^/]+/[^/]+_gtFine_labelIds\.png", name) and name not in images:
            raise SegKDError(f"{labels_name}: {name} has no image leftImg8bit/... in {IMAGES.filename}")
    return found


def _trainids(image: str, label: str) -> tuple[str, str]:
    """Where a pair is written: the image as in the archive, the label as its trainIds file."""
    return image, label.replace("_gtFine_labelIds.png", "_gtFine_labelTrainIds.png")


def prepare(dest: str, images: Optional[str], labels: Optional[str], expect_real: bool = True,
            skip_checksum: bool = False) -> None:
    facts = get_dataset("cityscapes")
    with open_archive(images, IMAGES, skip_checksum) as zi, open_archive(labels, LABELS, skip_checksum) as zl, \
            staged(dest) as root:
        if root is None:
            return
        found = pairs(members(zi), set(members(zl)), zl.filename)
        lists = convert_all(zi, zl, found, facts, root, _trainids, progress=500)
        write_lists(root, lists, facts, expect_real)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Prepare Cityscapes (gtFine, 19 classes) for segkd.")
    common_arguments(parser, ("--images", "--labels"))
    args = parser.parse_args(argv)
    try:
        prepare(args.dest, args.images, args.labels, args.expect_real, args.skip_checksum)
    except SegKDError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
