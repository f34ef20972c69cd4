"""The equal-cost view of a results table: every row trained for the cost of logit KD (``MATCH=cost
scripts/synthetic/table.sh``, tools/equal_cost.py) beside its iteration-matched result.

``python scripts/make_table.py ITERATION_RUNS --equal-cost EQUAL_COST_RUNS`` adds, below the table, one line per
student row: its iterations under the wall-clock and the FLOPs matching, its cost per iteration relative to logit
KD (seconds and FLOPs), its paired Δ mIoU at equal iterations (from the table above), at equal cost against the
equal-cost baseline and against equal-cost logit KD, each with its 95% t interval, and the change in verdict. The
equal-cost runs are read as the table's (scripts/table_stats.py) and checked run by run: each has the schedule its
folder recorded (``equal_cost.json``, written by the table script) above it, trained that schedule's iterations for
its row, on the machine kind of the schedule's cost file; anything else (an iteration-matched run mixed in, a run
of another machine) is a one-line error. Standard library, numpy and scipy (the intervals), as the table.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

from table_stats import BASELINE_ROW, TEACHER_ROW, Row, find_metrics, group_runs, load_run, paired_difference

from tools.equal_cost import BUDGET_ROW, REPO, check_machine, load_cost, scaled_iters
from util.errors import SegKDError
from util.machine import machine_label

MARKER = "equal_cost.json"
CSV_FIELDS = ["row", "label", "n", "iters_seconds", "iters_flops", "rel_seconds", "rel_flops",
              "i_mIoU", "i_ci95_low", "i_ci95_high", "i_pairs",
              "e_mIoU", "e_ci95_low", "e_ci95_high", "e_pairs", "e_above_zero",
              "k_mIoU", "k_ci95_low", "k_ci95_high", "k_pairs", "verdict_iters", "verdict_cost"]


def find_marker(run_dir: str, tops: list[str]) -> Optional[str]:
    """The ``equal_cost.json`` in ``run_dir`` or a folder above it, up to the searched folder it lies in."""
    here, stops = os.path.realpath(run_dir), {os.path.realpath(t) for t in tops}
    while True:
        candidate = os.path.join(here, MARKER)
        if os.path.isfile(candidate):
            return candidate
        parent = os.path.dirname(here)
        if here in stops or parent == here:
            return None
        here = parent


def read_plan(path: str) -> dict[str, Any]:
    """A recorded schedule, with its cost file loaded and checked against the schedule's machine."""
    try:
        with open(path, encoding="utf-8") as f:
            plan = json.load(f)
        cost_file = os.path.join(REPO, plan["cost_file"]) if not os.path.isabs(plan["cost_file"]) else plan["cost_file"]
        label, rows = plan["machine_label"], plan["rows"]
        int(plan["budget_iters"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise SegKDError(f"{path}: not an equal-cost schedule ({e!r})") from None
    cost = load_cost(cost_file)
    check_machine(cost, label, cost_file, f"the runs under {os.path.dirname(path)} trained")
    if cost["commit"] != plan.get("cost_commit"):
        raise SegKDError(f"{cost_file}: measured at commit {cost['commit']}, but the runs under "
                         f"{os.path.dirname(path)} were scheduled from its measurement at {plan.get('cost_commit')}; "
                         "use that file")
    missing = [r for r in rows if r not in cost["rows"]] + ([BUDGET_ROW] if BUDGET_ROW not in cost["rows"] else [])
    if missing:
        raise SegKDError(f"{cost_file}: no measured cost for row {missing[0]} (scheduled in {path})")
    return {**plan, "rows": rows, "cost": cost, "cost_path": cost_file, "path": path}


def check_run(row: Row, run, plan: dict[str, Any]) -> None:
    """One equal-cost run against its folder's schedule: its machine kind and its iterations."""
    trained = machine_label(run.metrics.get("trained_on"))
    if trained != plan["machine_label"]:
        raise SegKDError(f"{run.metrics_path}: trained on {trained}, but its schedule {plan['path']} is the cost "
                         f"file of {plan['machine_label']}; a pair compares one machine kind")
    if row.key not in plan["rows"]:
        raise SegKDError(f"{run.metrics_path}: row {row.key} has no equal-cost schedule in {plan['path']}")
    want, got = plan["rows"][row.key]["iters"], run.metrics.get("iteration")
    if got != want:
        raise SegKDError(f"{run.metrics_path}: row {row.key} trained {got} iterations, its equal-cost schedule "
                         f"{plan['path']} says {want} (an iteration-matched run mixed in?)")


def load_equal_cost(paths: list[str], eval_name: str, seeds: Optional[list[int]]) -> tuple[list[Row], dict]:
    """(the equal-cost rows, {run metrics path: its schedule}); every run checked (:func:`check_run`)."""
    rows = group_runs([load_run(p) for p in find_metrics(paths, eval_name)], None, seeds)
    plans: dict[str, dict[str, Any]] = {}
    by_run = {}
    for row in rows:
        if row.key == TEACHER_ROW:
            continue
        for run in row.runs:
            marker = find_marker(run.run_dir, paths)
            if marker is None:
                raise SegKDError(f"{run.metrics_path}: no {MARKER} in its folder or above: not an equal-cost run "
                                 "(MATCH=cost scripts/synthetic/table.sh records one)")
            if marker not in plans:
                plans[marker] = read_plan(marker)
            check_run(row, run, plans[marker])
            by_run[run.metrics_path] = plans[marker]
    if not by_run:
        raise SegKDError(f"--equal-cost {' '.join(paths)}: no equal-cost student run found")
    return rows, by_run


def paired(row: Optional[Row], base: Optional[Row]) -> dict[str, Any]:
    """Mean, 95% interval, pairs and pairs above zero of row − base mIoU (points) over their common seeds."""
    if row is None or base is None or row is base or not row.runs:
        return {"mean": None, "low": None, "high": None, "pairs": 0, "above": None, "excludes_zero": None,
                "values": []}
    d = paired_difference(row, base)  # the table's own pairing
    return {"mean": d["d_mIoU"], "low": d["d_ci95_low"], "high": d["d_ci95_high"], "pairs": d["d_pairs"],
            "above": d["d_above_zero"], "excludes_zero": d["d_resolved"], "values": d["d_values"]}


def verdict(mean: Optional[float], excludes_zero: Optional[bool], pairs: int) -> str:
    if not pairs or mean is None:
        return "—"
    if pairs < 2:
        return "one pair"
    if not excludes_zero:
        return "not resolved"
    return "above" if mean > 0 else "below"


def costs(row: Row, by_run: dict) -> tuple[str, str, str, str]:
    """(iterations wall-clock matched, iterations FLOPs matched, × KD seconds, × KD FLOPs) from the schedules of
    the row's runs, one value per machine kind (`` / `` between two)."""
    its, itf, rs, rf = [], [], [], []
    for plan in {by_run[r.metrics_path]["path"]: by_run[r.metrics_path] for r in row.runs}.values():
        rows, budget = plan["cost"]["rows"], plan["budget_iters"]
        base = rows[BUDGET_ROW]
        own = rows[row.key]
        its.append(str(plan["rows"][row.key]["iters"]) if plan["match"] == "seconds"
                   else str(scaled_iters(budget * base["seconds"]["median"], own["seconds"]["median"])))
        itf.append(str(scaled_iters(budget * base["flops"], own["flops"])))
        rs.append(f"{own['seconds']['median'] / base['seconds']['median']:.2f}")
        rf.append(f"{own['flops'] / base['flops']:.2f}")
    return tuple(" / ".join(dict.fromkeys(v)) for v in (its, itf, rs, rf))


def records(iter_records: list[dict[str, Any]], rows: list[Row], by_run: dict) -> list[dict[str, Any]]:
    """One record per equal-cost student row with runs, in table order."""
    by_key = {r.key: r for r in rows}
    base, kd = by_key.get(BASELINE_ROW), by_key.get(BUDGET_ROW)
    iterated = {rec["row"]: rec for rec in iter_records}
    out = []
    for row in rows:
        if row.key == TEACHER_ROW or not row.runs:
            continue
        it = iterated.get(row.key, {})
        e, k = paired(row, base), paired(row, kd)
        its, itf, rs, rf = costs(row, by_run)
        rec = {"row": row.key, "label": row.label, "n": len(row.runs), "iters_seconds": its, "iters_flops": itf,
               "rel_seconds": rs, "rel_flops": rf,
               "i_mIoU": it.get("d_mIoU"), "i_ci95_low": it.get("d_ci95_low"), "i_ci95_high": it.get("d_ci95_high"),
               "i_pairs": it.get("d_pairs") or 0, "i_values": it.get("d_values") or [],
               "e_mIoU": e["mean"], "e_ci95_low": e["low"], "e_ci95_high": e["high"], "e_pairs": e["pairs"],
               "e_above_zero": e["above"], "e_resolved": e["excludes_zero"], "e_values": e["values"],
               "k_mIoU": k["mean"], "k_ci95_low": k["low"], "k_ci95_high": k["high"], "k_pairs": k["pairs"],
               "k_resolved": k["excludes_zero"]}
        rec["verdict_iters"] = verdict(rec["i_mIoU"], it.get("d_resolved"), rec["i_pairs"])
        rec["verdict_cost"] = verdict(rec["e_mIoU"], rec["e_resolved"], rec["e_pairs"])
        out.append(rec)
    return out


def fmt_delta(mean: Optional[float], low: Optional[float], high: Optional[float], resolved: Optional[bool]) -> str:
    if mean is None:
        return "—"
    text = f"{mean:+.2f}" + ("" if low is None else f" [{low:+.2f}, {high:+.2f}]")
    return f"**{text}**" if resolved else text


def markdown(recs: list[dict[str, Any]], by_run: dict) -> str:
    plans = {p["path"]: p for p in by_run.values()}.values()
    where = "; ".join(f"{p['machine_label']}: {p['cost_file']} (commit {p['cost']['commit']}, {p['match']} matched)"
                      for p in plans)
    budget = sorted({p["budget_iters"] for p in plans})
    lines = [f"**At equal cost.** Every row trained for the cost of logit KD's {'/'.join(map(str, budget))} "
             f"iterations, by its own cost per iteration (tools/equal_cost.py; cost files: {where}). Δ in points, "
             "paired seed by seed, 95% t interval, **bold** when it excludes zero; verdict: above / below / not "
             "resolved against the baseline at equal iterations → at equal cost.", "",
             "| row | iters (wall-clock / FLOPs matched) | × KD s / iter | × KD FLOPs / iter | Δ at equal iterations "
             "| Δ at equal cost vs baseline | pairs | Δ at equal cost vs logit KD | verdict |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in recs:
        change = r["verdict_iters"] if r["verdict_iters"] == r["verdict_cost"] else \
            f"{r['verdict_iters']} → {r['verdict_cost']}"
        if r["verdict_iters"] == r["verdict_cost"] and change != "—":
            change = f"{change} (unchanged)"
        pairs = f"{r['e_pairs']} ({r['e_above_zero']} > 0)" if r["e_pairs"] else "—"
        lines.append(
            f"| {r['label']} | {r['iters_seconds']} / {r['iters_flops']} | {r['rel_seconds']} | {r['rel_flops']} "
            f"| {fmt_delta(r['i_mIoU'], r['i_ci95_low'], r['i_ci95_high'], r['verdict_iters'] in ('above', 'below'))} "
            f"| {fmt_delta(r['e_mIoU'], r['e_ci95_low'], r['e_ci95_high'], r['e_resolved'])} | {pairs} "
            f"| {fmt_delta(r['k_mIoU'], r['k_ci95_low'], r['k_ci95_high'], r['k_resolved'])} | {change} |")
    return "\n".join(lines) + "\n"


def section(paths: list[str], eval_name: str, seeds: Optional[list[int]],
            iter_records: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """(markdown section, records) of the equal-cost runs under ``paths`` beside the table's ``iter_records``."""
    rows, by_run = load_equal_cost(paths, eval_name, seeds)
    recs = records(iter_records, rows, by_run)
    return markdown(recs, by_run), recs
