"""scripts/demo_figure.py on a fabricated 16x16 dataset and fabricated runs: layout, colours, selection, errors."""

import importlib.util
import json
import os
import shutil

import cv2
import numpy as np
import pytest
from PIL import Image

from data.dataset import read_list
from data.palette import save_label_png, voc_palette
from tests.conftest import REPO, run_cli

_spec = importlib.util.spec_from_file_location("demo_figure", os.path.join(REPO, "scripts", "demo_figure.py"))
demo_figure = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(demo_figure)

NAMES = ["background", "cat", "dog", "car"]
STUDENTS = ["pspnet18_baseline", "pspnet18_kd", "pspnet18_kd_aux_kl", "pspnet18_kd_aux_smoothl1"]
PALETTE = voc_palette()


def colour(c):
    return tuple(PALETTE[3 * c:3 * c + 3])


def labels():
    """Four 16x16 ground truths in list order, with 1, 2 (and void), 3 and 2 foreground classes."""
    a = np.zeros((16, 16), np.uint8)
    a[4:8, 4:8] = 1
    b = np.zeros((16, 16), np.uint8)
    b[:8, :8], b[8:, :8], b[8:, 8:] = 1, 2, 3  # b[:8, 8:] stays background
    c = np.zeros((16, 16), np.uint8)
    c[:8], c[8:12], c[12:] = 1, 2, 255
    d = np.full((16, 16), 2, np.uint8)
    d[:, 8:] = 3
    return {"a": a, "c": c, "b": b, "d": d}


def marker(row, seed):
    """The class each run predicts in the 4x4 block b[:4, 12:] (background in the ground truth)."""
    return 1 + (row + (seed or 0)) % 3


def write_run(eval_dir, row, seed, ious):
    os.makedirs(os.path.join(eval_dir, "gray"))
    for stem, label in labels().items():
        pred = np.where(label == 255, 0, label).astype(np.uint8)
        if stem == "b":
            pred[:4, 12:] = marker(row, seed)
        cv2.imwrite(os.path.join(eval_dir, "gray", stem + ".png"), pred)
    per_class = {n: {"iou": iou, "acc": 0.5} for n, iou in zip(NAMES, ious)}
    metrics = {"mIoU": float(np.mean([v for v in ious if v is not None])), "per_class": per_class,
               "config": {"train": {"seed": seed}}}
    with open(os.path.join(eval_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f)


@pytest.fixture
def fab(tmp_path):
    data, root = tmp_path / "data", tmp_path / "runs"
    for sub in ("JPEGImages", "SegmentationClassAug", "list"):
        (data / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = []
    for stem, label in labels().items():
        cv2.imwrite(str(data / "JPEGImages" / f"{stem}.jpg"), rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
        save_label_png(str(data / "SegmentationClassAug" / f"{stem}.png"), label)
        lines.append(f"JPEGImages/{stem}.jpg SegmentationClassAug/{stem}.png")
    (data / "list" / "val.txt").write_text("\n".join(lines) + "\n")
    write_run(str(root / "pspnet50_teacher" / "eval" / "ss"), 0, None, [0.9, 1.0, 0.5, None])
    for row, key in enumerate(STUDENTS, start=1):
        for seed in (1, 2):
            cat = 0.2 if seed == 1 else 0.6  # the baseline's mean: 0.4
            write_run(str(root / key / f"seed{seed}" / "eval" / "ss"), row, seed, [0.8, cat, 0.3, None])
    return data, root


def run(data, root, *extra, capsys):
    out = root / "figure.png"
    code = demo_figure.main([str(root), "--data", str(data), "--out", str(out), *map(str, extra)])
    _, err = capsys.readouterr()
    return code, out, err


def expected_size(cell, images=4, columns=7, rows=5, classes=4):
    m = demo_figure
    grid_w, grid_h = columns * (cell + m.GAP) - m.GAP, m.TITLE_H + images * (cell + m.GAP) - m.GAP
    table_w = m.LABEL_W + (classes + 1) * m.CELL_W + m.GAP
    table_h = m.TITLE_H + m.HEADER_H + rows * m.ROW_H
    return 2 * m.MARGIN + max(grid_w, table_w), 2 * m.MARGIN + grid_h + m.SECTION_GAP + table_h


def grid_pixel(figure, column, line, y, x, cell, scale):
    """The figure's colour at pixel (y, x) of the 16x16 image drawn in grid cell (line, column)."""
    m = demo_figure
    return figure.getpixel((m.MARGIN + column * (cell + m.GAP) + x * scale + scale // 2,
                            m.MARGIN + m.TITLE_H + line * (cell + m.GAP) + y * scale + scale // 2))


def test_selection_most_foreground_classes_first(fab):
    data, _ = fab
    stems = [os.path.basename(i)[:-4] for i, _ in demo_figure.choose_images(read_list(str(data), "list/val.txt"), 4)]
    assert stems == ["b", "c", "d", "a"]  # void is no class; c, d tie: list order


def test_default_size_and_auto_scale(fab, capsys):
    data, root = fab
    code, out, err = run(data, root, capsys=capsys)
    assert code == 0 and err == ""
    with Image.open(out) as figure:
        assert figure.size == expected_size(cell=16 * (demo_figure.TARGET // 16))
    assert os.path.getsize(out) < 300_000


@pytest.mark.parametrize("seed", [None, 2])
def test_predictions_in_their_cells(fab, capsys, seed):
    data, root = fab
    code, out, _ = run(data, root, "--scale", 3, *(["--seed", seed] if seed else []), capsys=capsys)
    assert code == 0
    with Image.open(out) as f:
        figure = f.convert("RGB")
    assert figure.size == expected_size(cell=48)
    assert grid_pixel(figure, 1, 0, 2, 13, 48, 3) == colour(0)  # ground truth of b (chosen first): background
    assert grid_pixel(figure, 1, 0, 12, 12, 48, 3) == colour(3)
    for row in range(5):  # teacher, then the students of the chosen seed (default: the smallest, 1)
        assert grid_pixel(figure, 2 + row, 0, 2, 13, 48, 3) == colour(marker(row, None if row == 0 else seed or 1))
        assert grid_pixel(figure, 2 + row, 0, 12, 12, 48, 3) == colour(3)
    m = demo_figure  # exact edges: the teacher cell's top-right pixel is its marker, the gap beside it white
    right, top = m.MARGIN + 3 * (48 + m.GAP) - m.GAP - 1, m.MARGIN + m.TITLE_H
    assert figure.getpixel((right, top)) == colour(marker(0, None))
    assert figure.getpixel((right + 1, top)) == figure.getpixel((right, top - 1)) == (255, 255, 255)


def test_heat_map_colours_and_seed_mean(fab, capsys):
    data, root = fab
    code, out, _ = run(data, root, "--scale", 3, "--images", 1, capsys=capsys)
    assert code == 0
    m = demo_figure
    with Image.open(out) as f:
        figure = f.convert("RGB")
    top = m.MARGIN + m.TITLE_H + 48 + m.SECTION_GAP + m.TITLE_H + m.HEADER_H

    def cell(line, k):  # a corner of the cell, clear of its text
        return figure.getpixel((m.MARGIN + m.LABEL_W + k * m.CELL_W + 1, top + line * m.ROW_H + 1))

    assert cell(0, 1) == (0, 90, 40)  # teacher, cat: IoU 1.0 is the darkest green
    assert cell(1, 1) == (153, 189, 169)  # baseline, cat: mean of 0.2 and 0.6 over the seeds
    assert cell(1, 3) == (235, 235, 235)  # car: null IoU in every run


def test_row_scores_skip_nulls():
    metrics = [{"mIoU": 0.5, "per_class": {"a": {"iou": 0.2}, "b": {"iou": None}}},
               {"mIoU": 0.7, "per_class": {"a": {"iou": 0.6}, "b": {"iou": 0.4}}}]
    ious, miou = demo_figure.row_scores(metrics, ["a", "b", "c"])
    assert ious[:2] == pytest.approx([0.4, 0.4]) and np.isnan(ious[2]) and miou == pytest.approx(0.6)


def test_missing_row_is_skipped_with_a_note(fab, capsys):
    data, root = fab
    shutil.rmtree(root / "pspnet18_kd_aux_kl")
    code, out, err = run(data, root, "--scale", 3, capsys=capsys)
    assert code == 0 and out.is_file()
    notes = err.strip().splitlines()
    assert len(notes) == 1 and notes[0].startswith("note: ") and "pspnet18_kd_aux_kl" in notes[0]
    with Image.open(out) as f:
        figure = f.convert("RGB")
    assert figure.size == expected_size(cell=48, columns=6, rows=4)
    assert grid_pixel(figure, 5, 0, 2, 13, 48, 3) == colour(marker(4, 1))  # aux SmoothL1 moved left


@pytest.mark.slow  # subprocesses
@pytest.mark.parametrize("broken", ["data", "root", "seed"])
def test_bad_inputs_exit_2_with_one_line(fab, tmp_path, broken):
    data, root = fab
    args = [str(root), "--data", str(data), "--out", str(tmp_path / "f.png")]
    if broken == "seed":
        args += ["--seed", "7"]
    else:
        args[0 if broken == "root" else 2] = str(tmp_path / "nowhere")
    proc = run_cli(os.path.join("scripts", "demo_figure.py"), *args, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ")
    assert ("seed7" if broken == "seed" else str(tmp_path / "nowhere")) in proc.stderr
    assert not (tmp_path / "f.png").exists()
