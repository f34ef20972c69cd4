"""Collect ``metrics.json`` files into the results table: markdown (mean ± std over seeds) and CSV.

    python scripts/make_table.py runs/synthetic --seeds "1 2 3" --config-dir config/synthetic \\
        --out-md runs/synthetic/table.md --out-csv runs/synthetic/table.csv
    python scripts/make_table.py runs/a runs/b/seed1 runs/b/seed2          # any run dirs, grouped by dir name
    python scripts/make_table.py runs/sweep/pspnet18_kd --group-by distill.temperature \\
        --baseline runs/synthetic/pspnet18_baseline                   # Δ mIoU of every row against these runs
    python scripts/make_table.py runs/synthetic --figure runs/synthetic/forest.png     # and the forest plot

Each argument is a run directory (holding ``eval/<EVAL>/metrics.json``), a ``metrics.json`` or a folder searched
for run directories. A run in ``.../<name>/seed<k>`` belongs to row ``<name>``, any other run to the row named
after its directory; ``--group-by KEY`` makes the rows the values of a config key instead. The five rows of the
paper (teacher, R18 baseline, + logit KD, + aux KL, + aux SmoothL1), and the rows of a teacher-assistant chain
(``pspnet34_kd``, ``pspnet18_kd_ta``) and of mutual learning (``dml_*``), are recognised by their config names and
checked against the mode, depth and ``distill.feat_loss`` their checkpoints record; a ``metrics.json`` that names a
checkpoint outside its run directory (another run's model scored into this folder) is refused. Scores are in %, as
mean ± sample standard deviation (n - 1) over seeds; the CSV holds the same numbers unrounded. Each student row
also shows its paired difference to the baseline (``pspnet18_baseline``, or the runs of ``--baseline``): the mean
± sample std over the seeds both have of row mIoU - baseline mIoU, in points, and its training iterations; the
chained student's notes also pair it with the direct R50 -> R18 row (``pspnet18_kd``).
``--equal-cost RUNS`` adds the same rows trained at equal cost below the table (scripts/equal_cost_table.py: their
iterations, relative cost, Δ vs the equal-cost baseline and logit KD, the change in verdict) and a second marker per
row in the figure. ``--figure PATH`` also draws the paired differences as a forest plot (scripts/forest_plot.py,
matplotlib): every row with a paired Δ, its 95% interval and pairs, the zero line and the Resolution line's
half-width as a band.
Standard library and numpy; scipy for the intervals and matplotlib for the figure, both imported only when needed
(requirements-dev.txt; without them a one-line error). The runs, rows and their numbers are scripts/table_stats.py;
this file is the command and renders them (markdown table with its caption and links, CSV, figure).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from typing import Any, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]  # run as a script from anywhere: the repo (util/) and table_stats
from forest_plot import ForestRow, draw, equal_cost_rows, forest_rows  # noqa: E402
from paired_stats import pooled_std, resolution  # noqa: E402
from table_stats import (  # noqa: E402
    BASELINE_ROW,
    SCORES,
    TEACHER_ROW,
    Row,
    Run,
    also_paired_note,
    compared,
    describe,
    find_metrics,
    fmt_iters,
    group_runs,
    load_baseline,
    load_run,
    paired_difference,
    row_numbers,
    seeds_note,
    signature,
)

from util.errors import SegKDError  # noqa: E402
from util.machine import machine_label  # noqa: E402

CSV_FIELDS = ["row", "label", "n", "seeds", "mIoU", "mIoU_std", "mAcc", "mAcc_std", "allAcc", "allAcc_std",
              "params_M", "gflops", "gflops_crop_size", "config", "resolved_config", "notes",
              "iters", "d_mIoU", "d_mIoU_std", "d_pairs", "d_unpaired",
              "d_ci95_low", "d_ci95_high", "d_above_zero", "d_resolved"]


def relative(target: str, base_dir: str) -> str:
    return os.path.relpath(target, base_dir).replace(os.sep, "/")


def config_paths(row: Row, config: Optional[str], config_dir: Optional[str]) -> tuple[Optional[str], Optional[str]]:
    """(experiment YAML from --config or --config-dir/<row>.yaml, the first run's resolved config.yaml)."""
    experiment = config or (os.path.join(config_dir, (row.name or row.key) + ".yaml") if config_dir else None)
    resolved = os.path.join(row.runs[0].run_dir, "config.yaml") if row.runs else None
    return (experiment if experiment and os.path.isfile(experiment) else None,
            resolved if resolved and os.path.isfile(resolved) else None)


def config_links(paths: tuple[Optional[str], Optional[str]], base_dir: str) -> str:
    experiment, resolved = paths
    parts = [f"[{os.path.basename(experiment)}]({relative(experiment, base_dir)})"] if experiment else []
    parts += [f"[resolved]({relative(resolved, base_dir)})"] if resolved else []
    return " · ".join(parts) or "—"


def fmt_score(mean: Optional[float], std: Optional[float]) -> str:
    if mean is None:
        return "—"
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def fmt_paired(rec: dict[str, Any]) -> str:
    """``**+4.80 ± 0.28** [+2.28, +7.32] | 2 (2 > 0; unpaired: seed 3)``: the Δ mIoU cell (mean ± std, the 95% t
    interval, bold when it excludes zero) and the pairs cell (how many pairs are above zero); ``— | —`` for a row
    not compared."""
    if rec.get("d_pairs") is None:
        return "— | —"
    mean, std = rec["d_mIoU"], rec["d_mIoU_std"]
    delta = "—" if mean is None else f"{mean:+.2f}" + ("" if std is None else f" ± {std:.2f}")
    if rec.get("d_resolved"):
        delta = f"**{delta}**"
    if rec.get("d_ci95_low") is not None:
        delta += f" [{rec['d_ci95_low']:+.2f}, {rec['d_ci95_high']:+.2f}]"
    notes = [f"{rec['d_above_zero']} > 0"] if rec.get("d_above_zero") is not None and rec["d_pairs"] else []
    notes += [seeds_note("unpaired", rec["unpaired"])] if rec["unpaired"] else []
    return f"{delta} | {rec['d_pairs']}" + (f" ({'; '.join(notes)})" if notes else "")


Resolution = tuple[float, int, int, dict[int, tuple[float, float]]]


def resolution_numbers(records: list[dict[str, Any]]) -> Optional[Resolution]:
    """(pooled paired std of the compared rows, its degrees of freedom, how many rows it pools, {number of pairs:
    (half-width of a 95% interval, difference detected with 80% power)} at each number of pairs the rows have);
    None when no row has two pairs."""
    groups = [rec["d_values"] for rec in records if rec.get("d_values")]
    std, df = pooled_std(groups)
    if std is None:
        return None
    sizes = sorted({len(g) for g in groups if len(g) > 1})
    return std, df, sum(len(g) > 1 for g in groups), {n: resolution(std, df, n) for n in sizes}


def resolution_line(records: list[dict[str, Any]]) -> Optional[str]:
    """What the table can resolve: the pooled paired std of the compared rows and, at each number of pairs the
    rows have, the half-width of a 95% interval and the difference detected with 80% power."""
    numbers = resolution_numbers(records)
    if numbers is None:
        return None
    std, df, pooled, at = numbers
    parts = []
    for n, (half, detect) in at.items():
        parts.append(f"with {n} pairs a 95% interval is ± {half:.2f} points (a true difference of {detect:.2f} is "
                     "found with 80% power)")
    return (f"Resolution: pooled paired std {std:.2f} points over {pooled} compared rows "
            f"({df} degrees of freedom); {'; '.join(parts)}. A paired Δ smaller than its row's half-width is "
            "noise at this n.")


def figure(records: list[dict[str, Any]], path: str, title: str,
           second: Optional[dict[str, ForestRow]] = None) -> list[ForestRow]:
    """The forest plot of the table's paired differences (scripts/forest_plot.py) written to ``path``: the rows
    with a paired Δ, and the resolution band at each row's number of pairs; ``second``: each row's equal-cost Δ by
    label, drawn as a second marker. Returns the rows drawn."""
    numbers = resolution_numbers(records)
    rows = forest_rows(records, {n: half for n, (half, _) in numbers[3].items()} if numbers else {})
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    draw(rows, path, title, second=second)
    return rows


def default_title(records: list[dict[str, Any]]) -> str:
    """``Paired Δ mIoU vs the Student PSPNet-R18 baseline: 15 rows, 10 seeds``."""
    base = next((rec["label"] for rec in records if rec["row"] == BASELINE_ROW), "the baseline")
    pairs = sorted({len(rec["d_values"]) for rec in records if rec.get("d_values")})
    seeds = f"{pairs[0]}–{pairs[-1]}" if len(pairs) > 1 else str(pairs[0] if pairs else 0)
    shown = sum(1 for rec in records if rec.get("d_values"))
    return f"Paired Δ mIoU vs {base}: {shown} rows, {seeds} seeds"


def machines_line(rows: list[Row]) -> Optional[str]:
    """Which machine trained each seed's runs (``trained_on`` of metrics.json): CPUs move every run, so a pair is
    only a pair on one machine. None when no run recorded one."""
    seeds: dict[str, set[int]] = {}
    teacher: dict[str, float] = {}  # machine -> the teacher's mIoU there
    generations: dict[str, set[tuple[str, str]]] = {}  # machine -> (CPU family, model) of its runs, where recorded
    for row in rows:
        for run in row.runs:
            meta = run.metrics.get("trained_on")
            label = machine_label(meta)
            if isinstance(meta, dict) and meta.get("family") is not None:
                generations.setdefault(label, set()).add((str(meta["family"]), str(meta.get("model"))))
            if row.key == TEACHER_ROW:
                teacher[label] = run.metrics["mIoU"]
            else:
                seeds.setdefault(label, set()).add(run.seed)
    if not any(label != "not recorded" for label in set(seeds) | set(teacher)):
        return None

    def the_teacher(label: str) -> str:  # its mIoU too when each machine has its own
        return "the teacher" + (f" ({100 * teacher[label]:.2f} mIoU)" if len(teacher) > 1 else "")

    def named(label: str) -> str:  # the label, and the CPU generations of its runs (speed, not arithmetic)
        gens = sorted(generations.get(label, ()), key=lambda g: tuple(int(x) if x.isdigit() else -1 for x in g))
        return label + (f" [CPU {'; '.join(f'family {f} model {m}' for f, m in gens)}]" if gens else "")

    parts = []
    for label, s in sorted(seeds.items(), key=lambda item: min(item[1])):
        who = f"seed{'s' if len(s) > 1 else ''} {' '.join(str(k) for k in sorted(s))}"
        parts.append(f"{who}{' and ' + the_teacher(label) if label in teacher else ''}: {named(label)}")
    parts += [f"{the_teacher(label)}: {named(label)}" for label in sorted(set(teacher) - set(seeds))]
    mixed = [k for k in {k for s in seeds.values() for k in s} if sum(k in s for s in seeds.values()) > 1]
    warn = f" Seeds {' '.join(map(str, sorted(mixed)))} mix machines: their pairs compare CPUs." if mixed else ""
    orphans = sorted(k for label, s in seeds.items() if label not in teacher for k in s) if len(teacher) > 1 else []
    if orphans:
        warn += (f" Seeds {' '.join(map(str, orphans))}: no teacher from their machine in the table, which has one "
                 "per machine.")
    return "Trained on: " + "; ".join(parts) + "." + warn


def markdown(rows: list[Row], records: list[dict[str, Any]], caption: str) -> str:
    lines = ["| row | mIoU | mAcc | allAcc | n seeds | params (M, no aux head) | GFLOPs @ crop (no aux head) | iters "
             "| Δ mIoU vs baseline | pairs | config | notes |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row, rec in zip(rows, records):
        params = f"{rec['params_M']:.2f}" if rec["params_M"] is not None else "—"
        flops = f"{rec['gflops']:.2f} @ {rec['gflops_crop_size']}" if rec["gflops"] is not None else "—"
        scores = " | ".join(fmt_score(rec[s], rec[s + "_std"]) for s in SCORES)
        lines.append(f"| {row.label} | {scores} | {rec['n']} | {params} | {flops} | {rec['iters'] or '—'} "
                     f"| {fmt_paired(rec)} | {rec['links']} | {rec['notes']} |")
    footer = "\n\n".join(line for line in (resolution_line(records), machines_line(rows)) if line)
    return caption + "\n\n" + "\n".join(lines) + "\n" + (f"\n{footer}\n" if footer else "")


def caption_for(rows: list[Row], records: list[dict[str, Any]], eval_name: str, baseline: Optional[str]) -> str:
    """The protocol, what ± means, what Δ is paired against (``baseline``, if any) and the teacher's schedule."""
    runs = [r for row in rows for r in row.runs]
    proto = runs[0].metrics.get("protocol") if runs else None
    where = f"`eval/{eval_name}/metrics.json`" + (f", protocol {json.dumps(proto, sort_keys=True)}" if proto else "")
    text = (f"Scores in % from {where}: mean ± sample std (n - 1) over seeds; no ± with one run. "
            "params and GFLOPs: the inference network (without the aux head, which evaluation skips); GFLOPs of one "
            "forward pass on a crop × crop image.")
    if baseline:
        text += (f" Δ mIoU vs baseline: for each seed both have, the row's mIoU minus that of {baseline}, in "
                 "percentage points; mean ± sample std over the pairs (no ± with one pair), unpaired seeds left out; "
                 "in brackets the 95% Student's t interval of the mean (rows with 2 or more pairs), **bold** when it "
                 "excludes zero; pairs: how many, and how many of them above zero.")
    spans = {row.key: rec["iter_span"] for row, rec in zip(rows, records)}
    teacher, students = spans.get(TEACHER_ROW), spans.get(BASELINE_ROW)
    if teacher and students and teacher[0] == teacher[1] and students[0] == students[1] and students[0] > 0:
        text += (f" The teacher trained {teacher[0] / students[0]:.1f}× the students' iterations "
                 f"({teacher[0]} vs {students[0]}).")
    elif teacher and students:
        text += f" The teacher trained {fmt_iters(teacher)} iterations, the baseline {fmt_iters(students)}."
    return text + arithmetic_phrase(runs)


def arithmetic_phrase(runs: list[Run]) -> str:
    """The training arithmetic when any run trained under autocast (``train.amp``) or with the optimizer's fused
    step (``train.fused_optimizer``): which, for how many runs; empty when every run trained in float32 with the
    loop (or recorded no config)."""
    trains = [(run.metrics.get("config") or {}).get("train") or {} for run in runs]
    low = [train.get("amp_dtype", "bfloat16") for train in trains if train.get("amp")]
    text = ""
    if low:
        kinds = " and ".join(sorted(set(low)))
        which = "every run" if len(low) == len(runs) else f"{len(low)} of the {len(runs)} runs (the others in float32)"
        text = f" Trained under {kinds} autocast (`train.amp`): {which}; evaluated in float32."
    n_fused = sum(bool(train.get("fused_optimizer")) for train in trains)
    if n_fused:
        which = "every run" if n_fused == len(runs) else f"{n_fused} of the {len(runs)} runs (the others with the loop)"
        text += f" The optimizer's fused step (`train.fused_optimizer`): {which}."
    return text


def baseline_phrase(base: Optional[Row], base_dir: str) -> Optional[str]:
    """What Δ is paired against, for the caption: the paper's baseline row, or the ``--baseline`` runs."""
    if base is None:
        return None
    if base.key == BASELINE_ROW:
        return f"the {base.label} row"
    return (f"the runs in `{relative(base.label, base_dir)}` ({describe(signature(base.runs[0]))}, "
            f"seeds {' '.join(str(r.seed) for r in base.runs)})")


def write_csv(path: str, records: list[dict[str, Any]], fields: Optional[list[str]] = None) -> None:
    fields = fields or CSV_FIELDS
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for rec in records:
            writer.writerow({k: ("" if rec.get(k) is None else rec[k]) for k in fields})


def parse_seeds(text: Optional[str]) -> Optional[list[int]]:
    if text is None or not text.strip():
        return None
    try:
        return [int(s) for s in text.replace(",", " ").split()]
    except ValueError:
        raise SegKDError(f"--seeds: expected integers like \"1 2 3\", got {text!r}") from None


def build(args: argparse.Namespace) -> tuple[str, list[dict[str, Any]]]:
    """(markdown, CSV records) for the parsed command line."""
    seeds = parse_seeds(args.seeds)
    runs = [load_run(p) for p in find_metrics(args.paths, args.eval)]
    rows = group_runs(runs, args.group_by, seeds)
    if not rows:
        raise SegKDError(f"{' '.join(args.paths)}: no eval/{args.eval}/metrics.json found")
    # Links are relative to the markdown file (to the cwd when printing only); the CSV's paths likewise.
    base_dir = os.path.dirname(os.path.abspath(args.out_md)) if args.out_md else os.getcwd()
    # Δ is paired against --baseline if given, else against the paper's baseline row (none in --group-by mode)
    paper = args.group_by is None and any(row.key == BASELINE_ROW for row in rows)
    if args.baseline:
        base: Optional[Row] = load_baseline(args.baseline, args.eval, seeds)
    else:
        base = next((row for row in rows if paper and row.key == BASELINE_ROW), None)
    records = [row_numbers(row) for row in rows]
    for row, rec in zip(rows, records):
        paths = config_paths(row, args.config, args.config_dir)
        rec["config"], rec["resolved_config"] = (relative(p, base_dir) if p else None for p in paths)
        rec["links"] = config_links(paths, base_dir)
        if compared(row, base, paper):
            rec.update(paired_difference(row, base))
        note = also_paired_note(row, rows) if args.group_by is None else None
        if note:
            rec["notes"] = "; ".join(n for n in (rec["notes"], note) if n)
    return markdown(rows, records, caption_for(rows, records, args.eval, baseline_phrase(base, base_dir))), records


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="+", help="run directories, metrics.json files or folders to search")
    parser.add_argument("--eval", default="ss", help="eval folder name: ss, ss_flip, ms, ms_flip (default ss)")
    parser.add_argument("--seeds", help='expected seeds, e.g. "1 2 3": others are ignored, absent ones noted')
    parser.add_argument("--group-by", help="rows are the values of this config key, e.g. distill.temperature")
    parser.add_argument("--baseline", help="pair every row's mIoU, seed by seed, with the runs under this folder "
                                           "(default: the pspnet18_baseline row, not with --group-by)")
    parser.add_argument("--config", help="the experiment YAML every row links to (a sweep)")
    parser.add_argument("--config-dir", help="rows link to CONFIG_DIR/<row>.yaml when it exists")
    parser.add_argument("--out-md", help="write the markdown table here")
    parser.add_argument("--out-csv", help="write the CSV here")
    parser.add_argument("--figure", help="write the forest plot of the paired differences here (PNG; matplotlib)")
    parser.add_argument("--figure-title", help="its title (default: the baseline, how many rows and seeds)")
    parser.add_argument("--equal-cost", action="append", metavar="RUNS",
                        help="the same rows trained at equal cost (MATCH=cost scripts/synthetic/table.sh): their Δ "
                             "below the table, and a second marker per row in the figure (scripts/equal_cost_table.py)")
    parser.add_argument("--out-equal-cost-csv", help="write the equal-cost records here (with --equal-cost)")
    args = parser.parse_args(argv)
    try:
        text, records = build(args)
        second = None
        if args.equal_cost:
            import equal_cost_table

            section, eq_records = equal_cost_table.section(args.equal_cost, args.eval, parse_seeds(args.seeds),
                                                           records)
            text += "\n" + section
            second = equal_cost_rows(eq_records)
        if args.figure:
            figure(records, args.figure, args.figure_title or default_title(records), second)
    except SegKDError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.out_md:
        os.makedirs(os.path.dirname(os.path.abspath(args.out_md)), exist_ok=True)
        with open(args.out_md, "w", encoding="utf-8") as f:
            f.write(text)
    if args.out_csv:
        os.makedirs(os.path.dirname(os.path.abspath(args.out_csv)), exist_ok=True)
        write_csv(args.out_csv, records)
    if args.equal_cost and args.out_equal_cost_csv:
        write_csv(args.out_equal_cost_csv, eq_records, equal_cost_table.CSV_FIELDS)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
