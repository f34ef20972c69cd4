"""One PNG of the results table's runs: predictions on a few val images, then per-class IoU as a heat map.

    python scripts/demo_figure.py runs/demo/synthetic_cpu --data datasets/synthetic_cpu \\
        --out runs/demo/synthetic_cpu/figure.png [--images 4] [--seed 1] [--eval ss] [--scale 2]

ROOT is laid out as ``scripts/synthetic/table.sh`` leaves it: ``ROOT/pspnet50_teacher/eval/<EVAL>/`` and
``ROOT/<student row>/seed<k>/eval/<EVAL>/``, each with ``metrics.json`` and ``gray/<id>.png`` (class indices).
Top: one line per chosen val image (the N with the most foreground classes in the ground truth, ties in list
order), columns image, ground truth, teacher and the four student rows of one seed (``--seed``, default the
smallest found), in the palette of the runs' data.dataset (VOC's without one), scaled by an integer factor with
nearest neighbour. Bottom: per-class IoU in % of every row (students averaged over all their seeds) coloured white
-> dark green, and mIoU. Rows with no runs are left out with a note on stderr. PIL and numpy only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script from anywhere
from data.dataset import read_image, read_label, read_list  # noqa: E402
from data.datasets import get_dataset  # noqa: E402
from data.palette import colorize  # noqa: E402
from util.errors import SegKDError  # noqa: E402

# (run folder, image column title, table line label), in table order; the first is the teacher.
ROWS = [
    ("pspnet50_teacher", "teacher", "teacher R50"),
    ("pspnet18_baseline", "baseline", "R18 baseline"),
    ("pspnet18_kd", "+ logit KD", "+ logit KD"),
    ("pspnet18_kd_aux_kl", "+ aux KL", "+ aux KL"),
    ("pspnet18_kd_aux_smoothl1", "+ aux SmoothL1", "+ aux SmoothL1"),
]
TEACHER = ROWS[0][0]
MARGIN, GAP, SECTION_GAP = 8, 4, 12  # px around the figure, between cells, between the grid and the table
TITLE_H = 18  # column titles above the grid, caption above the table
TARGET = 192  # images are scaled up by the largest integer factor keeping their longest side <= TARGET
LABEL_W, CELL_W, HEADER_H, ROW_H = 140, 44, 76, 22  # heat map: line labels, cells, rotated class names
GREEN = np.array([0, 90, 40], dtype=np.float64)
MISSING = (128, 128, 128)  # a cell whose prediction file is absent


def load_font(size: int = 11) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow < 10.1 or no FreeType: the fixed bitmap font
        return ImageFont.load_default()


def note(text: str) -> None:
    print(f"note: {text}", file=sys.stderr)


def choose_images(samples: list[tuple[str, str]], n: int) -> list[tuple[str, str]]:
    """The ``n`` samples whose labels hold the most foreground classes (not 0, not 255 void), ties in list order."""
    counts = [len(set(np.unique(read_label(label)).tolist()) - {0, 255}) for _, label in samples]
    order = sorted(range(len(samples)), key=lambda i: -counts[i])  # sorted() is stable: ties keep list order
    return [samples[i] for i in order[:n]]


def find_runs(root: str, key: str, eval_name: str) -> dict[Optional[int], str]:
    """{seed: eval dir} of one row's runs that have a metrics.json; the teacher's single run has seed None."""
    if key == TEACHER:
        path = os.path.join(root, key, "eval", eval_name)
        return {None: path} if os.path.isfile(os.path.join(path, "metrics.json")) else {}
    base, runs = os.path.join(root, key), {}
    for name in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        path = os.path.join(base, name, "eval", eval_name)
        if re.fullmatch(r"seed\d+", name) and os.path.isfile(os.path.join(path, "metrics.json")):
            runs[int(name[4:])] = path
    return dict(sorted(runs.items()))


def load_metrics(eval_dir: str) -> dict:
    path = os.path.join(eval_dir, "metrics.json")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise SegKDError(f"{path}: cannot read metrics ({e})") from None


def row_scores(metrics: list[dict], names: list[str]) -> tuple[np.ndarray, float]:
    """(per-class IoU of shape (len(names),), mIoU), fractions averaged over runs; NaN where no run scored."""
    ious = np.array([[(m.get("per_class") or {}).get(n, {}).get("iou") for n in names] + [m.get("mIoU")]
                     for m in metrics], dtype=np.float64)  # null (None) -> NaN
    seen = (~np.isnan(ious)).sum(axis=0)
    mean = np.where(seen > 0, np.nansum(ious, axis=0) / np.maximum(seen, 1), np.nan)
    return mean[:-1], float(mean[-1])


def cell_dims(h: int, w: int, side: int, scale: Optional[int]) -> tuple[int, int]:
    """(width, height) of an HxW image in the grid: x``scale``, or fitted to TARGET when scale is None."""
    if scale is None:
        if side > TARGET:  # large images (VOC-sized) shrink by an integer factor instead
            step = -(-side // TARGET)
            return max(1, w // step), max(1, h // step)
        scale = max(1, TARGET // side)
    return w * scale, h * scale


def sample_cells(sample: tuple[str, str], pred_dirs: list[str], scale: Optional[int],
                 side: int, absent: set[str], palette: Optional[list[int]] = None) -> list[Image.Image]:
    """The image, its ground truth and each prediction (``pred_dirs[i]/gray/<id>.png``), resized for the grid."""
    image_path, label_path = sample
    image, label = read_image(image_path), read_label(label_path)
    dims = cell_dims(label.shape[0], label.shape[1], side, scale)
    shrink = dims[0] < label.shape[1]
    cells = [Image.fromarray(image).resize(dims, Image.BOX if shrink else Image.NEAREST),
             colorize(label, palette).convert("RGB").resize(dims, Image.NEAREST)]
    stem = os.path.splitext(os.path.basename(image_path))[0]
    for pred_dir in pred_dirs:
        path = os.path.join(pred_dir, "gray", stem + ".png")
        if os.path.isfile(path):
            cells.append(colorize(read_label(path), palette).convert("RGB").resize(dims, Image.NEAREST))
        else:
            absent.add(os.path.join(pred_dir, "gray"))
            cells.append(Image.new("RGB", dims, MISSING))
    return cells


def put_text(draw: ImageDraw.ImageDraw, x: float, y: float, text: str, font: ImageFont.ImageFont, fill: str,
             width: int, centre: bool = False) -> None:
    """Text cut to ``width`` px, centred on y, from x or centred on x (bitmap fonts have no ``anchor=``)."""
    while len(text) > 1 and draw.textlength(text, font=font) > width:
        text = text[:-2] + "."
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    x = x - (left + right) / 2 if centre else x - left
    draw.text((round(x), round(y - (top + bottom) / 2)), text, fill=fill, font=font)


def draw_grid(samples: list[tuple[str, str]], columns: list[tuple[str, str]],
              scale: Optional[int], font: ImageFont.ImageFont, palette: Optional[list[int]] = None) -> Image.Image:
    """Column titles over one line of cells per sample; ``columns`` are (title, eval dir) after image and GT."""
    side = max(max(read_label(label).shape) for _, label in samples)
    absent: set[str] = set()
    lines = [sample_cells(s, [d for _, d in columns], scale, side, absent, palette) for s in samples]
    cell_w = max(c.width for line in lines for c in line)
    cell_h = max(c.height for line in lines for c in line)
    titles = ["image", "ground truth"] + [t for t, _ in columns]
    grid = Image.new("RGB", (len(titles) * (cell_w + GAP) - GAP, TITLE_H + len(lines) * (cell_h + GAP) - GAP),
                     "white")
    draw = ImageDraw.Draw(grid)
    for j, title in enumerate(titles):
        put_text(draw, j * (cell_w + GAP) + 2, TITLE_H / 2, title, font, "black", cell_w - 4)
    for i, line in enumerate(lines):
        for j, cell in enumerate(line):
            grid.paste(cell, (j * (cell_w + GAP), TITLE_H + i * (cell_h + GAP)))
    for path in sorted(absent):
        note(f"{path}: predictions missing for some chosen images (grey cells)")
    return grid


def heat_colour(iou: float) -> tuple[tuple[int, int, int], str]:
    """(cell fill, text colour) for an IoU fraction: white -> dark green, light grey for NaN."""
    if np.isnan(iou):
        return (235, 235, 235), "black"
    t = float(np.clip(iou, 0.0, 1.0))
    r, g, b = (int(v) for v in np.rint(255.0 + t * (GREEN - 255.0)))
    return (r, g, b), ("white" if t > 0.55 else "black")


def draw_table(lines: list[tuple[str, np.ndarray, float]], names: list[str], caption: str,
               font: ImageFont.ImageFont) -> Image.Image:
    """Caption, rotated class names, then one line per row: label, IoU % per class, a gap, mIoU %."""
    xs = [LABEL_W + k * CELL_W for k in range(len(names))] + [LABEL_W + len(names) * CELL_W + GAP]
    table = Image.new("RGB", (xs[-1] + CELL_W, TITLE_H + HEADER_H + len(lines) * ROW_H), "white")
    draw = ImageDraw.Draw(table)
    put_text(draw, 0, TITLE_H / 2, caption, font, "black", table.width)
    for x, name in zip(xs, names + ["mIoU"]):
        label = Image.new("RGB", (HEADER_H, CELL_W), "white")
        put_text(ImageDraw.Draw(label), 2, CELL_W / 2, name, font, "black", HEADER_H - 4)
        table.paste(label.rotate(90, expand=True), (x, TITLE_H))
    for i, (label_text, ious, miou) in enumerate(lines):
        y = TITLE_H + HEADER_H + i * ROW_H
        put_text(draw, 2, y + ROW_H / 2, label_text, font, "black", LABEL_W - 4)
        for x, value in zip(xs, list(ious) + [miou]):
            fill, ink = heat_colour(value)
            draw.rectangle((x, y, x + CELL_W - 2, y + ROW_H - 2), fill=fill)
            text = "n/a" if np.isnan(value) else f"{value * 100:.1f}"
            put_text(draw, x + (CELL_W - 2) / 2, y + (ROW_H - 2) / 2, text, font, ink, CELL_W - 4, centre=True)
    return table


def gather(root: str, eval_name: str, seed: Optional[int]) -> tuple[list[tuple[str, str, dict]], Optional[int]]:
    """([(row key, column title, {seed: eval dir})] of the rows with runs, the students' seed shown in the grid)."""
    if not os.path.isdir(root):
        raise SegKDError(f"{root}: runs folder not found")
    rows = []
    for key, title, _ in ROWS:
        runs = find_runs(root, key, eval_name)
        if runs:
            rows.append((key, title, runs))
        else:
            note(f"{os.path.join(root, key)}: no eval/{eval_name}/metrics.json, row skipped")
    if not rows:
        raise SegKDError(f"{root}: no run of the table has eval/{eval_name}/metrics.json")
    seeds = sorted({s for key, _, runs in rows for s in runs if key != TEACHER})
    if seed is not None and seed not in seeds:
        raise SegKDError(f"--seed {seed}: no student run seed{seed} under {root} (found: {seeds or 'none'})")
    return rows, (seed if seed is not None else (seeds[0] if seeds else None))


def run_palette(metrics: dict) -> Optional[list[int]]:
    """The colours of the run's ``data.dataset`` (from the config its metrics.json records), VOC's without one."""
    dataset = ((metrics.get("config") or {}).get("data") or {}).get("dataset")
    return get_dataset(dataset).palette() if dataset else None


def build(args: argparse.Namespace) -> Image.Image:
    for name, value in (("images", args.images), ("scale", args.scale)):
        if value is not None and value < 1:
            raise SegKDError(f"--{name} {value}: must be at least 1")
    rows, seed = gather(args.root, args.eval, args.seed)
    samples = choose_images(read_list(args.data, args.list), args.images)
    columns = []
    for key, title, runs in rows:
        shown = None if key == TEACHER else seed
        if shown in runs:
            columns.append((title, runs[shown]))
        else:
            note(f"{key}: no seed{seed} run, left out of the images (still in the table)")
    labels = {key: label for key, _, label in ROWS}
    metrics = [(key, [load_metrics(d) for d in runs.values()]) for key, _, runs in rows]
    names = list(metrics[0][1][0].get("per_class") or {})
    lines = [(labels[key] + ("" if key == TEACHER else f" (n={len(ms)})"), *row_scores(ms, names))
             for key, ms in metrics]
    font = load_font()
    grid = draw_grid(samples, columns, args.scale, font, run_palette(metrics[0][1][0]))
    caption = (f"per-class IoU (%), eval {args.eval}; students: mean over their seeds"
               + (f"; images: student seed {seed}" if seed is not None else ""))
    table = draw_table(lines, names, caption, font)
    figure = Image.new("RGB", (2 * MARGIN + max(grid.width, table.width),
                               2 * MARGIN + grid.height + SECTION_GAP + table.height), "white")
    figure.paste(grid, (MARGIN, MARGIN))
    figure.paste(table, (MARGIN, MARGIN + grid.height + SECTION_GAP))
    return figure


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root", help="the table's runs folder, e.g. runs/demo/synthetic")
    parser.add_argument("--data", required=True, help="dataset root holding the val list")
    parser.add_argument("--list", default="list/val.txt", help="val list, relative to --data (default list/val.txt)")
    parser.add_argument("--out", help="PNG to write (default ROOT/figure.png)")
    parser.add_argument("--images", type=int, default=4, help="val images shown (default 4)")
    parser.add_argument("--seed", type=int, help="student seed whose predictions are shown (default the smallest)")
    parser.add_argument("--eval", default="ss", help="eval folder name: ss, ss_flip, ms, ms_flip (default ss)")
    parser.add_argument("--scale", type=int, help="integer upscaling of the images (default: fit ~192 px)")
    args = parser.parse_args(argv)
    out = args.out or os.path.join(args.root, "figure.png")
    try:
        figure = build(args)
    except SegKDError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    figure.save(out, format="PNG", optimize=True)
    print(f"wrote {out}: {figure.width}x{figure.height} px, {os.path.getsize(out) / 1024:.0f} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
