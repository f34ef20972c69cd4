"""Drawing primitives shared by the generated benchmark's two tiers (tools/synthetic.py, tools/synthetic_cpu.py):
a colour palette shared by every class, texture fields, object outlines and the two-field background.
Every function draws from the numpy Generator it is given, so a scene is a pure function of its seed."""

from __future__ import annotations

import math

import cv2
import numpy as np

# Shared colour palette (RGB): every class and the background draw their colours from it.
PALETTE = np.array([
    [200, 40, 40], [40, 160, 60], [50, 70, 200], [230, 200, 50], [240, 240, 235], [25, 25, 30],
    [130, 130, 130], [150, 90, 40], [200, 100, 200], [60, 200, 210], [240, 140, 40], [100, 40, 120],
    [170, 210, 120], [90, 120, 150],
], dtype=np.float32)

def noise_field(rng: np.random.Generator, shape: tuple[int, int], cell: float) -> np.ndarray:
    """Smooth zero-mean unit-ish noise with blobs about ``cell`` px across (bicubic-upsampled grid)."""
    h, w = shape
    small = rng.standard_normal((int(h / cell) + 3, int(w / cell) + 3)).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def texture(rng: np.random.Generator, family: str, n: float, extra: float, u: np.ndarray, v: np.ndarray,
             size: float) -> np.ndarray:
    """A texture field in [0, 1] over rotated object coordinates u, v (px; shapes HxW), ``n`` cycles/size."""
    p = size / n
    phase = rng.uniform(0, 2 * math.pi)
    if family == "stripes":
        return 0.5 + 0.5 * np.sin(u * (2 * math.pi / p) + phase)
    if family == "checker":
        prod = np.sin(u * (2 * math.pi / p) + phase) * np.sin(v * (2 * math.pi / p))
        return np.clip(0.5 + 3 * prod, 0, 1)
    if family == "dots":
        fu, fv = (u / p) % 1 - 0.5, (v / p) % 1 - 0.5
        return np.clip((extra - np.sqrt(fu * fu + fv * fv)) * p / 1.5 + 0.5, 0, 1)
    if family in ("noise", "blotch"):
        z = noise_field(rng, u.shape, p)
        return np.clip(0.5 + (0.45 if family == "noise" else 4.0) * z, 0, 1)
    if family == "rings":
        return 0.5 + 0.5 * np.sin(np.sqrt(u * u + v * v) * (4 * math.pi / p) + phase)
    if family == "zigzag":
        tri = np.abs((v / p) % 1 - 0.5)
        return 0.5 + 0.5 * np.sin((u + 0.8 * p * tri) * (2 * math.pi / p) + phase)
    if family == "grid":
        lu, lv = np.abs((u / p) % 1 - 0.5), np.abs((v / p) % 1 - 0.5)
        return np.clip((np.maximum(lu, lv) - 0.42) * p / 1.5 + 0.5, 0, 1)
    if family == "gradient":
        return np.clip(0.5 + u / size, 0, 1)
    if family == "bricks":
        row = np.floor(v / p)  # bricks 2p wide and p high, alternate rows shifted by half a brick
        fu, fv = (u / (2 * p) + 0.5 * (row % 2)) % 1, v / p - row
        to_joint = np.minimum((0.5 - np.abs(fu - 0.5)) * 2 * p, (0.5 - np.abs(fv - 0.5)) * p)
        return np.clip((0.08 * p - to_joint) / 1.5 + 0.5, 0, 1)
    raise ValueError(f"unknown texture family {family!r}")


def colours(rng: np.random.Generator, amplitude: float) -> tuple[np.ndarray, np.ndarray]:
    """Two jittered palette colours ``amplitude`` apart (RGB distance), from the shared palette."""
    i = rng.integers(len(PALETTE))
    far = np.flatnonzero(np.linalg.norm(PALETTE - PALETTE[i], axis=1) >= 180)
    j = rng.choice(far)
    c0 = np.clip(PALETTE[i] + rng.uniform(-20, 20, 3), 0, 255)
    direction = (PALETTE[j] - PALETTE[i]) / np.linalg.norm(PALETTE[j] - PALETTE[i])
    return c0.astype(np.float32), np.clip(c0 + direction * amplitude, 0, 255).astype(np.float32)


def shape_points(rng: np.random.Generator, kind: str, cx: float, cy: float, size: float) -> np.ndarray:
    """Outline (Nx2 float, image coordinates) of an object about ``size`` px across."""
    rot = rng.uniform(0, 2 * math.pi)
    if kind == "ellipse":
        angles = np.linspace(0, 2 * math.pi, 64, endpoint=False)
        radii = np.ones_like(angles) * size / 2
        aspect = rng.uniform(0.5, 1.0)
    elif kind == "polygon":
        k = rng.integers(3, 7)
        angles = (np.arange(k) + rng.uniform(-0.25, 0.25, k)) * (2 * math.pi / k)
        radii = size / 2 * rng.uniform(0.75, 1.1, k)
        aspect = rng.uniform(0.6, 1.0)
    else:  # blob: a radius that wobbles smoothly around the centre
        angles = np.linspace(0, 2 * math.pi, 64, endpoint=False)
        wobble = sum(rng.uniform(0, 0.25 / f) * np.sin(f * angles + rng.uniform(0, 6.3)) for f in (2, 3, 5))
        radii = size / 2 * (1 + wobble)
        aspect = rng.uniform(0.6, 1.0)
    x, y = radii * np.cos(angles), radii * np.sin(angles) * aspect
    cos, sin = math.cos(rot), math.sin(rot)
    return np.stack([cx + x * cos - y * sin, cy + x * sin + y * cos], 1)


def background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Two smooth colour fields split by a wavy horizon (HxWx3 float32)."""
    xs = np.arange(w, dtype=np.float32)
    horizon = h * rng.uniform(0.25, 0.75) + h * 0.06 * np.sin(xs / w * rng.uniform(2, 9) + rng.uniform(0, 6))
    below = (np.arange(h, dtype=np.float32)[:, None] > horizon[None, :])[..., None]
    fields = []
    for _ in range(2):
        c0, c1 = colours(rng, rng.uniform(20, 60))
        t = np.clip(0.5 + 0.3 * noise_field(rng, (h, w), rng.uniform(60, 160)), 0, 1)[..., None]
        fields.append(c0 + t * (c1 - c0))
    return np.where(below, fields[1], fields[0]).astype(np.float32)
