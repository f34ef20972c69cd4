"""The CPU tier of the generated benchmark: small scenes (96x96) that a CPU can learn in minutes.

Used by ``python -m tools.synthetic --preset cpu`` (same VOC layout, lists and determinism rules as the
VOC-sized tier; see tools/synthetic.py). The scene rules, chosen so that colour tells nothing and only
texture and shape tell the class, with pairs that need more than a local look:

* 96x96 images. The background (class 0) is two smooth colour fields split by a wavy horizon.
* 1-3 objects, 40-80 px across, painted in order (later ones occlude earlier ones), each filled with its
  class's texture over two colours drawn from one palette shared by every class and the background
  (either colour may fill the texture's "on" part, so even duty cycle does not tie a colour to a class).
* The texture's period is 8-14 px (absolute, drawn per instance), its contrast high, its phase random:
  1 stripes near horizontal and 2 near vertical (within 20 degrees: training rotates by up to 10),
  3 checker on an ellipse and 4 checker on a polygon (only the outline differs),
  5 small dots and 6 large dots (dot radius 0.2 or 0.36 of the period), 7 blurred noise.
* Whole-image lighting gain, Gaussian noise and JPEG compression (quality 95, no chroma subsampling,
  written by tools/synthetic.py); a 3 px void (255) band along outlines.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from tools.synthetic_scene import background, colours, shape_points, texture

SIZE = 96
# name, texture family, texture extra, shapes, orientation (None: any)
CPU_CLASSES = [
    ("stripes_horizontal", "stripes", 0.0, ("ellipse", "polygon", "blob"), 0.5 * math.pi),
    ("stripes_vertical", "stripes", 0.0, ("ellipse", "polygon", "blob"), 0.0),
    ("checker_round", "checker", 0.0, ("ellipse",), None),
    ("checker_angular", "checker", 0.0, ("polygon",), None),
    ("dots_small", "dots", 0.2, ("ellipse", "polygon", "blob"), None),
    ("dots_large", "dots", 0.36, ("ellipse", "polygon", "blob"), None),
    ("noise", "noise", 0.0, ("ellipse", "polygon", "blob"), None),
]
CPU_NAMES = ["background"] + [c[0] for c in CPU_CLASSES]


def _paint(rng, image, label, cls, family, extra, theta, contrast, pts):
    """Fill outline ``pts`` with ``family`` at an 8-14 px period; label the covered pixels ``cls``."""
    h, w = label.shape
    x0, y0 = np.maximum(np.floor(pts.min(0)).astype(int), 0)
    x1, y1 = np.minimum(np.ceil(pts.max(0)).astype(int) + 1, (w, h))
    if x1 - x0 < 2 or y1 - y0 < 2:
        return
    alpha = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.fillPoly(alpha, [np.round((pts - (x0, y0)) * 16).astype(np.int32)], 255, cv2.LINE_AA, shift=4)
    period = rng.uniform(8.0, 14.0)
    size = float(np.ptp(pts, 0).max())
    xs = np.arange(x0, x1, dtype=np.float32)[None, :] - (x0 + x1) / 2
    ys = np.arange(y0, y1, dtype=np.float32)[:, None] - (y0 + y1) / 2
    u, v = xs * math.cos(theta) + ys * math.sin(theta), ys * math.cos(theta) - xs * math.sin(theta)
    t = texture(rng, family, size / period, extra, u, v, size)
    t = 0.5 + (t - 0.5) * contrast
    c0, c1 = colours(rng, rng.uniform(130, 200))
    if rng.random() < 0.5:  # either colour fills the texture's "on" part, so a class's mean colour (whose
        c0, c1 = c1, c0  # duty cycle differs: small dots are mostly c0) tells nothing
    a = (alpha.astype(np.float32) / 255)[..., None]
    region = image[y0:y1, x0:x1]
    region += a * (c0 + t[..., None] * (c1 - c0) - region)
    label[y0:y1, x0:x1][alpha >= 128] = cls


def render_cpu(seed: int, split_id: int, index: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One 96x96 scene: (image HxWx3 uint8 RGB, label HxW uint8 with 255 boundary bands).

    ``classes`` (2..8) keeps background plus the first ``classes - 1`` rows of :data:`CPU_CLASSES`.
    """
    rng = np.random.default_rng([seed, split_id, index, 96])
    h = w = SIZE
    image = background(rng, h, w)
    label = np.zeros((h, w), np.uint8)
    for _ in range(1 + rng.choice(3, p=[0.35, 0.4, 0.25])):
        cls = 1 + int(rng.integers(classes - 1))
        _, family, extra, shapes, orient = CPU_CLASSES[cls - 1]
        theta = rng.uniform(0, math.pi) if orient is None else orient + rng.uniform(-0.35, 0.35)
        pts = shape_points(rng, shapes[rng.integers(len(shapes))], rng.uniform(12, w - 12),
                           rng.uniform(12, h - 12), rng.uniform(40, 80))
        _paint(rng, image, label, cls, family, extra, theta, rng.uniform(0.85, 1.0), pts)
    image *= rng.uniform(0.75, 1.2)
    image += rng.standard_normal(image.shape, dtype=np.float32) * rng.uniform(2, 8)
    kernel = np.ones((3, 3), np.uint8)
    label[cv2.dilate(label, kernel) != cv2.erode(label, kernel)] = 255
    return np.clip(image, 0, 255).astype(np.uint8), label
