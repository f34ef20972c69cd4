"""Check a prepared dataset before training on it: every file there, readable, and labelled sensibly.

    python -m tools.check --config config/voc2012/pspnet50_teacher.yaml
    python -m tools.check --config config/voc2012/pspnet50_teacher.yaml data.root=/data/voc --max-problems 5

For the train and val lists of the config (and ``data.unlabeled_list``'s images when set, SSLD) it reports sample
counts, the label modes (P palette / L index; RGB colour labels are an error), the label value histogram (each value
with its class name from ``data.dataset`` or ``data.names``, which must agree with ``data.*``), image
size statistics and one line per problem naming ``list:line`` and the file: missing or unreadable (e.g.
truncated) files, duplicate entries, label values outside ``0..classes-1`` that are not ``ignore_label``,
image/label size mismatches; for the unlabelled list, its own rules (one relative image path a line) and unreadable or
duplicate images, no label being opened. Exit status 0 when clean, 1 when there are problems, 2 on a bad config.

The rules are the training dataset's own (data/dataset.py): its list resolution, its image and label readers
and ``check_label``, whose errors become problem lines here instead of stopping at the first one.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
from PIL import Image

from data.dataset import check_label, parse_line, read_image, read_image_list, read_label, resolve_list
from data.datasets import class_names
from util.config import load_config
from util.errors import SegKDError


@dataclass
class SplitReport:
    """What one list holds. ``sizes`` counts (H, W) of readable images; ``label_values`` pixels per value."""

    name: str
    list_file: str
    samples: int = 0
    label_modes: Counter = field(default_factory=Counter)
    label_values: Counter = field(default_factory=Counter)
    sizes: Counter = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)


@dataclass
class Report:
    splits: list[SplitReport]

    @property
    def problems(self) -> list[str]:
        return [p for split in self.splits for p in split.problems]


@dataclass
class _Sample:
    size: Optional[tuple[int, int]] = None  # (H, W) of the image
    mode: Optional[str] = None
    values: Counter = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)


def _read(path: str, what: str, where: str, out: _Sample, reader: Callable[[str], np.ndarray]) -> Optional[np.ndarray]:
    """``reader(path)`` (data.dataset's), or None and a problem naming ``where`` (the list line)."""
    if not os.path.isfile(path):
        out.problems.append(f"{where}: missing {what} {path}")
        return None
    try:
        return reader(path)
    except SegKDError as e:
        out.problems.append(f"{where}: {e}")
        return None


def _label_mode(path: str) -> Optional[str]:
    """The PNG's mode from its header (for the report's mode column; read_label decides what is allowed)."""
    try:
        with Image.open(path) as image:
            return image.mode
    except (OSError, SyntaxError, ValueError):
        return None


def _check_sample(entry: tuple[int, str, str, str], classes: int, ignore: int) -> _Sample:
    _, where, image_path, label_path = entry
    out = _Sample()
    image = _read(image_path, "image", where, out, read_image)
    if os.path.isfile(label_path):
        out.mode = _label_mode(label_path)
    label = _read(label_path, "label", where, out, read_label)
    if image is not None:
        out.size = image.shape[:2]
    if label is not None:
        counts = np.bincount(label.ravel(), minlength=256)
        out.values.update({int(v): int(counts[v]) for v in np.flatnonzero(counts)})
        try:
            check_label(label, classes, ignore, label_path)
        except SegKDError as e:
            out.problems.append(f"{where}: {e}")
    if image is not None and label is not None and image.shape[:2] != label.shape:
        out.problems.append(f"{where}: image {image_path} is {image.shape[0]}x{image.shape[1]} (HxW) "
                            f"but label {label_path} is {label.shape[0]}x{label.shape[1]}")
    return out


def _read_entries(root: str, list_path: str, problems: list[tuple[int, str]]) -> list[tuple[int, str, str, str]]:
    """``(line, list:line, image path, label path)`` per sample; malformed and duplicate lines go to ``problems``."""
    entries, seen = [], {}
    with open(list_path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            where = f"{list_path}:{lineno}"
            if not line.strip():
                continue
            try:
                image, label = parse_line(line.strip(), where, root, check_files=False)  # files: reported below
            except SegKDError as e:
                problems.append((lineno, str(e)))
                continue
            if image in seen:  # the dataset would train on it twice
                problems.append((lineno, f"{where}: duplicate entry {os.path.relpath(image, root)} "
                                         f"(first on line {seen[image]})"))
                continue
            seen[image] = lineno
            entries.append((lineno, where, image, label))
    return entries


def check_split(root: str, name: str, list_file: str, classes: int, ignore_label: int,
                workers: int = 8) -> SplitReport:
    """Check every sample of one list; results and problems come in list order whatever ``workers`` is."""
    list_path = resolve_list(root, list_file)  # the dataset's rule: absolute, under root, else the cwd
    report = SplitReport(name, list_path)
    if not os.path.isfile(list_path):
        report.problems.append(f"{list_path}: list file not found")
        return report
    problems: list[tuple[int, str]] = []
    entries = _read_entries(root, list_path, problems)
    report.samples = len(entries)
    if not entries:
        problems.append((0, f"{list_path}: no samples"))
    # PIL releases the GIL while decoding, so threads scale without pickling images between processes.
    with ThreadPoolExecutor(max(1, workers)) as pool:
        samples = pool.map(lambda e: _check_sample(e, classes, ignore_label), entries)
        for entry, sample in zip(entries, samples):
            problems.extend((entry[0], p) for p in sample.problems)
            report.label_values.update(sample.values)
            if sample.mode is not None:
                report.label_modes[sample.mode] += 1
            if sample.size is not None:
                report.sizes[sample.size] += 1
    report.problems = [p for _, p in sorted(problems, key=lambda item: item[0])]  # stable: file order
    return report


def check_unlabeled(root: str, list_file: str, workers: int = 8) -> SplitReport:
    """The unlabelled images of ``data.unlabeled_list`` (SSLD): the list by the training's own reader
    (``read_image_list``: its first broken line is one problem), then every image decoded and duplicates named. No
    label file is read: these images have none."""
    report = SplitReport("unlabeled", resolve_list(root, list_file))
    try:
        images = read_image_list(root, list_file)
    except SegKDError as e:
        report.problems.append(str(e))
        return report
    report.samples = len(images)
    first: dict[str, int] = {}
    for index, image in enumerate(images):
        if image in first:
            report.problems.append(f"{report.list_file}: duplicate image {os.path.relpath(image, root)} "
                                   f"(entries {first[image] + 1} and {index + 1})")
        first.setdefault(image, index)

    def read(image: str) -> _Sample:
        out = _Sample()
        pixels = _read(image, "image", report.list_file, out, read_image)
        if pixels is not None:
            out.size = pixels.shape[:2]
        return out

    with ThreadPoolExecutor(max(1, workers)) as pool:
        for sample in pool.map(read, images):
            report.problems.extend(sample.problems)
            if sample.size is not None:
                report.sizes[sample.size] += 1
    return report


def check_dataset(root: str, lists: dict[str, str], classes: int, ignore_label: int,
                  workers: int = 8) -> Report:
    """Check each ``{split: list file}`` (relative to ``root`` or absolute) of the dataset at ``root``."""
    if not os.path.isdir(root):
        raise SegKDError(f"{root}: dataset root (data.root) not found")
    splits = [check_split(root, name, path, classes, ignore_label, workers) for name, path in lists.items()]
    return Report(splits)


def _size_stats(sizes: Counter) -> list[str]:
    if not sizes:
        return ["no readable images"]
    n = sum(sizes.values())
    lines = []
    for axis, label in ((0, "H"), (1, "W")):
        values = [s[axis] for s in sizes.elements()]
        lines.append(f"{label} min/mean/max {min(values)}/{sum(values) / n:.1f}/{max(values)}")
    common = ", ".join(f"{h}x{w}: {c}" for (h, w), c in sizes.most_common(5))
    return lines + [f"most common HxW: {common}"]


def _name(value: int, names: Optional[list[str]]) -> str:
    return f" {names[value]}" if names is not None and value < len(names) else ""


def format_report(report: Report, max_problems: int = 50, names: Optional[list[str]] = None) -> str:
    """The summary table, per-split statistics (the label histogram with each class's name from ``names``) and the
    first ``max_problems`` problems."""
    rows = [f"{'split':<10} {'samples':>8} {'problems':>9}  {'label modes':<24} list"]
    for s in report.splits:
        modes = " ".join(f"{m}:{c}" for m, c in sorted(s.label_modes.items())) or "-"
        rows.append(f"{s.name:<10} {s.samples:>8} {len(s.problems):>9}  {modes:<24} {s.list_file}")
    for s in report.splits:
        rows.append(f"{s.name}: images " + "; ".join(_size_stats(s.sizes)))
        total = sum(s.label_values.values()) or 1
        values = ", ".join(f"{v}{_name(v, names)}: {c} ({100 * c / total:.2f}%)"
                           for v, c in sorted(s.label_values.items()))
        rows.append(f"{s.name}: label pixels per value: {values or '-'}")
    problems = report.problems
    if problems:
        rows.append(f"problems (showing {min(len(problems), max_problems)} of {len(problems)}):")
        rows.extend(problems[:max_problems])
    rows.append(f"FAILED: {len(problems)} problem(s)" if problems else "OK: no problems")
    return "\n".join(rows)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Check the dataset of a segkd config.")
    parser.add_argument("--config", required=True, help="experiment YAML (over config/defaults.yaml)")
    parser.add_argument("--max-problems", type=int, default=50, help="how many problem lines to print")
    parser.add_argument("--workers", type=int, default=8, help="threads reading images")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.root=/data/voc2012")
    args = parser.parse_intermixed_args(argv)
    try:
        data = load_config(args.config, args.overrides).data
        if data.root is None:
            raise SegKDError(f"{args.config}: data.root is not set (add data.root=PATH)")
        names = class_names(data)  # data.dataset's (or data.names'), after checking they agree with data.*
        lists = {"train": data.train_list, "val": data.val_list}
        report = check_dataset(data.root, lists, data.classes, data.ignore_label, args.workers)
        if data.unlabeled_list is not None:
            report.splits.append(check_unlabeled(data.root, data.unlabeled_list, args.workers))
    except SegKDError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_report(report, args.max_problems, names))
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
