"""PASCAL VOC's colour map and palette PNG helpers (the other datasets' colours: data/datasets).

VOC stores labels as palette ("P" mode) PNGs: the pixel values are class indices and the palette only
colours them for viewing. Index 255 ("void", ignored in training and scoring) is drawn (224, 224, 192).
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np
from PIL import Image

from util.errors import SegKDError


def voc_palette(n: int = 256) -> list[int]:
    """The standard VOC colour map as a flat ``[r0, g0, b0, r1, ...]`` list of ``3 * n`` ints.

    Each index's bits are interleaved into the colour channels, most significant bit first, so
    neighbouring classes get well-separated colours.
    """
    palette = []
    for index in range(n):
        r = g = b = 0
        c = index
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette.extend((r, g, b))
    return palette


_PALETTE = voc_palette(256)


def colorize(label: np.ndarray, palette: Optional[list[int]] = None) -> Image.Image:
    """A "P" mode image of an HxW class-index array (values 0..255) with ``palette`` (768 ints; a named dataset's,
    data/datasets), VOC's by default."""
    if label.ndim != 2:
        raise ValueError(f"colorize expects an HxW label, got shape {label.shape}")
    image = Image.fromarray(label.astype(np.uint8), mode="P")
    image.putpalette(_PALETTE if palette is None else palette)
    return image


def save_label_png(path: str, label: np.ndarray) -> None:
    """Write an HxW uint8 class-index array as a VOC-style palette PNG (indices kept, not colours)."""
    colorize(label).save(path, format="PNG", optimize=False)


def load_names(path: str, what: str = "class names") -> list[str]:
    """The non-blank lines of a text file, stripped: class names, one a line (``what`` names the file's contents in
    the one-line error of a missing or empty file: the dataset facts' colours file reads through here too)."""
    if not os.path.isfile(path):
        raise SegKDError(f"{path}: {what} file not found")
    with open(path, encoding="utf-8") as f:
        names = [line.strip() for line in f if line.strip()]
    if not names:
        raise SegKDError(f"{path}: no {what}")
    return names
