"""The instrument's summary blocks of README.md and docs/TABLES.md, from the committed results (no training):

    python scripts/instrument_blocks.py                 # print both blocks
    python scripts/instrument_blocks.py --write         # replace them between the instrument markers in place
                                                        # (and docs/TABLES.md's equal-cost block, once committed)
    python scripts/instrument_blocks.py --figure        # the forest plot, docs/img/instrument_forest.png
    python scripts/instrument_blocks.py --equal-cost    # the equal-cost rows (docs/results/cpu-paired-equal-cost)
    python scripts/instrument_blocks.py --equal-cost --figure PNG   # the forest plot with their second marker

README's block: one line per row (mIoU, the paired Δ with its 95% interval, bold when it excludes zero, the pairs
above zero, and the paired Δ against logit KD with its interval), the resolution and the Trained-on lines of the
full table (docs/results/cpu-paired/table.md, make_table.py). TABLES.md's block adds the mIoU of every run, seed by
seed, with its difference to the baseline of that seed. The figure is make_table.py's forest plot of the same table
(scripts/forest_plot.py): every row with a paired Δ, its 95% interval and its ten pairs, the zero line and the
resolution band. The prose around the blocks (what they show) is written by hand.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]
import make_table  # noqa: E402
import paired_stats  # noqa: E402
import table_stats  # noqa: E402
from forest_plot import ForestRow  # noqa: E402
from table_stats import BASELINE_ROW, TEACHER_ROW, compared, find_metrics, group_runs, load_run  # noqa: E402

from util.errors import SegKDError  # noqa: E402

REPO = os.path.dirname(HERE)
RESULTS = os.path.join(REPO, "docs", "results", "cpu-paired")
EQUAL_COST = os.path.join(REPO, "docs", "results", "cpu-paired-equal-cost")  # MATCH=cost's runs, once committed
BEGIN, END = "<!-- instrument:begin -->", "<!-- instrument:end -->"
EQUAL_BEGIN, EQUAL_END = "<!-- equal-cost:begin -->", "<!-- equal-cost:end -->"  # docs/TABLES.md's equal-cost rows
FIGURE = os.path.join(REPO, "docs", "img", "instrument_forest.png")
KD_ROW = "pspnet18_kd"  # the second column's reference: plain logit KD
TARGETS = {"README.md": False, os.path.join("docs", "TABLES.md"): True}  # file -> with the per-seed table


def paired_with_kd(rows) -> dict[str, dict]:
    """label -> table_stats.paired_difference of each R18 row against logit KD (a seed is one machine's), for the
    rows with an interval (2 or more pairs); empty without a KD or baseline row."""
    kd = next((row for row in rows if row.key == KD_ROW), None)
    base = next((row for row in rows if row.key == BASELINE_ROW), None)
    if kd is None or base is None:
        return {}
    out = {}
    for row in rows:
        if row is kd or not compared(row, base, True):  # R18 rows only (not the teacher, the assistant, the base)
            continue
        d = table_stats.paired_difference(row, kd)
        if d["d_ci95_low"] is not None:
            out[row.label] = d
    return out


def versus_kd(rows) -> dict[str, str]:
    """label -> "Δ [95% interval]" of each R18 row against logit KD, paired seed by seed as the Δ column is against
    the baseline (:func:`paired_with_kd`), bold when it excludes zero. The rows distilled with logit KD share its
    teacher, its batches and its loss, so their paired std against it is smaller than against the baseline: this
    column resolves differences between methods the baseline column cannot."""
    out = {}
    for label, d in paired_with_kd(rows).items():
        text = f"{d['d_mIoU']:+.2f} [{d['d_ci95_low']:+.2f}, {d['d_ci95_high']:+.2f}]"
        out[label] = f"**{text}**" if d["d_resolved"] else text
    return out


def short_label(label: str) -> str:
    """"R18 + logit KD + aux KL" -> "aux KL", "R18 + SSLD (symmetric KL, ...)" -> "SSLD": a row's method, for
    one line."""
    for prefix in ("R18 + logit KD + ", "R18 + "):
        if label.startswith(prefix):
            label = label[len(prefix):]
            break
    return label.split(" (", 1)[0]


def versus_kd_holm(rows, alpha: float = 0.05) -> Optional[str]:
    """One line: which rows of the "Δ vs logit KD" column stay resolved when the column is read as one family of
    tests, Holm's step-down over its paired t tests (paired_stats.holm) at family-wise error ``alpha``. None without
    the column."""
    pairs = paired_with_kd(rows)
    if not pairs:
        return None
    p_values = {label: paired_stats.paired_p_value(d["d_values"]) for label, d in pairs.items()}
    sign = {label: d["d_mIoU"] > 0 for label, d in pairs.items()}
    kept = paired_stats.holm(p_values, alpha)
    above = [short_label(label) for label in p_values if label in kept and sign[label]]
    below = [short_label(label) for label in p_values if label in kept and not sign[label]]
    rest = len(p_values) - len(kept)
    return (f"Against logit KD as one family (Holm's step-down over the {len(p_values)} paired t tests of the last "
            f"column, family-wise error {alpha:.0%}): above: {', '.join(above) or 'none'}; below: "
            f"{', '.join(below) or 'none'}; not resolved: the other {rest}.")


def summary(records: list[dict], footer: list[str], kd: Optional[dict[str, str]] = None) -> list[str]:
    kd = kd or {}
    lines = ["| row | mIoU | Δ mIoU vs baseline [95% interval] | pairs above zero | Δ vs logit KD [95% interval] |",
             "|---|---|---|---|---|"]
    for rec in records:
        miou = make_table.fmt_score(rec["mIoU"], rec["mIoU_std"])
        if rec.get("d_pairs"):
            delta = f"{rec['d_mIoU']:+.2f}"
            if rec.get("d_ci95_low") is not None:
                delta += f" [{rec['d_ci95_low']:+.2f}, {rec['d_ci95_high']:+.2f}]"
            delta = f"**{delta}**" if rec.get("d_resolved") else delta
            pairs = f"{rec['d_above_zero']} of {rec['d_pairs']}"
        else:
            delta = pairs = "—"
        lines.append(f"| {rec['label']} | {miou} | {delta} | {pairs} | {kd.get(rec['label'], '—')} |")
    for line in footer:
        lines += ["", line]
    return lines


def per_seed(rows) -> list[str]:
    baseline = next(row for row in rows if row.key == BASELINE_ROW)
    base = {r.seed: r.metrics["mIoU"] for r in baseline.runs}
    seeds = sorted(base)
    lines = ["mIoU (%) per seed, in brackets the difference to the baseline of the same seed:", "",
             "| row | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|---|" + "---|" * len(seeds)]
    for row in rows:
        if row.key == TEACHER_ROW or not row.runs:
            continue
        mine = {r.seed: r.metrics["mIoU"] for r in row.runs}
        paired = compared(row, baseline, True)
        cells = []
        for s in seeds:
            if s not in mine:
                cells.append("—")
                continue
            cell = f"{100 * mine[s]:.2f}"
            cells.append(cell + (f" ({100 * (mine[s] - base[s]):+.2f})" if paired else ""))
        lines.append(f"| {row.label} | " + " | ".join(cells) + " |")
    return lines


def table(results: str = RESULTS, config_dir: Optional[str] = None) -> tuple[str, list[dict]]:
    """make_table's (markdown, records) of the committed results."""
    args = argparse.Namespace(paths=[results], eval="ss", seeds=None, group_by=None, baseline=None, config=None,
                              config_dir=config_dir or os.path.join(REPO, "config", "synthetic_cpu"), out_md=None)
    return make_table.build(args)


def equal_cost(results: str = RESULTS, equal: str = EQUAL_COST) -> tuple[str, list[dict]]:
    """(markdown, records) of the equal-cost rows beside the committed instrument (scripts/equal_cost_table.py)."""
    import equal_cost_table

    if not os.path.isdir(equal):
        raise SegKDError(f"{equal}: no equal-cost results committed yet (docs/TABLES.md, Equal-cost comparisons)")
    _, records = table(results)
    return equal_cost_table.section([equal], "ss", None, records)


def figure(path: str = FIGURE, results: str = RESULTS, equal: Optional[str] = None) -> list[ForestRow]:
    """The instrument's forest plot written to ``path``, with the equal-cost Δ of the runs under ``equal`` as a
    second marker when given; returns the rows drawn."""
    _, records = table(results)
    rows = [rec for rec in records if rec.get("d_values")]
    seeds = sorted({len(rec["d_values"]) for rec in rows})
    title = (f"The instrument (synthetic CPU tier, SCALE=cpu-paired): {len(rows)} rows vs the R18 baseline, "
             f"{' or '.join(map(str, seeds))} paired seeds")
    second = make_table.equal_cost_rows(equal_cost(results, equal)[1]) if equal else None
    return make_table.figure(records, path, title, second)


def blocks(results: str = RESULTS, config_dir: Optional[str] = None) -> dict[bool, str]:
    """{with_seeds: block text between the markers} for the committed results."""
    text, records = table(results, config_dir)
    footer = [line for line in text.splitlines() if line.startswith(("Resolution:", "Trained on:"))]
    rows = group_runs([load_run(p) for p in find_metrics([results], "ss")], None, None)
    holm_line = versus_kd_holm(rows)
    short = summary(records, footer[:1] + ([holm_line] if holm_line else []) + footer[1:], versus_kd(rows))
    return {False: "\n".join(short) + "\n", True: "\n".join(short + [""] + per_seed(rows)) + "\n"}


def replace_block(text: str, block: str, where: str, begin: str = BEGIN, end: str = END) -> str:
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise SystemExit(f"error: {where}: expected one {begin} ... {end} pair")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{block}\n{end}{tail}"


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write", action="store_true", help="replace the blocks in README.md and docs/TABLES.md")
    parser.add_argument("--figure", nargs="?", const=FIGURE, metavar="PNG",
                        help=f"write the forest plot (default {os.path.relpath(FIGURE, REPO)}); with --write, both")
    parser.add_argument("--equal-cost", action="store_true",
                        help="print the equal-cost rows beside the instrument's (with --figure: their second marker)")
    args = parser.parse_args(argv)
    try:
        if args.equal_cost and not args.figure and not args.write:  # with --write: every block, this one too
            print(equal_cost()[0], end="")
            return 0
        if args.figure:
            rows = figure(args.figure, equal=EQUAL_COST if args.equal_cost else None)
            print(f"wrote the forest plot of {len(rows)} rows to {args.figure}")
            if not args.write:
                return 0
        made = blocks()
        equal = equal_cost()[0] if args.write and os.path.isdir(EQUAL_COST) else None
    except SegKDError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not args.write:
        for name, with_seeds in TARGETS.items():
            print(f"# {name}\n{made[with_seeds]}")
        return 0
    texts = {}
    for name, with_seeds in TARGETS.items():  # every file checked before any is written
        with open(os.path.join(REPO, name), encoding="utf-8") as f:
            texts[name] = replace_block(f.read(), made[with_seeds], name)
        if with_seeds and equal is not None:
            texts[name] = replace_block(texts[name], equal, name, EQUAL_BEGIN, EQUAL_END)
    for name, text in texts.items():
        with open(os.path.join(REPO, name), "w", encoding="utf-8") as f:
            f.write(text)
        print(f"wrote the instrument block of {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
