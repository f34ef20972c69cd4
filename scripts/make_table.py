"""Collect ``metrics.json`` files into the results table: markdown (mean ± std over seeds) and CSV.

    python scripts/make_table.py runs/synthetic --seeds "1 2 3" --config-dir config/synthetic \\
        --out-md runs/synthetic/table.md --out-csv runs/synthetic/table.csv
    python scripts/make_table.py runs/a runs/b/seed1 runs/b/seed2          # any run dirs, grouped by dir name
    python scripts/make_table.py runs/sweep/pspnet18_kd --group-by distill.temperature \\
        --baseline runs/synthetic/pspnet18_baseline                   # Δ mIoU of every row against these runs

Each argument is a run directory (holding ``eval/<EVAL>/metrics.json``), a ``metrics.json`` or a folder searched
for run directories. A run in ``.../<name>/seed<k>`` belongs to row ``<name>``, any other run to the row named
after its directory; ``--group-by KEY`` makes the rows the values of a config key instead. The five rows of the
paper (teacher, R18 baseline, + logit KD, + aux KL, + aux SmoothL1) are recognised by their config names and
checked against the mode, depth and ``distill.feat_loss`` their checkpoints record. Scores are in %, as
mean ± sample standard deviation (n - 1) over seeds; the CSV holds the same numbers unrounded. Each student row
also shows its paired difference to the baseline (``pspnet18_baseline``, or the runs of ``--baseline``): the mean
± sample std over the seeds both have of row mIoU - baseline mIoU, in points, and its training iterations.
Standard library and numpy only.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script from anywhere
from util.errors import SegKDError  # noqa: E402

# (row name = config name, label, (mode, layers, distill.feat_loss or None when supervised)), in table order.
PAPER_ROWS = [
    ("pspnet50_teacher", "Teacher PSPNet-R50", ("supervised", 50, None)),
    ("pspnet18_baseline", "Student PSPNet-R18 baseline", ("supervised", 18, None)),
    ("pspnet18_kd", "R18 + logit KD", ("distill", 18, "none")),
    ("pspnet18_kd_aux_kl", "R18 + logit KD + aux KL", ("distill", 18, "kl")),
    ("pspnet18_kd_aux_smoothl1", "R18 + logit KD + aux SmoothL1", ("distill", 18, "smoothl1")),
]
TEACHER_ROW, BASELINE_ROW = PAPER_ROWS[0][0], PAPER_ROWS[1][0]
SINGLE_SEED_ROWS = {TEACHER_ROW}  # one teacher serves every seed: its row is n=1, no seeds expected
SCORES = ("mIoU", "mAcc", "allAcc")
CSV_FIELDS = ["row", "label", "n", "seeds", "mIoU", "mIoU_std", "mAcc", "mAcc_std", "allAcc", "allAcc_std",
              "params_M", "gflops", "gflops_crop_size", "config", "resolved_config", "notes",
              "iters", "d_mIoU", "d_mIoU_std", "d_pairs", "d_unpaired"]
SKIP_DIRS = {"eval", "model", "tb", "gray", "color"}


@dataclass
class Run:
    metrics_path: str
    run_dir: str
    seed: int
    metrics: dict[str, Any]


@dataclass
class Row:
    key: str
    label: str
    runs: list[Run] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def find_metrics(paths: list[str], eval_name: str) -> list[str]:
    """Every ``<run>/eval/<eval_name>/metrics.json`` under ``paths``, in argument order, each file once."""
    found: list[str] = []
    for path in paths:
        direct = os.path.join(path, "eval", eval_name, "metrics.json")
        if os.path.isfile(path):
            found.append(path)
        elif os.path.isfile(direct):
            found.append(direct)
        elif os.path.isdir(path):
            for dirpath, dirnames, _ in os.walk(path):
                dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
                candidate = os.path.join(dirpath, "eval", eval_name, "metrics.json")
                if os.path.isfile(candidate):
                    found.append(candidate)
        else:
            raise SegKDError(f"{path}: no such run directory, folder or metrics.json")
    unique: dict[str, str] = {}
    for path in found:
        unique.setdefault(os.path.realpath(path), path)
    return list(unique.values())


def load_run(metrics_path: str) -> Run:
    try:
        with open(metrics_path, encoding="utf-8") as f:
            metrics = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise SegKDError(f"{metrics_path}: cannot read metrics ({e})") from None
    seed = config_value(metrics, "train.seed", metrics_path)
    # metrics.json sits in <run>/eval/<protocol>/
    run_dir = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(metrics_path))))
    return Run(metrics_path, run_dir, int(seed), metrics)


def config_value(metrics: dict[str, Any], key: str, where: str) -> Any:
    """A dotted key (``distill.temperature``) of the training config recorded in a metrics.json."""
    node: Any = metrics.get("config")
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise SegKDError(f"{where}: the recorded training config has no key {key}")
        node = node[part]
    return node


def row_name(run: Run) -> str:
    """``.../pspnet18_kd/seed2`` -> ``pspnet18_kd``; any other run directory -> its own name."""
    base = os.path.basename(run.run_dir)
    return os.path.basename(os.path.dirname(run.run_dir)) if re.fullmatch(r"seed\d+", base) else base


def signature(run: Run) -> tuple[Any, Any, Any]:
    """(mode, layers, feat_loss or None): what decides which paper row a run can be."""
    mode = run.metrics.get("mode")
    feat = config_value(run.metrics, "distill.feat_loss", run.metrics_path) if mode == "distill" else None
    return mode, run.metrics.get("layers"), feat


def describe(sig: tuple[Any, Any, Any]) -> str:
    mode, layers, feat = sig
    return f"{mode} R{layers}" + (f", feat_loss {feat}" if mode == "distill" else "")


def group_runs(runs: list[Run], group_by: Optional[str], seeds: Optional[list[int]]) -> list[Row]:
    """Rows in table order: the paper's five (when any is present and not grouping by a key), then the rest."""
    rows: dict[str, Row] = {}
    paper = {name: (label, sig) for name, label, sig in PAPER_ROWS}
    if group_by is None and any(row_name(r) in paper for r in runs):
        rows = {name: Row(name, label) for name, label, _ in PAPER_ROWS}
    for run in runs:
        if group_by is not None:
            value = config_value(run.metrics, group_by, run.metrics_path)
            key = f"{group_by}={value}"
            label = key
        else:
            key = row_name(run)
            if key in paper and signature(run) != paper[key][1]:
                raise SegKDError(f"{run.metrics_path}: in row {key} but the run is a {describe(signature(run))} "
                                 f"(expected {describe(paper[key][1])})")
            label = paper[key][0] if key in paper else f"{key} ({describe(signature(run))})"
        rows.setdefault(key, Row(key, label)).runs.append(run)
    for row in rows.values():
        check_seeds(row, None if row.key in SINGLE_SEED_ROWS and group_by is None else seeds)
    return list(rows.values())


def check_seeds(row: Row, seeds: Optional[list[int]]) -> None:
    """Refuse two runs with one seed; keep only the expected seeds and note the missing and ignored ones."""
    by_seed: dict[int, Run] = {}
    for run in row.runs:
        if run.seed in by_seed:
            raise SegKDError(f"row {row.key}: two runs with train.seed={run.seed}: {by_seed[run.seed].run_dir} "
                             f"and {run.run_dir}; pass only one of them")
        by_seed[run.seed] = run
    if seeds is None:
        if not row.runs:
            row.notes.append("missing: no runs")
        return
    missing = [s for s in seeds if s not in by_seed]
    ignored = sorted(s for s in by_seed if s not in seeds)
    row.runs = [by_seed[s] for s in seeds if s in by_seed]
    if missing:
        row.notes.append(seeds_note("missing", missing))
    if ignored:
        row.notes.append(seeds_note("ignored", ignored))


def seeds_note(what: str, seeds: list[int]) -> str:
    """``missing: seed 3``, ``ignored: seeds 3, 4``."""
    return f"{what}: seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"


def mean_std(values: list[float]) -> tuple[float, Optional[float]]:
    """Mean and sample standard deviation (ddof=1; None for one value) of fractions, as percentages."""
    pct = np.asarray(values, dtype=np.float64) * 100.0
    return float(pct.mean()), (float(pct.std(ddof=1)) if len(pct) > 1 else None)


def load_baseline(path: str, eval_name: str, seeds: Optional[list[int]]) -> Row:
    """The runs of ``--baseline PATH`` (its ``seed<k>`` run dirs, or any run dirs under it) as one row."""
    try:
        found = find_metrics([path], eval_name)
    except SegKDError as e:
        raise SegKDError(f"--baseline: {e}") from None
    if not found:
        raise SegKDError(f"--baseline {path}: no eval/{eval_name}/metrics.json found")
    row = Row("baseline", path, [load_run(p) for p in found])
    check_seeds(row, seeds)
    if not row.runs:
        raise SegKDError(f"--baseline {path}: no run with a seed of --seeds ({' '.join(map(str, seeds or []))})")
    return row


def compared(row: Row, base: Optional[Row], paper: bool) -> bool:
    """Whether a row gets a paired difference: not the teacher, not the baseline's own runs; against the paper's
    baseline row only R18 rows, against ``--baseline`` every other row."""
    if base is None or (paper and row.key == TEACHER_ROW) or row is base:
        return False
    if row.runs and {os.path.realpath(r.metrics_path) for r in row.runs} == \
            {os.path.realpath(r.metrics_path) for r in base.runs}:
        return False
    return base.key != BASELINE_ROW or all(r.metrics.get("layers") == 18 for r in row.runs)


def paired_difference(row: Row, base: Row) -> dict[str, Any]:
    """d_seed = row mIoU - baseline mIoU in points for every seed both have: mean, sample std, pairs, and the
    seeds only one side has (not listed for a row without runs, whose notes already say so)."""
    mine, theirs = ({r.seed: r.metrics["mIoU"] for r in x.runs} for x in (row, base))
    common = [s for s in mine if s in theirs]
    mean, std = mean_std([mine[s] - theirs[s] for s in common]) if common else (None, None)
    unpaired = sorted(set(mine) ^ set(theirs)) if row.runs else []
    return {"d_mIoU": mean, "d_mIoU_std": std, "d_pairs": len(common), "unpaired": unpaired,
            "d_unpaired": " ".join(map(str, unpaired)) or None}


def iterations(row: Row) -> Optional[tuple[int, int]]:
    """(fewest, most) training iterations of the row's runs, from metrics.json's ``iteration``; None if unknown."""
    known = [r.metrics["iteration"] for r in row.runs if r.metrics.get("iteration") is not None]
    unknown = [r.seed for r in row.runs if r.metrics.get("iteration") is None]
    if known and unknown:
        row.notes.append(seeds_note("iteration not recorded", unknown))
    return (min(known), max(known)) if known else None


def fmt_iters(span: Optional[tuple[int, int]]) -> Optional[str]:
    if span is None:
        return None
    return str(span[0]) if span[0] == span[1] else f"{span[0]}–{span[1]}"


def distinct(values: list[Any]) -> list[Any]:
    return list(dict.fromkeys(values))


def relative(target: str, base_dir: str) -> str:
    return os.path.relpath(target, base_dir).replace(os.sep, "/")


def config_paths(row: Row, config: Optional[str], config_dir: Optional[str]) -> tuple[Optional[str], Optional[str]]:
    """(experiment YAML from --config or --config-dir/<row>.yaml, the first run's resolved config.yaml)."""
    experiment = config or (os.path.join(config_dir, row.key + ".yaml") if config_dir else None)
    resolved = os.path.join(row.runs[0].run_dir, "config.yaml") if row.runs else None
    return (experiment if experiment and os.path.isfile(experiment) else None,
            resolved if resolved and os.path.isfile(resolved) else None)


def config_links(paths: tuple[Optional[str], Optional[str]], base_dir: str) -> str:
    experiment, resolved = paths
    parts = [f"[{os.path.basename(experiment)}]({relative(experiment, base_dir)})"] if experiment else []
    parts += [f"[resolved]({relative(resolved, base_dir)})"] if resolved else []
    return " · ".join(parts) or "—"


def row_numbers(row: Row) -> dict[str, Any]:
    """One CSV record: unrounded % means and stds, params in millions, GFLOPs and their crop size, iterations."""
    span = iterations(row)
    cost = distinct([(r.metrics.get("params"), r.metrics.get("gflops"), r.metrics.get("gflops_crop_size"))
                     for r in row.runs])
    if len(cost) > 1:
        row.notes.append("params/GFLOPs differ across runs: first run shown")
    params, flops, crop = cost[0] if cost else (None, None, None)
    rec: dict[str, Any] = {"row": row.key, "label": row.label, "n": len(row.runs),
                           "seeds": " ".join(str(r.seed) for r in row.runs), "notes": "; ".join(row.notes),
                           "params_M": params / 1e6 if params else None, "gflops": flops,
                           "gflops_crop_size": crop, "iter_span": span, "iters": fmt_iters(span)}
    for score in SCORES:
        mean, std = mean_std([r.metrics[score] for r in row.runs]) if row.runs else (None, None)
        rec[score], rec[score + "_std"] = mean, std
    return rec


def fmt_score(mean: Optional[float], std: Optional[float]) -> str:
    if mean is None:
        return "—"
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def fmt_paired(rec: dict[str, Any]) -> str:
    """``+4.80 ± 0.28 | 2 (unpaired: seed 3)``: the Δ mIoU and pairs cells; ``— | —`` for a row not compared."""
    if rec.get("d_pairs") is None:
        return "— | —"
    mean, std = rec["d_mIoU"], rec["d_mIoU_std"]
    delta = "—" if mean is None else f"{mean:+.2f}" + ("" if std is None else f" ± {std:.2f}")
    return f"{delta} | {rec['d_pairs']}" + (f" ({seeds_note('unpaired', rec['unpaired'])})" if rec["unpaired"] else "")


def markdown(rows: list[Row], records: list[dict[str, Any]], caption: str) -> str:
    lines = ["| row | mIoU | mAcc | allAcc | n seeds | params (M, no aux head) | GFLOPs @ crop (no aux head) | iters "
             "| Δ mIoU vs baseline | pairs | config | notes |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row, rec in zip(rows, records):
        params = f"{rec['params_M']:.2f}" if rec["params_M"] is not None else "—"
        flops = f"{rec['gflops']:.2f} @ {rec['gflops_crop_size']}" if rec["gflops"] is not None else "—"
        scores = " | ".join(fmt_score(rec[s], rec[s + "_std"]) for s in SCORES)
        lines.append(f"| {row.label} | {scores} | {rec['n']} | {params} | {flops} | {rec['iters'] or '—'} "
                     f"| {fmt_paired(rec)} | {rec['links']} | {rec['notes']} |")
    return caption + "\n\n" + "\n".join(lines) + "\n"


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
                 "percentage points; mean ± sample std over the pairs (no ± with one pair), unpaired seeds left out.")
    spans = {row.key: rec["iter_span"] for row, rec in zip(rows, records)}
    teacher, students = spans.get(TEACHER_ROW), spans.get(BASELINE_ROW)
    if teacher and students and teacher[0] == teacher[1] and students[0] == students[1] and students[0] > 0:
        text += (f" The teacher trained {teacher[0] / students[0]:.1f}× the students' iterations "
                 f"({teacher[0]} vs {students[0]}).")
    elif teacher and students:
        text += f" The teacher trained {fmt_iters(teacher)} iterations, the baseline {fmt_iters(students)}."
    return text


def baseline_phrase(base: Optional[Row], base_dir: str) -> Optional[str]:
    """What Δ is paired against, for the caption: the paper's baseline row, or the ``--baseline`` runs."""
    if base is None:
        return None
    if base.key == BASELINE_ROW:
        return f"the {base.label} row"
    return (f"the runs in `{relative(base.label, base_dir)}` ({describe(signature(base.runs[0]))}, "
            f"seeds {' '.join(str(r.seed) for r in base.runs)})")


def write_csv(path: str, records: list[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for rec in records:
            writer.writerow({k: ("" if rec.get(k) is None else rec[k]) for k in CSV_FIELDS})


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
    args = parser.parse_args(argv)
    try:
        text, records = build(args)
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
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
