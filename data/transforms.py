"""Paired image/label transforms: hszhao/semseg's training recipe.

Every transform is called as ``image, label = t(image, label)`` on numpy arrays (image HxWx3 uint8 or
float32 RGB, label HxW uint8) until ``ToTensor``, after which they are tensors (image 3xHxW float32,
label HxW int64). Images are kept on the 0..255 scale and ``Normalize`` uses ImageNet statistics
scaled by 255, as semseg does, so padding with the mean becomes 0 after normalisation.

Randomness comes from Python's ``random`` module: DataLoader seeds it in each worker from torch's seed,
so a run is reproducible from ``torch.manual_seed`` / ``random.seed``.

Labels are only ever moved with nearest-neighbour sampling and padded with ``ignore_label``, so a
transform never creates a label value that was not in its input (other than ignore_label padding).
"""

from __future__ import annotations

import numbers
import random
from collections.abc import Sequence
from typing import Union

import cv2
import numpy as np
import torch

from util.errors import SegKDError

IMAGENET_MEAN = [0.485 * 255, 0.456 * 255, 0.406 * 255]
IMAGENET_STD = [0.229 * 255, 0.224 * 255, 0.225 * 255]

Size = Union[int, Sequence[int]]


def _check_range(name: str, values: Sequence[float], low: float = -float("inf")) -> tuple[float, float]:
    if len(values) != 2 or not values[0] <= values[1] or values[0] < low:
        raise SegKDError(f"{name}: expected (min, max) with {low} <= min <= max, got {list(values)}")
    return float(values[0]), float(values[1])


def _pair_size(size: Size) -> tuple[int, int]:
    """``crop_size`` as (height, width)."""
    hw = (size, size) if isinstance(size, numbers.Integral) else tuple(size)
    if len(hw) != 2 or not all(isinstance(s, numbers.Integral) and s > 0 for s in hw):
        raise SegKDError(f"crop_size: expected a positive int or (height, width), got {size!r}")
    return int(hw[0]), int(hw[1])


class Compose:
    """Apply transforms in order to an (image, label) pair."""

    def __init__(self, transforms: Sequence) -> None:
        self.transforms = list(transforms)

    def __call__(self, image, label):
        for t in self.transforms:
            image, label = t(image, label)
        return image, label

    def __repr__(self) -> str:
        return f"Compose({self.transforms})"


class ToFloat:
    """The image as float32 (label untouched), so that every later resize, rotation and blur interpolates
    without rounding and padding takes the exact mean: semseg's ``np.float32(image)`` before its transforms."""

    def __call__(self, image: np.ndarray, label: np.ndarray):
        return image.astype(np.float32, copy=False), label


class RandScale:
    """Resize by a factor drawn uniformly from ``scale``: image bilinear, label nearest."""

    def __init__(self, scale: Sequence[float] = (0.5, 2.0)) -> None:
        self.scale = _check_range("scale", scale, low=1e-6)

    def __call__(self, image: np.ndarray, label: np.ndarray):
        s = random.uniform(*self.scale)
        h, w = label.shape
        size = (max(1, round(w * s)), max(1, round(h * s)))  # cv2 takes (width, height)
        image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
        # NEAREST_EXACT samples pixel centres like INTER_LINEAR does; plain NEAREST is off by half a pixel.
        label = cv2.resize(label, size, interpolation=cv2.INTER_NEAREST_EXACT)
        return image, label


class RandRotate:
    """With probability ``p`` rotate by an angle (degrees) drawn from ``rotate`` about the centre.

    Corners uncovered by the rotation become ``padding`` (image) and ``ignore_label`` (label).
    """

    def __init__(
        self,
        rotate: Sequence[float] = (-10, 10),
        padding: Sequence[float] = IMAGENET_MEAN,
        ignore_label: int = 255,
        p: float = 0.5,
    ) -> None:
        self.rotate = _check_range("rotate", rotate)
        self.padding = [float(v) for v in padding]
        self.ignore_label = ignore_label
        self.p = p

    def __call__(self, image: np.ndarray, label: np.ndarray):
        if random.random() < self.p:
            angle = random.uniform(*self.rotate)
            h, w = label.shape
            matrix = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
            image = cv2.warpAffine(
                image, matrix, (w, h), flags=cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_CONSTANT, borderValue=self.padding,
            )
            label = cv2.warpAffine(
                label, matrix, (w, h), flags=cv2.INTER_NEAREST,
                borderMode=cv2.BORDER_CONSTANT, borderValue=self.ignore_label,
            )
        return image, label


class RandomGaussianBlur:
    """With probability ``p`` blur the image (not the label) with a ``radius`` x ``radius`` kernel."""

    def __init__(self, radius: int = 5, p: float = 0.5) -> None:
        if radius < 1 or radius % 2 == 0:
            raise SegKDError(f"blur radius: expected an odd positive kernel size, got {radius}")
        self.radius = radius
        self.p = p

    def __call__(self, image: np.ndarray, label: np.ndarray):
        if random.random() < self.p:
            image = cv2.GaussianBlur(image, (self.radius, self.radius), 0)
        return image, label


class RandomHorizontalFlip:
    """With probability ``p`` mirror image and label left-right together."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, image: np.ndarray, label: np.ndarray):
        if random.random() < self.p:
            image = cv2.flip(image, 1)
            label = cv2.flip(label, 1)
        return image, label


class Crop:
    """Pad to at least ``size`` (image with ``padding``, label with ``ignore_label``), then crop ``size``.

    ``size`` is an int or (height, width); ``crop_type`` "rand" picks a uniform offset, "center" the
    middle. Padding is split evenly on both sides, as in semseg.
    """

    def __init__(
        self,
        size: Size,
        crop_type: str = "rand",
        padding: Sequence[float] = IMAGENET_MEAN,
        ignore_label: int = 255,
    ) -> None:
        if crop_type not in ("rand", "center"):
            raise SegKDError(f"crop_type: expected 'rand' or 'center', got {crop_type!r}")
        self.crop_h, self.crop_w = _pair_size(size)
        self.crop_type = crop_type
        self.padding = [float(v) for v in padding]
        self.ignore_label = ignore_label

    def _pad(self, image: np.ndarray, label: np.ndarray):
        h, w = label.shape
        pad_h, pad_w = max(self.crop_h - h, 0), max(self.crop_w - w, 0)
        if pad_h or pad_w:
            top, left = pad_h // 2, pad_w // 2
            border = (top, pad_h - top, left, pad_w - left)
            image = cv2.copyMakeBorder(image, *border, cv2.BORDER_CONSTANT, value=self.padding)
            label = cv2.copyMakeBorder(label, *border, cv2.BORDER_CONSTANT, value=self.ignore_label)
        return image, label

    def __call__(self, image: np.ndarray, label: np.ndarray):
        image, label = self._pad(image, label)
        h, w = label.shape
        if self.crop_type == "rand":
            top, left = random.randint(0, h - self.crop_h), random.randint(0, w - self.crop_w)
        else:
            top, left = (h - self.crop_h) // 2, (w - self.crop_w) // 2
        rows, cols = slice(top, top + self.crop_h), slice(left, left + self.crop_w)
        return image[rows, cols], label[rows, cols]


class ToTensor:
    """HxWx3 image -> 3xHxW tensor (still 0..255; float32, or uint8 with ``uint8=True`` for an image that
    is uint8 already); HxW label -> int64 HxW tensor."""

    def __init__(self, uint8: bool = False) -> None:
        self.dtype = np.uint8 if uint8 else np.float32

    def __call__(self, image: np.ndarray, label: np.ndarray):
        if image.ndim != 3 or label.ndim != 2:
            raise ValueError(f"ToTensor expects HxWxC image and HxW label, got {image.shape}, {label.shape}")
        if self.dtype is np.uint8 and image.dtype != np.uint8:
            raise ValueError(f"ToTensor(uint8=True) expects a uint8 image, got {image.dtype}")
        # numpy does the copies: small torch ops in a process with several intra-op threads can be
        # 30x slower (DataLoader workers use one thread, but workers=0 runs here in the main process).
        image_t = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=self.dtype))
        label_t = torch.from_numpy(np.ascontiguousarray(label, dtype=np.int64))
        return image_t, label_t


# float32 constants of the one normalisation, shared by normalize() and normalize_into() so the two cannot differ
_MEAN32 = np.array(IMAGENET_MEAN, np.float32)
_INV_STD32 = np.float32(1.0) / np.array(IMAGENET_STD, np.float32)  # float32 division, as torch's 1.0 / tensor
_MEAN_STD: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}


def normalize(images: torch.Tensor) -> torch.Tensor:
    """``(images - mean) / std`` per channel with ImageNet's statistics on the 0..255 scale: 3xHxW or Bx3xHxW,
    uint8 or float, on any device -> float32 (a new tensor). The one normalisation of the project: the
    loader (:class:`Normalize`, :func:`normalize_into`), the trainer (uint8 batches) and inference all call it, so
    they cannot drift. It multiplies by the float32 reciprocal of std, as :func:`normalize_into` does."""
    if images.device not in _MEAN_STD:
        mean = torch.from_numpy(_MEAN32).view(3, 1, 1)
        inv_std = torch.from_numpy(_INV_STD32).view(3, 1, 1)
        _MEAN_STD[images.device] = (mean.to(images.device), inv_std.to(images.device))
    mean, inv_std = _MEAN_STD[images.device]
    return (images.float() - mean) * inv_std


def normalize_into(out: np.ndarray, image: np.ndarray) -> None:
    """:func:`normalize` of one HxWx3 image (float32 or uint8, any strides) written into ``out``, a 3xHxW float32
    array (a slot of the batch): the same float32 subtraction then multiplication, so bitwise the same values
    (tests/test_loader_levers.py), without the intermediate tensors. NumPy, not torch: a torch op in a main
    process with several intra-op threads can be many times slower on these sizes."""
    chw = image.transpose(2, 0, 1)
    np.subtract(chw, _MEAN32.reshape(3, 1, 1), out=out, dtype=np.float32)
    np.multiply(out, _INV_STD32.reshape(3, 1, 1), out=out)


class Normalize:
    """The loader's last step: :func:`normalize` on the 3xHxW image tensor, the label unchanged."""

    def __call__(self, image: torch.Tensor, label: torch.Tensor):
        return normalize(image), label


def set_opencv_threads(threads: int = 0, worker_id: int = 0) -> None:
    """``cv2.setNumThreads(threads)`` (``data.opencv_threads``), in a DataLoader worker (its ``worker_init_fn``,
    data/loader.py) and in the main process when it builds the transform; -1 leaves OpenCV's default pool. 0, the
    default, turns the pool off as semseg's train.py does: parallelism comes from the loader's workers, and with the
    pool on each of an 8-GPU node's 32 workers ran every resize, warp and blur on every core (this OpenCV build
    ignores ``OMP_NUM_THREADS``). OpenCV's results are not independent of its thread count (a resize or warp can
    differ by one float ulp), so the count is part of a run's arithmetic. ``worker_id`` is unused."""
    if threads >= 0:
        cv2.setNumThreads(threads)


def build_train_transform(
    crop_size: Size,
    scale: Sequence[float] = (0.5, 2.0),
    rotate: Sequence[float] = (-10, 10),
    ignore_label: int = 255,
    uint8: bool = False,
    to_tensor: bool = True,
    opencv_threads: int = 0,
) -> Compose:
    """semseg's training augmentation: scale, rotate, blur, flip, random crop, to tensor, normalise.

    The default works on the float32 image as semseg does: interpolation never rounds and padding is the
    exact mean, which normalises to 0. ``uint8=True`` (``train.uint8_batches``, a quarter of the bytes per
    batch for GPU input pipelines) keeps the image uint8 throughout and stops before normalising
    (the trainer calls :func:`normalize` on the batch): each interpolating step rounds to a whole grey level and
    padding is the mean rounded to (124, 116, 104), so its values are close to, not equal to, the default's
    (the bound is tested in tests/test_data.py). ``to_tensor=False`` stops after the crop (numpy HxWx3 image,
    HxW uint8 label): the training loader's collate (data/loader.py, ``collate_crops``) does the tensor and
    normalisation steps for the whole batch at once, to the same values. OpenCV runs on ``opencv_threads`` threads
    from here on (:func:`set_opencv_threads`; 0: one).
    """
    set_opencv_threads(opencv_threads)  # the main process's transforms (train.workers=0, the preflight batch)
    steps = [
        RandScale(scale),
        RandRotate(rotate, padding=IMAGENET_MEAN, ignore_label=ignore_label),
        RandomGaussianBlur(),
        RandomHorizontalFlip(),
        Crop(crop_size, crop_type="rand", padding=IMAGENET_MEAN, ignore_label=ignore_label),
    ]
    if to_tensor:
        steps.append(ToTensor(uint8=uint8))
    if uint8:
        return Compose(steps)
    return Compose([ToFloat(), *steps, Normalize()] if to_tensor else [ToFloat(), *steps])
