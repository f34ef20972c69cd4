"""The equal-cost schedule: every instrument row trained for the cost of plain logit KD at the instrument's schedule.

    python -m tools.equal_cost --cost docs/results/cost/<machine>.json                     # the schedule, as a table
    python -m tools.equal_cost --cost FILE --rows "pspnet18_baseline pspnet18_kd" --lines  # what table.sh reads
    python -m tools.equal_cost --cost FILE --match flops --this-machine cpu --record RUNS/equal_cost.json

A cost file (``python -m tools.cost``, one per machine kind under ``docs/results/cost/``) holds each row's
measured cost per training iteration: median seconds and FLOPs. The budget is the logit-KD row's (``pspnet18_kd``)
cost per iteration times its iterations at the instrument's schedule (its config's ``train.iters``, 150); a row
of cost ``c`` per iteration trains

    iters  = max(1, ⌊N_kd · c_kd / c + ½⌋)                     (nearest integer, halves up)
    warmup = ⌊W · iters / N + ½⌋, at most iters                  (its config's warmup W of N iterations, stretched)

so logit KD itself keeps its 150 and 20, and a row cheaper per iteration than KD (the baseline: no teacher forward)
trains longer. The poly decay runs over ``train.iters`` (engine/trainer.py: ``set_lr``), so it stretches with the
iterations. ``--match seconds`` (the default, the paper's wall-clock matching) uses the median seconds of the
machine's own cost file; ``--match flops`` the forward+backward FLOPs, which no machine moves.

A pairing trains on one machine kind (util/machine.py's label): a cost file measured on another kind is refused
(``--this-machine``, and make_table.py for each run's ``trained_on``), with one line naming both. A row without a
measured cost is one line naming the row. ``--record PATH`` writes the schedule beside the runs (the runs folder's
``equal_cost.json``) or, when it exists, refuses a different one: a folder never holds two schedules.

Standard library only (the table scripts import it without torch); ``--this-machine`` imports torch to name the
device.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from typing import Any, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
if REPO not in sys.path:  # run as python -m from the repo, or imported by scripts/ that put the repo first
    sys.path.insert(0, REPO)
from util.errors import SegKDError  # noqa: E402
from util.machine import machine_label  # noqa: E402

SCHEMA = 1
COST_DIR = os.path.join(REPO, "docs", "results", "cost")
CONFIG_DIR = os.path.join(REPO, "config", "synthetic_cpu")
BUDGET_ROW = "pspnet18_kd"
MATCHES = ("seconds", "flops")
# Every student row of the instrument (SCALE=cpu-paired), in table order: scripts/table.sh's STUDENT_ROWS,
# METHOD_ROWS and MUTUAL_ROWS and the chain (CHAIN_ASSISTANT, CHAIN_STUDENT); tests/test_equal_cost.py keeps them equal.
INSTRUMENT_ROWS = (
    "pspnet18_baseline", "pspnet18_kd", "pspnet18_kd_aux_kl", "pspnet18_kd_aux_smoothl1",
    "pspnet18_kd_aux_cwd", "pspnet18_kd_aux_dist", "pspnet18_kd_aux_kl_std", "pspnet18_kd_dkd", "pspnet18_kd_fitnet",
    "pspnet18_kd_at", "pspnet18_kd_skd", "pspnet18_kd_ifvd", "pspnet18_kd_cirkd", "pspnet18_kd_sphere",
    "pspnet18_kd_rkd", "pspnet18_kd_afd", "pspnet18_kd_ssld",
    "pspnet34_kd", "pspnet18_kd_ta", "dml_pspnet18_pspnet18", "dml_pspnet50_pspnet18",
)
# The keys of a cost file and of each of its rows, with their types (tools/cost.py writes them).
FILE_KEYS = {"schema": int, "machine": dict, "machine_label": str, "commit": str, "date": str, "command": str,
             "settings": dict, "rows": dict}
ROW_KEYS = {"config": str, "seconds": dict, "flops": int, "teacher_forward_flops": int, "extra_params": int,
            "student_params": int, "peak_memory_mib": (int, float), "batch_size": int, "crop_size": int}
SECONDS_KEYS = ("median", "q1", "q3", "iqr", "n")


def slug(label: str) -> str:
    """A machine label as a file name: ``AMD EPYC (AuthenticAMD; avx2 avx512f), 2 CPUs`` ->
    ``amd-epyc-authenticamd-avx2-avx512f-2-cpus``."""
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")


def cost_path(label: str, folder: str = COST_DIR) -> str:
    """The committed cost file of the machine kind ``label``."""
    return os.path.join(folder, slug(label) + ".json")


def check_cost(cost: Any, path: str) -> dict[str, Any]:
    """``cost`` (a parsed cost file) if it has the schema's keys and types, else a one-line error naming the key."""
    if not isinstance(cost, dict):
        raise SegKDError(f"{path}: not a cost file (expected a JSON object)")
    if cost.get("schema") != SCHEMA:
        raise SegKDError(f"{path}: schema {cost.get('schema')!r}, expected {SCHEMA} (written by python -m tools.cost)")
    for key, kind in FILE_KEYS.items():
        if not isinstance(cost.get(key), kind):
            raise SegKDError(f"{path}: key {key} missing or not a {kind.__name__}")
    if machine_label(cost["machine"]) != cost["machine_label"]:
        raise SegKDError(f"{path}: machine_label {cost['machine_label']!r} is not the label of its machine "
                         f"({machine_label(cost['machine'])!r})")
    for row, rec in cost["rows"].items():
        for key, kind in ROW_KEYS.items():
            if not isinstance(rec, dict) or not isinstance(rec.get(key), kind) or isinstance(rec.get(key), bool):
                raise SegKDError(f"{path}: row {row}: key {key} missing or of the wrong type")
        seconds = rec["seconds"]
        bad = [k for k in SECONDS_KEYS if not isinstance(seconds.get(k), (int, float))]
        if bad:
            raise SegKDError(f"{path}: row {row}: seconds.{bad[0]} missing or not a number")
        if seconds["median"] <= 0 or rec["flops"] <= 0:
            raise SegKDError(f"{path}: row {row}: seconds.median and flops must be positive")
    return cost


def load_cost(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            return check_cost(json.load(f), path)
    except FileNotFoundError:
        raise SegKDError(f"{path}: no cost file (measure this machine: python -m tools.cost --rows all --out "
                         f"{path})") from None
    except (OSError, json.JSONDecodeError) as e:
        raise SegKDError(f"{path}: cannot read the cost file ({e})") from None


def check_machine(cost: dict[str, Any], label: str, path: str, who: str = "this pairing trains") -> None:
    """Refuse a cost file measured on another machine kind than ``label``: wall-clock costs are the machine's."""
    if cost["machine_label"] != label:
        raise SegKDError(f"{path}: measured on {cost['machine_label']}, but {who} on {label}; use that machine's cost "
                         f"file ({os.path.relpath(cost_path(label), REPO)}) or measure it with python -m tools.cost")


def row_cost(cost: dict[str, Any], row: str, match: str, path: str) -> float:
    """The cost per iteration of ``row``: median seconds or FLOPs; a one-line error for a row not measured."""
    if match not in MATCHES:
        raise SegKDError(f"match {match!r}: expected one of {', '.join(MATCHES)}")
    rec = cost["rows"].get(row)
    if rec is None:
        raise SegKDError(f"{path}: no measured cost for row {row} (measure it: python -m tools.cost --config "
                         f"config/synthetic_cpu/{row}.yaml, or --rows all)")
    return float(rec["seconds"]["median"]) if match == "seconds" else float(rec["flops"])


def half_up(x: float) -> int:
    """The nearest integer, halves up (Python's round() rounds halves to even)."""
    return math.floor(x + 0.5)


def scaled_iters(budget: float, own: float) -> int:
    """Iterations of a row costing ``own`` per iteration within ``budget`` (cost units): nearest, at least 1."""
    return max(1, half_up(budget / own))


def scaled_warmup(warmup: int, iters: int, new_iters: int) -> int:
    """The warmup of ``warmup`` out of ``iters`` iterations stretched to ``new_iters``: nearest, at most new_iters."""
    return min(new_iters, half_up(warmup * new_iters / iters))


Reference = dict[str, dict[str, int]]  # row -> its iteration-matched iters, warmup_iters, batch_size, crop_size


def schedule(cost: dict[str, Any], rows: list[str], match: str, reference: Reference,
             path: str) -> dict[str, dict[str, Any]]:
    """{row: {iters, warmup_iters, cost, relative}} for ``rows``; ``reference``: each row's train.iters,
    train.warmup_iters, batch_size and crop_size at the iteration-matched schedule, the budget row's among them. A
    row measured at another batch or crop than it trains at is refused."""
    if BUDGET_ROW not in reference:
        raise SegKDError(f"the budget row {BUDGET_ROW} has no reference schedule")
    unit = row_cost(cost, BUDGET_ROW, match, path)
    budget = unit * reference[BUDGET_ROW]["iters"]
    out = {}
    for row in dict.fromkeys([BUDGET_ROW, *rows]):
        rec, ref = cost["rows"].get(row) or {}, reference[row]
        for key in ("batch_size", "crop_size"):
            if key in rec and rec[key] != ref[key]:
                raise SegKDError(f"{path}: row {row} was measured at train.{key}={rec[key]}, but trains at "
                                 f"{ref[key]}; measure it at the pairing's settings")
    for row in rows:
        own = row_cost(cost, row, match, path)
        iters = scaled_iters(budget, own)
        ref_iters, ref_warmup = reference[row]["iters"], reference[row]["warmup_iters"]
        out[row] = {"iters": iters, "warmup_iters": scaled_warmup(ref_warmup, ref_iters, iters), "cost": own,
                    "relative": own / unit}
    return out


def reference_schedule(rows: list[str], config_dir: str, overrides: list[str]) -> Reference:
    """Each row's train.iters, warmup_iters, batch_size and crop_size from ``config_dir/<row>.yaml`` with
    ``overrides``."""
    from util.config import load_config

    ref = {}
    for row in dict.fromkeys([BUDGET_ROW, *rows]):
        path = os.path.join(config_dir, row + ".yaml")
        if not os.path.isfile(path):
            raise SegKDError(f"row {row}: no config {path}")
        t = load_config(path, overrides).train
        if not t.iters:
            raise SegKDError(f"{path}: train.iters is 0 (an epoch schedule); the equal-cost schedule scales iterations")
        ref[row] = {"iters": t.iters, "warmup_iters": t.warmup_iters, "batch_size": t.batch_size,
                    "crop_size": t.crop_size}
    return ref


def this_machine(device: str) -> str:
    """The label of the machine this process trains on (``device``: cpu or cuda)."""
    import torch

    from util.machine import machine

    return machine_label(machine(torch.device(device)))


def record(path: str, plan: dict[str, Any]) -> None:
    """Write ``plan`` to ``path`` or, when it exists, refuse a different one (nothing is overwritten)."""
    if os.path.exists(path):
        try:
            with open(path, encoding="utf-8") as f:
                old = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise SegKDError(f"{path}: cannot read the recorded schedule ({e})") from None
        diff = sorted(k for k in set(old) | set(plan) if old.get(k) != plan.get(k))
        if diff:
            raise SegKDError(f"{path}: these runs follow another equal-cost schedule ({', '.join(diff)} differ); "
                             "use another RUNS folder (nothing was overwritten)")
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(plan, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def plan_for(cost: dict[str, Any], path: str, match: str, rows: list[str], reference: Reference) -> dict[str, Any]:
    """What a runs folder records: the cost file (path, machine, commit), the match and each row's schedule."""
    rel = os.path.relpath(os.path.abspath(path), REPO) if os.path.abspath(path).startswith(REPO) else path
    plan = schedule(cost, rows, match, reference, path)
    return {"cost_file": rel, "machine_label": cost["machine_label"], "cost_commit": cost["commit"], "match": match,
            "budget_row": BUDGET_ROW, "budget_iters": reference[BUDGET_ROW]["iters"],
            "rows": {row: {"iters": p["iters"], "warmup_iters": p["warmup_iters"]} for row, p in plan.items()}}


def format_table(cost: dict[str, Any], path: str, rows: list[str], reference: Reference) -> str:
    """Markdown: each row's seconds and GFLOPs per iteration, both relative to logit KD, and its iterations under
    each matching."""
    by = {m: schedule(cost, rows, m, reference, path) for m in MATCHES}
    lines = [f"Cost file {os.path.basename(path)}: {cost['machine_label']}, commit {cost['commit']}, {cost['date']}",
             "", "| row | s / iter [quartiles] | × KD (s) | GFLOPs / iter | × KD (FLOPs) | extra params | peak MiB "
             "| iters, wall-clock matched | iters, FLOPs matched |", "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        rec = cost["rows"][row]
        s, rel = rec["seconds"], by["seconds"][row]["relative"]
        lines.append(f"| {row} | {s['median']:.3f} [{s['q1']:.3f}, {s['q3']:.3f}] | {rel:.2f} "
                     f"| {rec['flops'] / 1e9:.1f} | {by['flops'][row]['relative']:.2f} | {rec['extra_params']:,} "
                     f"| {rec['peak_memory_mib']:.0f} | {by['seconds'][row]['iters']} | {by['flops'][row]['iters']} |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cost", required=True, help="the cost file (docs/results/cost/<machine>.json)")
    p.add_argument("--rows", default=None, help="space-separated rows (default: every instrument row)")
    p.add_argument("--match", default="seconds", choices=MATCHES)
    p.add_argument("--config-dir", default=CONFIG_DIR, help="the rows' configs: their iteration-matched schedule")
    p.add_argument("--this-machine", choices=("cpu", "cuda"), default=None,
                   help="refuse a cost file of another machine kind than this one's (training on this device)")
    p.add_argument("--lines", action="store_true", help="print 'ROW train.iters=N train.warmup_iters=W' lines")
    p.add_argument("--record", default=None, help="write the schedule here, or check the one already there")
    p.add_argument("overrides", nargs="*", help="the overrides the rows train with (e.g. a preset's)")
    args = p.parse_args(argv)
    try:
        rows = args.rows.split() if args.rows else list(INSTRUMENT_ROWS)
        cost = load_cost(args.cost)
        if args.this_machine:
            check_machine(cost, this_machine(args.this_machine), args.cost)
        reference = reference_schedule(rows, args.config_dir, args.overrides)
        plan = plan_for(cost, args.cost, args.match, rows, reference)
        if args.record:
            record(args.record, plan)
        if args.lines:
            for row, r in plan["rows"].items():
                print(f"{row} train.iters={r['iters']} train.warmup_iters={r['warmup_iters']}")
        else:
            print(format_table(cost, args.cost, rows, reference))
    except SegKDError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
