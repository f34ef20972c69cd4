"""Semantic segmentation lists, image/label readers and the training dataset.

A list file (hszhao/semseg's format) has one sample a line, ``image_path label_path``, both relative
to the dataset root, e.g. ``JPEGImages/2007_000032.jpg SegmentationClassAug/2007_000032.png``.

Labels are class indices: VOC's PNGs are palette ("P") images whose pixel values are the indices and
whose palette only colours them. They are read with PIL so the indices are kept; reading them with
``cv2.imread(..., IMREAD_GRAYSCALE)`` would return the luminance of the colours, which is silently wrong.
"""

from __future__ import annotations

import os
from typing import Callable, Optional

import numpy as np
import torch
from PIL import Image

from data.transforms import ToTensor
from util.errors import SegKDError

_TO_TENSOR = ToTensor()
_LABEL_MODES = ("P", "L", "I", "I;16", "I;16B", "I;16L", "I;16N")


def resolve_list(root: str, list_file: str) -> str:
    """The list file's path: absolute as given, else relative to root, else relative to the cwd."""
    if os.path.isabs(list_file):
        return list_file
    under_root = os.path.join(root, list_file)
    if os.path.isfile(under_root) or not os.path.isfile(list_file):
        return under_root
    return list_file


def parse_line(line: str, where: str, root: str, check_files: bool = True) -> tuple[str, str]:
    """``(root/image, root/label)`` of one list line; ``where`` (``list:line``) names it in errors. With
    ``check_files`` a missing file is an error too (the loader's rule; the dataset checker reports files
    itself, so it parses with ``check_files=False``)."""
    fields = line.split()
    if len(fields) != 2:
        raise SegKDError(f"{where}: expected 'image_path label_path', got {len(fields)} field(s): {line!r}")
    paths = []
    for rel in fields:
        if rel.startswith("/"):
            raise SegKDError(f"{where}: path {rel!r} must be relative to the dataset root {root}")
        path = os.path.join(root, rel)
        if check_files and not os.path.isfile(path):
            raise SegKDError(f"{where}: file not found: {path}")
        paths.append(path)
    return paths[0], paths[1]


def read_list(root: str, list_file: str) -> list[tuple[str, str]]:
    """Parse a semseg-style list into absolute ``(image_path, label_path)`` pairs.

    CRLF line ends and blank lines are tolerated; anything else wrong names ``list_file:lineno``.
    """
    if not os.path.isdir(root):
        raise SegKDError(f"{root}: dataset root not found")
    path = resolve_list(root, list_file)
    if not os.path.isfile(path):
        raise SegKDError(f"{path}: list file not found")
    root = os.path.abspath(root)
    samples = []
    with open(path, encoding="utf-8", newline=None) as f:
        for lineno, line in enumerate(f, start=1):
            if line.strip():
                samples.append(parse_line(line.strip(), f"{path}:{lineno}", root))
    if not samples:
        raise SegKDError(f"{path}: list file has no samples")
    return samples


def read_image(path: str) -> np.ndarray:
    """An image file as an HxWx3 uint8 RGB array (grey, CMYK and palette images are converted)."""
    try:
        with Image.open(path) as image:
            # PIL raises on a truncated file, where cv2.imread would return a half-grey image.
            return np.asarray(image.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as exc:
        raise SegKDError(f"{path}: cannot read image ({exc})") from exc


def read_label(path: str) -> np.ndarray:
    """A label PNG as an HxW uint8 array of class indices (the indices of a palette image, not colours)."""
    try:
        with Image.open(path) as image:
            mode = image.mode
            if mode not in _LABEL_MODES:
                raise SegKDError(
                    f"{path}: label has mode {mode}; labels must be index or palette PNGs "
                    "(one class index per pixel, like VOC's SegmentationClass)"
                )
            label = np.asarray(image)
    except (OSError, SyntaxError, ValueError) as exc:
        raise SegKDError(f"{path}: cannot read label ({exc})") from exc
    if label.dtype != np.uint8:
        if label.size and (label.min() < 0 or label.max() > 255):
            raise SegKDError(f"{path}: label values must lie in 0..255, got {label.min()}..{label.max()}")
        label = label.astype(np.uint8)
    return label


def check_label(label: np.ndarray, classes: int, ignore_label: int, path: str) -> None:
    """Raise naming ``path`` and the offending values if any pixel is not a class index or ignore_label."""
    counts = np.bincount(label.ravel(), minlength=256)
    counts[:classes] = 0
    if 0 <= ignore_label < counts.size:
        counts[ignore_label] = 0
    bad = np.flatnonzero(counts)
    if bad.size:
        shown = ", ".join(str(v) for v in bad[:8]) + (", ..." if bad.size > 8 else "")
        raise SegKDError(
            f"{path}: label values [{shown}] are outside 0..{classes - 1} and not ignore_label {ignore_label}"
        )


class SegDataset(torch.utils.data.Dataset):
    """Image/label pairs from a list file.

    ``dataset[i]`` is ``(image, label)``: image FloatTensor 3xHxW, label LongTensor HxW (values in
    0..classes-1 or ignore_label), after ``transform``, which takes and returns an ``(image, label)`` pair
    of numpy arrays (HxWx3 uint8 RGB, HxW uint8) and may end with ToTensor. Without a transform the
    image is returned unnormalised on the 0..255 scale.
    """

    def __init__(
        self,
        root: str,
        list_file: str,
        classes: int,
        ignore_label: int = 255,
        transform: Optional[Callable[[np.ndarray, np.ndarray], tuple]] = None,
    ) -> None:
        self.root = root
        self.list_file = list_file
        self.classes = classes
        self.ignore_label = ignore_label
        self.transform = transform
        self.samples = read_list(root, list_file)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_path, label_path = self.samples[index]
        image = read_image(image_path)
        label = read_label(label_path)
        if image.shape[:2] != label.shape:
            raise SegKDError(
                f"{image_path} is {image.shape[1]}x{image.shape[0]} but its label {label_path} is "
                f"{label.shape[1]}x{label.shape[0]} (WxH)"
            )
        check_label(label, self.classes, self.ignore_label, label_path)
        if self.transform is not None:
            image, label = self.transform(image, label)
        if isinstance(image, np.ndarray):
            image, label = _TO_TENSOR(image, label)
        return image, label
