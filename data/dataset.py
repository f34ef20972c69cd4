"""Semantic segmentation lists, image/label readers and the training dataset.

A list file (hszhao/semseg's format) has one sample a line, ``image_path label_path``, both relative
to the dataset root, e.g. ``JPEGImages/2007_000032.jpg SegmentationClassAug/2007_000032.png``.

Images: a plain JPEG (8-bit, grey or 3 colour components, ending in its EOI marker) is decoded by OpenCV from the
file's bytes (``cv2.imdecode``, EXIF orientation ignored): the same pixels as PIL's ``convert("RGB")``, which
tests/test_loader_levers.py checks, in 0.8 of the time. Every other file (PNG, CMYK JPEG, a JPEG cut short or with
bytes after its end) goes through PIL, which refuses a truncated file with one line where ``cv2.imread`` may return a
half-grey image.

A list of unlabelled images (``data.unlabeled_list``, SSLD) has one image path a line and no label column:
:func:`read_image_list`, :class:`UnlabeledDataset`, which never looks for a label file.

Labels are class indices: VOC's PNGs are palette ("P") images whose pixel values are the indices and
whose palette only colours them. They are read with PIL so the indices are kept; reading them with
``cv2.imread(..., IMREAD_GRAYSCALE)`` would return the luminance of the colours, which is silently wrong.
"""

from __future__ import annotations

import io
import os
from typing import Callable, Optional

import cv2
import numpy as np
import torch
from PIL import Image

from data.transforms import ToTensor
from util.config import UNLABELED_LABEL
from util.errors import SegKDError

_TO_TENSOR = ToTensor()
_LABEL_MODES = ("P", "L", "I", "I;16", "I;16B", "I;16L", "I;16N")
_RGB = getattr(cv2, "IMREAD_COLOR_RGB", None)  # OpenCV 4.11+; older ones decode BGR and we swap
_JPEG_FLAGS = (cv2.IMREAD_COLOR if _RGB is None else _RGB) | cv2.IMREAD_IGNORE_ORIENTATION


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


def read_image_list(root: str, list_file: str, key: str = "data.unlabeled_list") -> list[str]:
    """The absolute image paths of a list of unlabelled images (one path a line, relative to ``root``; CRLF and
    blank lines tolerated). An unreadable or empty list, a line of two fields (a labelled pair: those go in
    ``data.train_list``), an absolute path or a missing image is one line naming ``key`` and the file."""
    path = resolve_list(root, list_file)
    try:
        with open(path, encoding="utf-8", newline=None) as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SegKDError(f"{key}={list_file}: cannot read {path} ({exc})") from None
    root = os.path.abspath(root)
    images = []
    for lineno, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{key}={list_file}: {path}:{lineno}"
        if len(fields) != 1:
            raise SegKDError(f"{where}: expected one image path, got {len(fields)} fields ({line.strip()!r}); "
                             "this list holds unlabelled images only, labelled pairs go in data.train_list")
        if fields[0].startswith("/"):
            raise SegKDError(f"{where}: path {fields[0]!r} must be relative to the dataset root {root}")
        image = os.path.join(root, fields[0])
        if not os.path.isfile(image):
            raise SegKDError(f"{where}: file not found: {image}")
        images.append(image)
    if not images:
        raise SegKDError(f"{key}={list_file}: {path} lists no image")
    return images


def read_image(path: str) -> np.ndarray:
    """An image file as an HxWx3 uint8 RGB array (grey, CMYK and palette images are converted). A plain JPEG is
    decoded by OpenCV, anything else by PIL (module docstring); the pixels are PIL's either way."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise SegKDError(f"{path}: cannot read image ({exc})") from exc
    if plain_jpeg(data):
        image = cv2.imdecode(np.frombuffer(data, np.uint8), _JPEG_FLAGS)
        if image is not None and image.ndim == 3 and image.shape[2] == 3:
            return image if _RGB is not None else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return decode_pil(data, path)


def decode_pil(data: bytes, path: str) -> np.ndarray:
    """``data`` (the bytes of the image file ``path``) decoded by PIL as HxWx3 uint8 RGB; a file PIL cannot read
    (truncated, not an image) is one :class:`SegKDError` line naming ``path``."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            # PIL raises on a truncated file, where cv2.imread may return a half-grey image.
            return np.asarray(image.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as exc:
        raise SegKDError(f"{path}: cannot read image ({exc})") from exc


def plain_jpeg(data: bytes) -> bool:
    """Whether ``data`` is a whole baseline/progressive JPEG that OpenCV decodes to PIL's pixels: starts with SOI,
    ends with EOI (a file cut short does not; one with bytes after EOI goes to PIL too), and its frame header says
    8-bit samples with 1 or 3 components (CMYK's 4 are converted differently by the two)."""
    if len(data) < 4 or data[:2] != b"\xff\xd8" or data[-2:] != b"\xff\xd9":
        return False
    i = 2
    while i + 9 < len(data):  # walk the marker segments up to the frame header (SOFn)
        if data[i] != 0xFF:
            return False
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # SOFn (not DHT, JPG, DAC)
            return data[i + 4] == 8 and data[i + 9] in (1, 3)
        elif marker == 0x01 or 0xD0 <= marker <= 0xD8:  # segments without a length
            i += 2
        else:
            i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return False


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
    # two vectorised comparisons (0.02 ms at 500x375); the histogram only to name the values of a bad label
    outside = label >= classes
    if 0 <= ignore_label <= 255:
        outside &= label != ignore_label
    if not outside.any():
        return
    bad = np.flatnonzero(np.bincount(label[outside].ravel(), minlength=256))
    shown = ", ".join(str(v) for v in bad[:8]) + (", ..." if bad.size > 8 else "")
    raise SegKDError(
        f"{path}: label values [{shown}] are outside 0..{classes - 1} and not ignore_label {ignore_label}"
    )


class SegDataset(torch.utils.data.Dataset):
    """Image/label pairs from a list file.

    ``dataset[i]`` is ``(image, label)``: image FloatTensor 3xHxW, label LongTensor HxW (values in
    0..classes-1 or ignore_label), after ``transform``, which takes and returns an ``(image, label)`` pair
    of numpy arrays (HxWx3 uint8 RGB, HxW uint8) and may end with ToTensor. Without a transform the
    image is returned unnormalised on the 0..255 scale. With ``to_tensor=False`` the transform's numpy pair is
    returned as it is: the training loader's collate (data/loader.py, ``collate_crops``) turns a batch of them into
    tensors in one pass.
    """

    def __init__(
        self,
        root: str,
        list_file: str,
        classes: int,
        ignore_label: int = 255,
        transform: Optional[Callable[[np.ndarray, np.ndarray], tuple]] = None,
        to_tensor: bool = True,
    ) -> None:
        self.root = root
        self.list_file = list_file
        self.classes = classes
        self.ignore_label = ignore_label
        self.transform = transform
        self.to_tensor = to_tensor
        self.samples = read_list(root, list_file)

    def __len__(self) -> int:
        return len(self.samples)

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample ``index`` as read and checked, before any transform: (HxWx3 uint8 RGB, HxW uint8)."""
        image_path, label_path = self.samples[index]
        image = read_image(image_path)
        label = read_label(label_path)
        if image.shape[:2] != label.shape:
            raise SegKDError(
                f"{image_path} is {image.shape[1]}x{image.shape[0]} but its label {label_path} is "
                f"{label.shape[1]}x{label.shape[0]} (WxH)"
            )
        check_label(label, self.classes, self.ignore_label, label_path)
        return image, label

    def __getitem__(self, index: int):
        image, label = self.read(index)
        if self.transform is not None:
            image, label = self.transform(image, label)
        if self.to_tensor and isinstance(image, np.ndarray):
            image, label = _TO_TENSOR(image, label)
        return image, label


class UnlabeledDataset(torch.utils.data.Dataset):
    """Images without labels (``data.unlabeled_list``), for the label-free distillation terms only (SSLD).

    ``dataset[i]`` has :class:`SegDataset`'s form. Its "label" is no file: every pixel of the image is
    :data:`~util.config.UNLABELED_LABEL` before ``transform``, which moves it as a label (nearest neighbour) and pads
    it with ``ignore_label``, so after the augmentation the image's own pixels hold UNLABELED_LABEL (the distiller's
    CE ignores them, the label-free terms count them) and the crop's padding and rotated-in corners ignore_label
    (no term counts them).
    """

    def __init__(
        self,
        root: str,
        list_file: str,
        transform: Optional[Callable[[np.ndarray, np.ndarray], tuple]] = None,
        to_tensor: bool = True,
    ) -> None:
        self.root, self.list_file = root, list_file
        self.transform, self.to_tensor = transform, to_tensor
        self.images = read_image_list(root, list_file)

    def __len__(self) -> int:
        return len(self.images)

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Image ``index`` (HxWx3 uint8 RGB) and its label of UNLABELED_LABEL everywhere (HxW uint8)."""
        image = read_image(self.images[index])
        return image, np.full(image.shape[:2], UNLABELED_LABEL, np.uint8)

    __getitem__ = SegDataset.__getitem__  # the same steps on this read(): transform, then tensors
