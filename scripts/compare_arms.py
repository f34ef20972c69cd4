"""Two arms of the same rows, paired seed by seed: does a change of arithmetic (uint8 batches, bf16, another
library version) move the results beyond the instrument's resolution?

    python scripts/compare_arms.py \\
        --a docs/results/cpu-paired/amd-epyc-avx512 \\
        --b docs/results/uint8-batches/amd-epyc-avx512 --rows pspnet18_baseline pspnet18_kd

Each arm is one or more result folders (``<row>/seed<k>/eval/<EVAL>/metrics.json``, as scripts/collect_results.sh
lays them out); a (row, seed) found twice in one arm is an error. For every row: both arms' mean mIoU over the seeds
both have, and the paired difference B - A with its 95% t interval; then, for every row but the first, the change
of its gain over the first row (``(row - first)_B - (row - first)_A``). A seed trained on two machines across the
arms is refused: its pair would compare CPUs, not arithmetic.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from paired_stats import paired_interval  # noqa: E402
from table_stats import find_metrics, load_run  # noqa: E402

from util.errors import SegKDError  # noqa: E402
from util.machine import machine_label  # noqa: E402


def load_arm(name: str, folders: list[str], rows: list[str], eval_name: str) -> dict[str, dict[int, tuple]]:
    """row -> seed -> (mIoU in points, machine label), from the runs of ``folders``' ``<row>`` subfolders."""
    arm: dict[str, dict[int, tuple]] = {row: {} for row in rows}
    for folder in folders:
        if not os.path.isdir(folder):
            raise SegKDError(f"--{name} {folder}: not a folder")
        for row in rows:
            path = os.path.join(folder, row)
            if not os.path.isdir(path):
                continue
            for metrics_path in find_metrics([path], eval_name):
                run = load_run(metrics_path)
                if run.seed in arm[row]:
                    raise SegKDError(f"--{name}: {row} seed {run.seed} twice ({metrics_path} and an earlier "
                                     "folder): give each seed once per arm")
                arm[row][run.seed] = (100.0 * run.metrics["mIoU"], machine_label(run.metrics.get("trained_on")))
    for row in rows:
        if not arm[row]:
            raise SegKDError(f"--{name}: no run of {row} under {' '.join(folders)}")
    return arm


def fmt(values: list[float]) -> str:
    ci = paired_interval(values)
    if ci["low"] is None:
        return f"{ci['mean']:+.2f} (one pair)"
    text = f"{ci['mean']:+.2f} [{ci['low']:+.2f}, {ci['high']:+.2f}]"
    return (f"**{text}**" if ci["excludes_zero"] else text) + f", sd {ci['std']:.2f}"


def compare(a: dict, b: dict, rows: list[str]) -> str:
    seeds = sorted(set.intersection(*(set(a[r]) & set(b[r]) for r in rows)))
    if not seeds:
        raise SegKDError("no seed has every row in both arms")
    for row in rows:
        for s in seeds:
            if a[row][s][1] != b[row][s][1]:
                raise SegKDError(f"{row} seed {s}: trained on {a[row][s][1]} in --a and on {b[row][s][1]} in --b; "
                                 "a pair must share its machine")
    lines = [f"seeds {' '.join(map(str, seeds))} ({len(seeds)} pairs); machines: "
             + "; ".join(sorted({a[r][s][1] for r in rows for s in seeds})), "",
             "| row | A mean mIoU | B mean mIoU | B - A [95% interval], sd |", "|---|---|---|---|"]
    for row in rows:
        va, vb = [a[row][s][0] for s in seeds], [b[row][s][0] for s in seeds]
        lines.append(f"| {row} | {sum(va) / len(va):.2f} | {sum(vb) / len(vb):.2f} | "
                     f"{fmt([y - x for x, y in zip(va, vb)])} |")
    first = rows[0]
    for row in rows[1:]:
        ga = [a[row][s][0] - a[first][s][0] for s in seeds]
        gb = [b[row][s][0] - b[first][s][0] for s in seeds]
        lines.append(f"| {row} - {first} | {fmt(ga)} | {fmt(gb)} | {fmt([y - x for x, y in zip(ga, gb)])} |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--a", nargs="+", required=True, help="result folders of arm A (the reference)")
    parser.add_argument("--b", nargs="+", required=True, help="result folders of arm B (the change)")
    parser.add_argument("--rows", nargs="+", required=True, help="rows (folder names); the first is the gains' base")
    parser.add_argument("--eval", default="ss", help="eval folder name (default ss)")
    args = parser.parse_args(argv)
    try:
        print(compare(load_arm("a", args.a, args.rows, args.eval), load_arm("b", args.b, args.rows, args.eval),
                      args.rows))
    except SegKDError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
