"""The evaluation protocol of hszhao/semseg's ``tool/test.py``, each part configurable.

For one image H×W and each scale s: resize so the long side is ``round(base_size * s)``; pad to at least
the crop with the mean colour; slide a ``crop_size`` window with stride ``ceil(crop * stride_rate)``; each
window's logits are upsampled to the crop and turned into softmax probabilities, averaged with those of
the flipped window when ``flip``; overlapping windows are averaged; the padding is cut and the
probabilities are resized back to H×W. Probabilities are averaged over scales and the argmax is the label.

mmsegmentation's VOC protocol is the other one a published number comes with: ``resize="short"`` (the short
side to ``base_size * s``, the long side at most four times that: mmseg's ``Resize(scale=(2048, 512),
keep_ratio=True)`` for base_size 512) and ``mode="whole"`` (the whole resized image through the network at once,
no padding, no windows; its logits zoomed to the resized image). Two details stay semseg's here: the image is
resized as float32 (mmcv resizes the uint8 image), and softmax probabilities, not logits, are resized back to
H×W before the argmax.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from data.transforms import IMAGENET_MEAN, normalize
from model.losses import resize_logits
from util.distributed import unwrap


def _to_network(image: np.ndarray, device: torch.device) -> torch.Tensor:
    """H×W×3 RGB array -> 1×3×H×W normalised tensor on ``device``."""
    t = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).to(device)
    return normalize(t)[None]


@torch.inference_mode()
def window_probs(model: nn.Module, windows: torch.Tensor, flip: bool, batch: int = 8) -> torch.Tensor:
    """Softmax probabilities B×K×h×w of B×3×h×w windows at window resolution (flip-averaged if asked); the
    logits are zoomed with the model's ``align_corners`` (True for a model without the attribute)."""
    outs = []
    ac = getattr(unwrap(model), "align_corners", True)
    for chunk in windows.split(batch):
        logits = resize_logits(model(chunk, aux=False)["out"], tuple(chunk.shape[-2:]), ac)
        probs = F.softmax(logits.float(), dim=1)
        if flip:
            flipped = resize_logits(model(chunk.flip(3), aux=False)["out"], tuple(chunk.shape[-2:]), ac)
            probs = (probs + F.softmax(flipped.float(), dim=1).flip(3)) / 2
        outs.append(probs)
    return torch.cat(outs)


def _windows(
    image: np.ndarray, crop: int, stride_rate: float, device: torch.device,
) -> tuple[torch.Tensor, list[tuple[int, int]], tuple[int, int, int, int]]:
    """The sliding windows of one (already scaled) H×W×3 image: (N×3×crop×crop windows, their top-left corners,
    (top, left, padded h, padded w)); the image is padded with the mean colour to at least the crop."""
    h, w = image.shape[:2]
    pad_h, pad_w = max(crop - h, 0), max(crop - w, 0)
    top, left = pad_h // 2, pad_w // 2
    if pad_h or pad_w:
        mean = [float(m) for m in IMAGENET_MEAN]
        image = cv2.copyMakeBorder(image, top, pad_h - top, left, pad_w - left, cv2.BORDER_CONSTANT, value=mean)
    ph, pw = image.shape[:2]
    stride = int(math.ceil(crop * stride_rate))
    grid_h = int(math.ceil(float(ph - crop) / stride) + 1)
    grid_w = int(math.ceil(float(pw - crop) / stride) + 1)
    tensor = _to_network(image, device)
    boxes = []
    for gy in range(grid_h):
        for gx in range(grid_w):
            y0 = min(gy * stride, ph - crop)
            x0 = min(gx * stride, pw - crop)
            boxes.append((y0, x0))
    windows = torch.cat([tensor[:, :, y:y + crop, x:x + crop] for y, x in boxes])
    return windows, boxes, (top, left, ph, pw)


def _stitch(
    probs: torch.Tensor, boxes: list[tuple[int, int]], geometry: tuple[int, int, int, int], size: tuple[int, int],
    classes: int, crop: int, device: torch.device,
) -> torch.Tensor:
    """K×H×W probabilities of one image from its windows' N×K×crop×crop: overlaps averaged, padding cut."""
    top, left, ph, pw = geometry
    total = torch.zeros(classes, ph, pw, device=device)
    count = torch.zeros(1, ph, pw, device=device)
    for (y, x), p in zip(boxes, probs):
        total[:, y:y + crop, x:x + crop] += p
        count[:, y:y + crop, x:x + crop] += 1
    total /= count
    return total[:, top:top + size[0], left:left + size[1]]


MODES = ("slide", "whole")
RESIZES = ("long", "short")


def scaled_size(h: int, w: int, size: float, resize: str = "long") -> tuple[int, int]:
    """(new h, new w) keeping the aspect ratio: the long side to ``size`` (semseg: ``round``), or the short side
    to ``size`` with the long side at most ``4 * size`` (mmcv's ``rescale_size``: ``int(x * factor + 0.5)``)."""
    if resize == "long":
        long_size = int(round(size))
        return (long_size, int(round(long_size * w / h))) if h > w else (int(round(long_size * h / w)), long_size)
    factor = min(size / min(h, w), 4 * size / max(h, w))
    return int(h * factor + 0.5), int(w * factor + 0.5)


def predict_probs(
    model: nn.Module, image: np.ndarray, classes: int, base_size: int, crop: int,
    scales: Sequence[float], flip: bool, stride_rate: float, device: torch.device,
    mode: str = "slide", resize: str = "long",
) -> torch.Tensor:
    """K×H×W class probabilities for an H×W×3 RGB image (uint8 or float, resized as float32), averaged over
    ``scales`` (and flips); ``mode`` and ``resize`` as in the module's docstring (``crop`` and
    ``stride_rate`` are unused by ``mode="whole"``)."""
    return predict_probs_batch(model, [image], classes, base_size, crop, scales, flip, stride_rate, device, mode,
                               resize)[0]


def predict_probs_batch(
    model: nn.Module, images: Sequence[np.ndarray], classes: int, base_size: int, crop: int,
    scales: Sequence[float], flip: bool, stride_rate: float, device: torch.device,
    mode: str = "slide", resize: str = "long", batch: int = 1,
) -> list[torch.Tensor]:
    """:func:`predict_probs` of several images, their windows through the network together: at each scale the
    windows of all ``images`` (``mode="slide"``: all crop×crop; ``"whole"``: the images whose resized size is the
    same) go in forwards of up to ``8 * batch`` windows. ``batch=1`` with one image is one image at a time in
    forwards of up to 8 of its windows (semseg's test.py), bitwise; together the logits move by float rounding
    only (oneDNN and cuDNN pick their kernels by batch size)."""
    totals = [torch.zeros(classes, *im.shape[:2], device=device) for im in images]
    for scale in scales:
        scaled = []
        for image in images:
            h, w = image.shape[:2]
            nh, nw = scaled_size(h, w, base_size * scale, resize)
            # the float image is resized (semseg's test.py converts first): a uint8 resize rounds to whole grey levels
            scaled.append(cv2.resize(image.astype(np.float32, copy=False), (nw, nh), interpolation=cv2.INTER_LINEAR))
        for i, probs in enumerate(_scaled_probs(model, scaled, classes, crop, stride_rate, flip, device, mode,
                                                8 * batch)):
            totals[i] += F.interpolate(probs[None], size=images[i].shape[:2], mode="bilinear", align_corners=False)[0]
    return [total / len(scales) for total in totals]


def _scaled_probs(
    model: nn.Module, images: list[np.ndarray], classes: int, crop: int, stride_rate: float, flip: bool,
    device: torch.device, mode: str, chunk: int,
) -> list[torch.Tensor]:
    """K×h×w probabilities of each (already scaled) image; the windows of images of one window shape are
    concatenated and go through :func:`window_probs` in forwards of up to ``chunk``."""
    if mode == "whole":
        cut = [(_to_network(image, device), None, None) for image in images]
    else:
        cut = [_windows(image, crop, stride_rate, device) for image in images]
    out: list[Optional[torch.Tensor]] = [None] * len(images)
    for shape in dict.fromkeys(tuple(w.shape[-2:]) for w, _, _ in cut):  # in order of first appearance
        group = [i for i, (w, _, _) in enumerate(cut) if tuple(w.shape[-2:]) == shape]
        probs = window_probs(model, torch.cat([cut[i][0] for i in group]), flip, chunk)
        for i, p in zip(group, probs.split([len(cut[i][0]) for i in group])):
            _, boxes, geometry = cut[i]
            out[i] = p[0] if mode == "whole" else _stitch(p, boxes, geometry, images[i].shape[:2], classes, crop,
                                                          device)
    return out


def predict(
    model: nn.Module, image: np.ndarray, classes: int, base_size: int, crop: int,
    scales: Sequence[float], flip: bool, stride_rate: float, device: torch.device,
    mode: str = "slide", resize: str = "long",
) -> np.ndarray:
    """H×W int64 class map for an H×W×3 RGB image: the argmax of :func:`predict_probs`."""
    probs = predict_probs(model, image, classes, base_size, crop, scales, flip, stride_rate, device, mode, resize)
    return probs.argmax(0).cpu().numpy()


def predict_batch(
    model: nn.Module, images: Sequence[np.ndarray], classes: int, base_size: int, crop: int,
    scales: Sequence[float], flip: bool, stride_rate: float, device: torch.device,
    mode: str = "slide", resize: str = "long", batch: int = 1,
) -> list[np.ndarray]:
    """:func:`predict` of several images, their windows through the network together (:func:`predict_probs_batch`)."""
    probs = predict_probs_batch(model, images, classes, base_size, crop, scales, flip, stride_rate, device, mode,
                                resize, batch)
    return [p.argmax(0).cpu().numpy() for p in probs]
