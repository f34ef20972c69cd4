"""The numbers of the results table, from ``metrics.json`` files: runs found and grouped into rows (the paper's five,
directory names or the values of a config key), seeds checked, mean ± sample std per score, the paired difference
of every row to the baseline seed by seed, training iterations. Imported by scripts/make_table.py, which renders
these records as markdown and CSV (run that: ``python scripts/make_table.py RUNS...``). Standard library and numpy
(scipy for the intervals, scripts/paired_stats.py).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
from paired_stats import paired_interval

from util.errors import SegKDError
from util.machine import machine_label

# (row name = config name, label, (mode, layers, distill.feat_loss or None when supervised)), in table order.
# The teacher row takes a supervised run of any architecture and depth (TEACHER=PATH adopts e.g. an imported
# DeepLabV3-R101): its label names what its metrics.json says it is.
PAPER_ROWS = [
    ("pspnet50_teacher", "Teacher PSPNet-R50", ("supervised", 50, None, None)),
    ("pspnet18_baseline", "Student PSPNet-R18 baseline", ("supervised", 18, None, None)),
    ("pspnet18_kd", "R18 + logit KD", ("distill", 18, "none", ())),
    ("pspnet18_kd_aux_kl", "R18 + logit KD + aux KL", ("distill", 18, "kl", ())),
    ("pspnet18_kd_aux_smoothl1", "R18 + logit KD + aux SmoothL1", ("distill", 18, "smoothl1", ())),
]
# Rows beyond the paper's that the table scripts train (a method row in ROWS, CHAIN="50 34 18", ROWS=dml_...; all
# of them in SCALE=cpu-paired): labelled and checked as those are, shown after them in this order when they have runs.
EXTRA_ROWS = [
    ("pspnet18_kd_aux_cwd", "R18 + logit KD + aux CWD", ("distill", 18, "cwd", ())),
    ("pspnet18_kd_aux_dist", "R18 + logit KD + aux DIST", ("distill", 18, "dist", ())),
    ("pspnet18_kd_aux_kl_std", "R18 + logit KD + aux kl_std", ("distill", 18, "kl_std", ())),
    ("pspnet18_kd_dkd", "R18 + logit KD + DKD", ("distill", 18, "none", ("dkd",))),
    ("pspnet18_kd_fitnet", "R18 + logit KD + FitNets", ("distill", 18, "none", ("fitnet",))),
    ("pspnet18_kd_at", "R18 + logit KD + AT", ("distill", 18, "none", ("at",))),
    ("pspnet18_kd_skd", "R18 + logit KD + SKD (pairwise)", ("distill", 18, "none", ("skd",))),
    ("pspnet18_kd_ifvd", "R18 + logit KD + IFVD", ("distill", 18, "none", ("ifvd",))),
    ("pspnet18_kd_cirkd", "R18 + logit KD + CIRKD", ("distill", 18, "none", ("cirkd",))),
    ("pspnet18_kd_sphere", "R18 + logit KD + spherical KD", ("distill", 18, "none", ("sphere",))),
    ("pspnet18_kd_rkd", "R18 + logit KD + RKD", ("distill", 18, "none", ("rkd",))),
    ("pspnet18_kd_afd", "R18 + logit KD + AFD", ("distill", 18, "none", ("afd",))),
    ("pspnet18_kd_ssld", "R18 + SSLD (symmetric KL, + unlabelled images)", ("distill", 18, "none", ())),
    ("pspnet34_kd", "Assistant PSPNet-R34 + logit KD (R50 -> R34)", ("distill", 34, "none", ())),
    ("pspnet18_kd_ta", "R18 + logit KD from the R34 assistant (R50 -> R34 -> R18)", ("distill", 18, "none", ())),
    ("dml_pspnet18_pspnet18", "R18 + mutual learning with an R18 peer", ("mutual", 18, None, None)),
    ("dml_pspnet50_pspnet18", "R18 + mutual learning with an R50 peer", ("mutual", 18, None, None)),
]
# Rows added after the instrument's first ten seeds: a machine's folder may lack them, until its seeds are run.
LATER_ROWS = {"pspnet18_kd_sphere", "pspnet18_kd_rkd", "pspnet18_kd_afd", "pspnet18_kd_ssld"}
# A row also paired, seed by seed, with another row (in its notes): the chained student with the direct R50 -> R18.
ALSO_PAIRED = {"pspnet18_kd_ta": "pspnet18_kd"}
TEACHER_ROW, BASELINE_ROW = PAPER_ROWS[0][0], PAPER_ROWS[1][0]
# model.build.ARCHS's display names (not imported: the table scripts stay free of torch; a test keeps them equal)
ARCH_NAMES = {"pspnet": "PSPNet", "deeplabv3": "DeepLabV3"}
# One teacher serves every seed of a machine: its row has one run per machine that trained seeds (a table spread
# over two CPUs has two teachers, each distilling its own machine's seeds), no seeds expected.
SINGLE_SEED_ROWS = {TEACHER_ROW}
SCORES = ("mIoU", "mAcc", "allAcc")
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
    name: Optional[str] = None  # the runs' folder (and config) name when it is not ``key``: see :func:`canonical`


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
    # an imported checkpoint (tools.import_weights; adopted as a table's teacher by TEACHER=PATH) has no training
    # config: it was trained elsewhere, once, as a single-seed row; it counts as seed 0
    seed = 0 if metrics.get("imported") and not metrics.get("config") else config_value(
        metrics, "train.seed", metrics_path)
    # metrics.json sits in <run>/eval/<protocol>/
    run_dir = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(metrics_path))))
    check_checkpoint(metrics, metrics_path, run_dir)
    return Run(metrics_path, run_dir, int(seed), metrics)


def check_checkpoint(metrics: dict[str, Any], metrics_path: str, run_dir: str) -> None:
    """Refuse the scores of a checkpoint outside ``run_dir``: another run's model evaluated into this run's eval
    folder would be read as this run's row. ``checkpoint_relative`` (the checkpoint from the metrics.json's
    folder, recorded by test.py) holds when the run directory is moved or copied; a metrics.json without it is
    checked by its absolute ``checkpoint``; one without either is not checked."""
    recorded = metrics.get("checkpoint")
    relative = metrics.get("checkpoint_relative")
    if not isinstance(recorded, str) and not isinstance(relative, str):
        return
    here = os.path.dirname(os.path.abspath(metrics_path))
    ckpt = os.path.normpath(os.path.join(here, relative)) if isinstance(relative, str) else recorded
    ckpt_real, root = os.path.realpath(ckpt), os.path.realpath(run_dir)
    if os.path.commonpath([ckpt_real, root]) != root:
        raise SegKDError(f"{metrics_path}: the scores of {ckpt}, a checkpoint outside this run directory {run_dir} "
                         "(another run's test.checkpoint?); leave this file out, or evaluate that run into its own "
                         "eval folder")


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


# A student prefix's tag (``deeplabv3_<tag>_kd``) -> the networks its runs may be (metrics.json ``layers`` or
# ``backbone``) and its name in the labels, in place of R18: CIRKD's MobileNetV3 students (config/cityscapes,
# config/voc2012; segkd's own variant of the same network too, as config/synthetic_cpu's)
STUDENT_TAGS = {"r18": ((18,), "R18"), "mbv3s": (("mobilenetv3_small_cirkd", "mobilenetv3_small"), "MobileNetV3-Small"),
                "mbv3l": (("mobilenetv3_large_cirkd", "mobilenetv3_large"), "MobileNetV3-Large")}
_STUDENT_NAME = re.compile(rf"(?:pspnet|deeplabv3)_({'|'.join(STUDENT_TAGS)})_((?:baseline|kd)\w*)")


def canonical(name: str) -> str:
    """The row a folder name stands for: the tables of scripts/<cityscapes|ade20k|camvid>/table.sh name their rows by
    architecture (``deeplabv3_r101_teacher``, ``deeplabv3_r18_kd_cirkd``, ``pspnet_mbv3s_kd_cirkd``), each the row of
    the same role above (:data:`TEACHER_ROW`, ``pspnet18_kd_cirkd``) and checked as it is (with the student's network
    in place of R18); any other name is its own row."""
    if re.fullmatch(r"(?:pspnet|deeplabv3)_r\d+_teacher", name):
        return TEACHER_ROW
    m = _STUDENT_NAME.fullmatch(name)
    return f"pspnet18_{m.group(2)}" if m else name


def expected_signature(name: str, sig: tuple[Any, Any, Any, Any], run_sig: tuple[Any, Any, Any, Any]
                       ) -> tuple[Any, Any, Any, Any]:
    """The signature a run in row folder ``name`` must have: the row's ``sig`` with the network of the folder's
    student tag (the run's own, when it is one the tag allows)."""
    m = _STUDENT_NAME.fullmatch(name)
    if not m:
        return sig
    networks = STUDENT_TAGS[m.group(1)][0]
    return (sig[0], run_sig[1] if run_sig[1] in networks else networks[0], *sig[2:])


def signature(run: Run) -> tuple[Any, Any, Any, Any]:
    """(mode, layers, feat_loss, distill.terms as a tuple; both None unless distilled): what decides which labelled
    row a run can be. A run recorded before distill.terms existed had none. ``layers`` is the ResNet depth, or the
    ``model.backbone`` of another backbone (``mobilenetv3_small``), whose ``layers`` means nothing."""
    backbone = run.metrics.get("backbone", "resnet")
    layers = run.metrics.get("layers") if backbone == "resnet" else backbone
    mode = run.metrics.get("mode")
    if mode != "distill":
        return mode, layers, None, None
    feat = config_value(run.metrics, "distill.feat_loss", run.metrics_path)
    distill = (run.metrics.get("config") or {}).get("distill") or {}
    return mode, layers, feat, tuple(distill.get("terms") or ())


def describe(sig: tuple[Any, Any, Any, Any]) -> str:
    mode, layers, feat, terms = sig
    net = layers if isinstance(layers, str) else f"R{layers}"
    if mode != "distill":
        return f"{mode} {net}"
    return f"{mode} {net}, feat_loss {feat}" + (f", distill.terms [{', '.join(terms)}]" if terms else "")


def unlabelled_row(key: str, sig: tuple[Any, Any, Any, Any]) -> str:
    """The label of a row the lists above do not have: a method row named as the shipped ones
    (``pspnet18_kd_<term>``: logit KD plus that ``distill.terms``, e.g. a new method's config) reads as theirs,
    ``R18 + logit KD + <term>``; anything else is its row name and what its runs are."""
    mode, layers, feat, terms = sig
    if mode == "distill" and feat == "none" and terms and key == f"pspnet{layers}_kd_{'_'.join(terms)}":
        return f"R{layers} + logit KD + {' + '.join(terms)}"
    return f"{key} ({describe(sig)})"


def group_runs(runs: list[Run], group_by: Optional[str], seeds: Optional[list[int]]) -> list[Row]:
    """Rows in table order: the paper's five (when any is present and not grouping by a key), then the rest."""
    rows: dict[str, Row] = {}
    paper = {name: (label, sig) for name, label, sig in PAPER_ROWS + EXTRA_ROWS}
    if group_by is None and any(canonical(row_name(r)) in paper for r in runs):
        rows = {name: Row(name, label) for name, label, _ in PAPER_ROWS}
    for run in runs:
        if group_by is not None:
            value = config_value(run.metrics, group_by, run.metrics_path)
            if isinstance(value, list):  # distill.terms: [fitnet, at] -> fitnet,at (as the command line says it)
                value = ",".join(str(v) for v in value)
            key = f"{group_by}={value}"
            label = key
        else:
            name = row_name(run)
            key = canonical(name)
            if key == TEACHER_ROW and signature(run)[0] == "supervised":
                layers = run.metrics.get("layers")
                rows[key] = rows.get(key) or Row(key, "")
                arch = ARCH_NAMES.get(run.metrics.get("arch", "pspnet"), run.metrics.get("arch"))
                rows[key].label = f"Teacher {arch}-R{layers}"
            elif key in paper and signature(run) != expected_signature(name, paper[key][1], signature(run)):
                expected = expected_signature(name, paper[key][1], signature(run))
                raise SegKDError(f"{run.metrics_path}: in row {key} but the run is a {describe(signature(run))} "
                                 f"(expected {describe(expected)})")
            label = rows[key].label if key == TEACHER_ROW and key in rows else (
                paper[key][0] if key in paper else unlabelled_row(key, signature(run)))
            if name != key and key != TEACHER_ROW:  # e.g. Student DeepLabV3-R18 baseline
                label = label.replace("PSPNet", ARCH_NAMES.get(run.metrics.get("arch", "pspnet"), "PSPNet"))
                tag = _STUDENT_NAME.fullmatch(name)
                if tag:  # Student DeepLabV3-MobileNetV3-Small baseline, MobileNetV3-Small + logit KD + CIRKD
                    label = label.replace("R18", STUDENT_TAGS[tag.group(1)][1])
            if name != key:
                rows.setdefault(key, Row(key, label)).name = name
                rows[key].label = label
        rows.setdefault(key, Row(key, label)).runs.append(run)
    for row in rows.values():
        single = row.key in SINGLE_SEED_ROWS and group_by is None
        check_seeds(row, None if single else seeds, per_machine=single)
        if single and len(row.runs) > 1:
            row.notes.append(f"one teacher per machine ({len(row.runs)} runs, see Trained on): each seed is distilled "
                             "from its own machine's")
    order = {name: i for i, (name, _, _) in enumerate(PAPER_ROWS + EXTRA_ROWS)}
    return sorted(rows.values(), key=lambda row: order.get(row.key, len(order)))  # stable: the rest as found


def check_seeds(row: Row, seeds: Optional[list[int]], per_machine: bool = False) -> None:
    """Refuse two runs with one seed (``per_machine``: with one seed on one machine, the teacher's rule); keep only
    the expected seeds and note the missing and ignored ones."""
    by_seed: dict[Any, Run] = {}
    for run in row.runs:
        key = (run.seed, machine_label(run.metrics.get("trained_on"))) if per_machine else run.seed
        if key in by_seed:
            where = f" on {key[1]}" if per_machine else ""
            raise SegKDError(f"row {row.key}: two runs with train.seed={run.seed}{where}: {by_seed[key].run_dir} "
                             f"and {run.run_dir}; pass only one of them")
        by_seed[key] = run
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
    values = [100.0 * (mine[s] - theirs[s]) for s in common]
    ci = paired_interval(values)
    return {"d_mIoU": mean, "d_mIoU_std": std, "d_pairs": len(common), "unpaired": unpaired,
            "d_unpaired": " ".join(map(str, unpaired)) or None, "d_values": values,
            "d_ci95_low": ci["low"], "d_ci95_high": ci["high"], "d_above_zero": ci["above"] if values else None,
            "d_resolved": ci["excludes_zero"]}


def also_paired_note(row: Row, rows: list[Row]) -> Optional[str]:
    """``Δ mIoU vs R18 + logit KD: +0.40 ± 1.10 (3 pairs)`` for a row of :data:`ALSO_PAIRED` whose partner row is in
    ``rows``: the paired difference as in the Δ column, against that row instead of the baseline."""
    other = next((r for r in rows if r.key == ALSO_PAIRED.get(row.key)), None)
    if other is None or not row.runs or not other.runs:
        return None
    d = paired_difference(row, other)
    if d["d_mIoU"] is None:
        return f"Δ mIoU vs {other.label}: no seed in common"
    std = "" if d["d_mIoU_std"] is None else f" ± {d['d_mIoU_std']:.2f}"
    return f"Δ mIoU vs {other.label}: {d['d_mIoU']:+.2f}{std} ({d['d_pairs']} pair{'s' if d['d_pairs'] > 1 else ''})"


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


def row_numbers(row: Row) -> dict[str, Any]:
    """One CSV record: unrounded % means and stds, params in millions, GFLOPs and their crop size, iterations."""
    span = iterations(row)
    cost = distinct([(r.metrics.get("params"), r.metrics.get("gflops"), r.metrics.get("gflops_crop_size"))
                     for r in row.runs])
    if len(cost) > 1:
        row.notes.append("params/GFLOPs differ across runs: first run shown")
    params, flops, crop = cost[0] if cost else (None, None, None)
    rec: dict[str, Any] = {"row": row.name or row.key, "label": row.label, "n": len(row.runs),
                           "seeds": " ".join(str(r.seed) for r in row.runs), "notes": "; ".join(row.notes),
                           "params_M": params / 1e6 if params else None, "gflops": flops,
                           "gflops_crop_size": crop, "iter_span": span, "iters": fmt_iters(span)}
    for score in SCORES:
        mean, std = mean_std([r.metrics[score] for r in row.runs]) if row.runs else (None, None)
        rec[score], rec[score + "_std"] = mean, std
    return rec
