"""A generated stand-in for PASCAL VOC 2012 segmentation, in VOC's exact on-disk layout.

Run::

    python -m tools.synthetic --out datasets/synthetic --train 1464 --val 300 --classes 21 --seed 0 --workers 2
    python -m tools.synthetic --out datasets/synthetic_cpu --preset cpu    # the CPU tier: 96x96, 8 classes
    python -m tools.synthetic --out datasets/synthetic_cpu_ssld --preset cpu --unlabeled 2000   # + an unlabelled pool

It writes ``JPEGImages/<id>.jpg`` (quality 90), ``SegmentationClassAug/<id>.png`` (palette PNGs of class
indices with a 255 "void" band along object boundaries, like VOC), ``list/train_aug.txt`` and
``list/val.txt`` (``JPEGImages/<id>.jpg SegmentationClassAug/<id>.png``), ``ImageSets/Segmentation/
{train,val}.txt`` (ids) and ``synthetic.json`` (the arguments). Output is a pure function of
(preset, train, val, classes, seed): every image has its own RNG seeded from (seed, split, index), so
the worker count does not change a byte. An existing directory made with other arguments is an error.

``--unlabeled N`` (SSLD's pool, ``data.unlabeled_list``) also writes N images ``JPEGImages/unlabeled_<index>.jpg`` of
the same scenes (split id 2, so none repeats a train or val image) and ``list/unlabeled.txt`` (their paths only).
Their labels are withheld: rendered with the image and never written, so no run can read one. Without the flag the
output is byte for byte what it was before the flag existed (``synthetic.json`` records ``unlabeled`` only when set).

Two tiers (``--preset``): ``voc`` (the default, described below: VOC-sized scenes for GPU tables) and
``cpu`` (96x96 scenes with 8 classes that a CPU learns in minutes, for ``make demo``: rules in
tools/synthetic_cpu.py; it also writes ``names.txt``, one class name per line, for ``data.names``).

Scene rules of the voc tier (designed so that colour tells nothing and texture, shape and context tell the class):

* Images are 400-500 px on the long side with aspect 0.6-1.5. The background (class 0) is two regions
  split by a wavy horizon, each a smooth colour field, plus 0-3 background "distractor" patches.
* 1-5 objects (mostly 1-3) of sizes from 18% to 100% of the short side, each an ellipse, a straight-edged
  polygon or a smooth blob, painted over each other in order, so the label shows the occlusion.
* Every class is a texture family over two colours. Colours come from one palette shared by all classes
  (and the background) with per-instance jitter; each instance also draws its own orientation, phase
  and scale. Scale is relative to the object (cycles across it), so it survives RandScale.
* Confusable pairs: coarse vs fine stripes (1/9), checkers on ellipses vs on polygons (2/10: only the
  shape differs), small vs large dots (3/11), coarse vs fine noise (4/12).
* Context classes: a blotch patch inside a gradient object is class 13, a brick patch inside a ring
  object is class 14; the same blotch and brick textures elsewhere are background distractors.
* Classes 15-20 superimpose two families. Distractor patches also show low-contrast copies of the
  foreground families: contrast (not colour) separates them from objects.
* Whole-image lighting (gain and a linear gradient), Gaussian noise and JPEG compression come last.
For C < 21 the first C-1 classes are used (a context class's parent always has a smaller index).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from multiprocessing import Pool

import cv2
import numpy as np
from PIL import Image

from data.palette import save_label_png
from tools.synthetic_cpu import CPU_NAMES, render_cpu
from tools.synthetic_scene import background, colours, shape_points, texture
from util.errors import SegKDError

FORMAT_VERSION = 1
# Per tier: the scene function, the largest class count, and the defaults of --train, --val and --classes.
PRESETS = {"voc": {"max_classes": 21, "train": 1464, "val": 300, "classes": 21},
           "cpu": {"max_classes": len(CPU_NAMES), "train": 2000, "val": 300, "classes": len(CPU_NAMES)}}
SPLITS = {"train": 0, "val": 1}
UNLABELED = "unlabeled"  # the pool's split name; its scenes are seeded with split id 2
SPLIT_IDS = {**SPLITS, UNLABELED: 2}
ANY = ("ellipse", "polygon", "blob")
# One row per foreground class: (name, [(family, cycles across the object (lo, hi), extra)], shapes, parent)
CLASSES = [
    ("stripes_coarse", [("stripes", (2.5, 4.0), 0)], ANY, 0),
    ("checker_round", [("checker", (3.0, 5.0), 0)], ("ellipse",), 0),
    ("dots_small", [("dots", (4.0, 6.0), 0.2)], ANY, 0),
    ("noise_coarse", [("noise", (3.0, 5.0), 0)], ANY, 0),
    ("rings", [("rings", (2.5, 4.0), 0)], ANY, 0),
    ("zigzag", [("zigzag", (3.0, 5.0), 0)], ANY, 0),
    ("grid", [("grid", (3.0, 5.0), 0)], ANY, 0),
    ("gradient", [("gradient", (1.0, 1.0), 0)], ANY, 0),
    ("stripes_fine", [("stripes", (6.0, 9.0), 0)], ANY, 0),
    ("checker_angular", [("checker", (3.0, 5.0), 0)], ("polygon",), 0),
    ("dots_large", [("dots", (4.0, 6.0), 0.38)], ANY, 0),
    ("noise_fine", [("noise", (10.0, 16.0), 0)], ANY, 0),
    ("blotch_in_gradient", [("blotch", (3.0, 5.0), 0)], ANY, 8),
    ("bricks_in_rings", [("bricks", (4.0, 6.0), 0)], ANY, 5),
    ("stripes_dots", [("stripes", (2.5, 4.0), 0), ("dots", (4.0, 6.0), 0.3)], ANY, 0),
    ("checker_noise", [("checker", (3.0, 5.0), 0), ("noise", (10.0, 16.0), 0)], ANY, 0),
    ("zigzag_rings", [("zigzag", (3.0, 5.0), 0), ("rings", (2.5, 4.0), 0)], ANY, 0),
    ("grid_gradient", [("grid", (3.0, 5.0), 0), ("gradient", (1.0, 1.0), 0)], ANY, 0),
    ("stripes_cross", [("stripes", (6.0, 9.0), 0), ("stripes", (2.5, 4.0), 0)], ANY, 0),
    ("dots_bricks", [("dots", (4.0, 6.0), 0.2), ("bricks", (4.0, 6.0), 0)], ANY, 0),
]
CONTEXT_FAMILIES = [("blotch", (3.0, 5.0), 0), ("bricks", (4.0, 6.0), 0)]


def _paint(rng, image, label, cls, textures, contrast, pts, clip=None):
    """Fill outline ``pts`` with a texture mix; set label to ``cls`` where covered (None: leave label).

    ``clip`` = (x0, y0, alpha) restricts painting to another object's coverage. Returns the painted
    (x0, y0, alpha uint8) or None when the object falls outside the image.
    """
    h, w = label.shape
    x0, y0 = np.maximum(np.floor(pts.min(0)).astype(int), 0)
    x1, y1 = np.minimum(np.ceil(pts.max(0)).astype(int) + 1, (w, h))
    if clip is not None:
        cx0, cy0, calpha = clip
        x0, y0 = max(x0, cx0), max(y0, cy0)
        x1, y1 = min(x1, cx0 + calpha.shape[1]), min(y1, cy0 + calpha.shape[0])
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    alpha = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.fillPoly(alpha, [np.round((pts - (x0, y0)) * 16).astype(np.int32)], 255, cv2.LINE_AA, shift=4)
    if clip is not None:
        alpha = np.minimum(alpha, calpha[y0 - cy0:y1 - cy0, x0 - cx0:x1 - cx0])
    centre, size = pts.mean(0), float(np.ptp(pts, 0).max())
    theta = rng.uniform(0, math.pi)
    xs = (np.arange(x0, x1, dtype=np.float32) - centre[0])[None, :]
    ys = (np.arange(y0, y1, dtype=np.float32) - centre[1])[:, None]
    u, v = xs * math.cos(theta) + ys * math.sin(theta), ys * math.cos(theta) - xs * math.sin(theta)
    t = sum(texture(rng, fam, rng.uniform(*n), extra, u, v, size) for fam, n, extra in textures)
    t = 0.5 + (t / len(textures) - 0.5) * contrast
    c0, c1 = colours(rng, rng.uniform(90, 180))
    a = (alpha.astype(np.float32) / 255)[..., None]
    region = image[y0:y1, x0:x1]
    region += a * (c0 + t[..., None] * (c1 - c0) - region)
    if cls is not None:
        label[y0:y1, x0:x1][alpha >= 128] = cls
    return x0, y0, alpha


def _random_object(rng, h, w, lo=0.18, hi=1.0):
    size = min(h, w) * math.exp(rng.uniform(math.log(lo), math.log(hi)))
    return rng.uniform(0, w), rng.uniform(0, h), size


def _distractors(rng, image, label, classes):
    """Background patches (label stays 0): context textures, or low-contrast foreground textures."""
    for _ in range(rng.choice(4, p=[0.2, 0.4, 0.3, 0.1])):
        cx, cy, size = _random_object(rng, *label.shape, lo=0.15, hi=0.6)
        if rng.random() < 0.5:
            textures, contrast = [CONTEXT_FAMILIES[rng.integers(2)]], rng.uniform(0.6, 1.0)
        else:
            textures, contrast = CLASSES[rng.integers(classes - 1)][1], rng.uniform(0.12, 0.3)
        _paint(rng, image, label, None, textures, contrast, shape_points(rng, "blob", cx, cy, size))


def _objects(rng, image, label, classes):
    """1-5 foreground objects in paint order; a context class brings its parent and sits inside it."""
    h, w = label.shape
    for _ in range(1 + rng.choice(5, p=[0.3, 0.28, 0.2, 0.12, 0.1])):
        cls = 1 + int(rng.integers(classes - 1))
        _, _, shapes, parent = CLASSES[cls - 1]
        cx, cy, size = _random_object(rng, h, w)
        host_cls = parent or cls
        host_shape = CLASSES[host_cls - 1][2][rng.integers(len(CLASSES[host_cls - 1][2]))]
        if parent:
            size = max(size, 0.35 * min(h, w))
        pts = shape_points(rng, host_shape, cx, cy, size)
        painted = _paint(rng, image, label, host_cls, CLASSES[host_cls - 1][1], rng.uniform(0.55, 1.0), pts)
        if parent and painted is not None:
            inner_size = size * rng.uniform(0.3, 0.5)
            inner = shape_points(rng, shapes[rng.integers(len(shapes))], cx, cy, inner_size)
            _paint(rng, image, label, cls, CLASSES[cls - 1][1], rng.uniform(0.6, 1.0), inner, clip=painted)


def render(seed: int, split: str, index: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One scene: (image HxWx3 uint8 RGB, label HxW uint8 with 255 boundary bands)."""
    rng = np.random.default_rng([seed, SPLIT_IDS[split], index])
    long_side, aspect = rng.integers(400, 501), rng.uniform(0.6, 1.5)
    h, w = (round(long_side / aspect), long_side) if aspect >= 1 else (long_side, round(long_side * aspect))
    image = background(rng, h, w)
    label = np.zeros((h, w), np.uint8)
    _distractors(rng, image, label, classes)
    _objects(rng, image, label, classes)
    # Lighting: a global gain times a linear ramp in a random direction, then sensor noise.
    theta, slope = rng.uniform(0, 2 * math.pi), rng.uniform(0, 0.5)
    xs, ys = np.arange(w)[None, :] / w - 0.5, np.arange(h)[:, None] / h - 0.5
    ramp = xs * math.cos(theta) + ys * math.sin(theta)
    image *= (rng.uniform(0.7, 1.25) * (1 + slope * ramp)).astype(np.float32)[..., None]
    image += rng.standard_normal(image.shape, dtype=np.float32) * rng.uniform(2, 8)
    # VOC marks a band ~5 px wide along every object outline as void (255).
    kernel = np.ones((5, 5), np.uint8)
    label[cv2.dilate(label, kernel) != cv2.erode(label, kernel)] = 255
    return np.clip(image, 0, 255).astype(np.uint8), label


def _sample_id(split: str, index: int) -> str:
    return f"{split}_{index:06d}"


def _write_sample(task: tuple[str, int, str, int, int, str]) -> None:
    out, seed, split, index, classes, preset = task
    name = _sample_id(split, index)
    path = os.path.join(out, "JPEGImages", name + ".jpg")
    if preset == "cpu":
        # Quality 95 without chroma subsampling: at 96 px, 4:2:0 would wash out a 6 px texture whose two
        # colours differ mostly in hue (measured: its pixel std fell from 21 to 7, the noise level).
        image, label = render_cpu(seed, SPLIT_IDS[split], index, classes)
        Image.fromarray(image).save(path, "JPEG", quality=95, subsampling=0)
    else:
        image, label = render(seed, split, index, classes)
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
        if not ok:
            raise RuntimeError(f"JPEG encoding failed for {name}")
        with open(path, "wb") as f:
            f.write(jpeg.tobytes())
    if split != UNLABELED:  # the pool's labels are withheld: never written
        save_label_png(os.path.join(out, "SegmentationClassAug", name + ".png"), label)


def _check_args(out: str, train: int, val: int, classes: int, seed: int, workers: int, preset: str,
                unlabeled: int = 0) -> dict:
    if preset not in PRESETS:
        raise SegKDError(f"--preset: expected one of {', '.join(PRESETS)}, got {preset!r}")
    top = PRESETS[preset]["max_classes"]
    if not 2 <= classes <= top:
        raise SegKDError(f"--classes: expected 2..{top} for --preset {preset}, got {classes}")
    for flag, value in (("--train", train), ("--val", val), ("--workers", workers)):
        if value < 1:
            raise SegKDError(f"{flag}: expected a positive count, got {value}")
    if unlabeled < 0:
        raise SegKDError(f"--unlabeled: expected 0 or more images, got {unlabeled}")
    args = {"format": FORMAT_VERSION, "train": train, "val": val, "classes": classes, "seed": seed}
    if preset != "voc":  # a voc-tier record keeps the form it had before the tiers existed
        args["preset"] = preset
    if unlabeled:  # a set without a pool keeps the record it had before the flag existed
        args["unlabeled"] = unlabeled
    record = os.path.join(out, "synthetic.json")
    if os.path.isfile(record):
        with open(record, encoding="utf-8") as f:
            previous = json.load(f)
        if previous != args:
            raise SegKDError(f"{out}: holds a synthetic set made with {previous}, not {args}; "
                             "use another --out")
    elif os.path.isdir(out) and os.listdir(out):
        raise SegKDError(f"{out}: directory is not empty and is not a synthetic set; use another --out")
    return args


def _write_lists(out: str, ids: dict[str, list[str]]) -> None:
    for split, list_name in (("train", "train_aug.txt"), ("val", "val.txt")):
        lines = [f"JPEGImages/{i}.jpg SegmentationClassAug/{i}.png\n" for i in ids[split]]
        with open(os.path.join(out, "list", list_name), "w", encoding="utf-8") as f:
            f.writelines(lines)
        with open(os.path.join(out, "ImageSets", "Segmentation", split + ".txt"), "w", encoding="utf-8") as f:
            f.writelines(i + "\n" for i in ids[split])
    if ids.get(UNLABELED):  # image paths only (data.unlabeled_list)
        with open(os.path.join(out, "list", "unlabeled.txt"), "w", encoding="utf-8") as f:
            f.writelines(f"JPEGImages/{i}.jpg\n" for i in ids[UNLABELED])


def generate(out: str, train: int = 1464, val: int = 300, classes: int = 21, seed: int = 0,
             workers: int = os.cpu_count() or 1, preset: str = "voc", unlabeled: int = 0) -> None:
    """Write the synthetic set to ``out`` (see the module docstring); same arguments, same bytes. ``unlabeled``:
    the size of the unlabelled pool (images and ``list/unlabeled.txt``, no label written)."""
    args = _check_args(out, train, val, classes, seed, workers, preset, unlabeled)
    for sub in ("JPEGImages", "SegmentationClassAug", "list", os.path.join("ImageSets", "Segmentation")):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    # The record goes first so an interrupted run can be resumed with the same arguments.
    with open(os.path.join(out, "synthetic.json"), "w", encoding="utf-8") as f:
        json.dump(args, f, indent=2)
    counts = {"train": train, "val": val, UNLABELED: unlabeled}
    if preset == "cpu":
        with open(os.path.join(out, "names.txt"), "w", encoding="utf-8") as f:
            f.writelines(name + "\n" for name in CPU_NAMES[:classes])
    tasks = [(out, seed, split, i, classes, preset) for split in SPLIT_IDS for i in range(counts[split])]
    if workers == 1:
        for task in tasks:
            _write_sample(task)
    else:
        with Pool(workers) as pool:
            for _ in pool.imap_unordered(_write_sample, tasks, chunksize=8):
                pass
    _write_lists(out, {split: [_sample_id(split, i) for i in range(counts[split])] for split in SPLIT_IDS})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output directory (VOC layout)")
    parser.add_argument("--preset", default="voc", choices=list(PRESETS),
                        help="voc (VOC-sized scenes, default) or cpu (96x96, 8 classes)")
    parser.add_argument("--train", type=int, help="training images (voc: 1464 as VOC train, cpu: 2000)")
    parser.add_argument("--val", type=int, help="validation images (default 300)")
    parser.add_argument("--classes", type=int, help="classes including background (voc: 2..21, cpu: 2..8; default all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes")
    parser.add_argument("--unlabeled", type=int, default=0,
                        help="also N unlabelled images and list/unlabeled.txt (their labels never written)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        for key in ("train", "val", "classes"):
            if getattr(args, key) is None:
                setattr(args, key, PRESETS[args.preset][key])
        generate(args.out, args.train, args.val, args.classes, args.seed, args.workers, args.preset, args.unlabeled)
    except SegKDError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    pool = f" + {args.unlabeled} unlabelled" if args.unlabeled else ""
    print(f"wrote {args.train} + {args.val}{pool} images to {args.out} in {time.perf_counter() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
