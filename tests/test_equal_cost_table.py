"""scripts/make_table.py --equal-cost (scripts/equal_cost_table.py) on fabricated runs: the equal-cost section's
iterations, relative costs, paired Δ against the equal-cost baseline and logit KD and the change in verdict; the
figure's second marker; and the one-line refusals of a run of another machine, another schedule or no schedule.
The slow tier runs `SCALE=tiny MATCH=cost scripts/synthetic/table.sh` end to end."""

import json
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.test_equal_cost import AMD, INTEL, cost_file, row
from tests.test_make_table import read_csv, run_main, table_stats, write_run
from tools import equal_cost as ec
from util.machine import machine_label

ROWS = ("pspnet18_baseline", "pspnet18_kd", "pspnet18_kd_aux_kl")
# mIoU per seed: iteration-matched and equal-cost (the baseline gains from its longer schedule)
ITER = {"pspnet18_baseline": [0.40, 0.42, 0.38], "pspnet18_kd": [0.43, 0.45, 0.41],
        "pspnet18_kd_aux_kl": [0.44, 0.47, 0.42]}
EQUAL = {"pspnet18_baseline": [0.425, 0.44, 0.405], "pspnet18_kd": [0.435, 0.452, 0.416],
         "pspnet18_kd_aux_kl": [0.425, 0.455, 0.41]}
EQUAL_ITERS = {"pspnet18_baseline": 200, "pspnet18_kd": 150, "pspnet18_kd_aux_kl": 120}


def fill(root, scores, iters, meta):
    for name, values in scores.items():
        feat = "kl" if name.endswith("aux_kl") else "none"
        mode = "supervised" if name == "pspnet18_baseline" else "distill"
        for seed, miou in enumerate(values, 1):
            run = root / name / f"seed{seed}"
            write_run(str(run), (miou, 0.5, 0.8), seed, mode, 18, feat, iteration=iters[name])
            path = run / "eval" / "ss" / "metrics.json"
            metrics = json.loads(path.read_text())
            metrics["trained_on"] = meta
            path.write_text(json.dumps(metrics))


@pytest.fixture
def tables(tmp_path):
    """(iteration-matched runs, equal-cost runs with their equal_cost.json and cost file)."""
    cost = tmp_path / "cost.json"
    cost.write_text(json.dumps(cost_file(INTEL, {"pspnet18_baseline": row(0.30, 66.0), "pspnet18_kd": row(0.40, 96.0),
                                                 "pspnet18_kd_aux_kl": row(0.50, 98.0)})))
    iterated, equal = tmp_path / "iter", tmp_path / "equal"
    fill(iterated, ITER, dict.fromkeys(ROWS, 150), INTEL)
    fill(equal, EQUAL, EQUAL_ITERS, INTEL)
    ref = {r: {"iters": 150, "warmup_iters": 20, "batch_size": 8, "crop_size": 65} for r in ROWS}
    plan = ec.plan_for(ec.load_cost(str(cost)), str(cost), "seconds", list(ROWS), ref)
    assert {r: p["iters"] for r, p in plan["rows"].items()} == EQUAL_ITERS  # the schedule the runs follow
    ec.record(str(equal / "equal_cost.json"), plan)
    return iterated, equal


def test_equal_cost_section_pairs_each_row_with_the_equal_cost_baseline_and_kd(tables, tmp_path, capsys):
    iterated, equal = tables
    out_csv, png = tmp_path / "e.csv", tmp_path / "f.png"
    code, out, err = run_main([iterated, "--equal-cost", equal, "--out-equal-cost-csv", out_csv, "--figure", png],
                              capsys)
    assert code == 0, err
    assert "**At equal cost.** Every row trained for the cost of logit KD's 150 iterations" in out
    recs = read_csv(out_csv)
    assert list(recs) == list(ROWS)
    aux = recs["pspnet18_kd_aux_kl"]
    assert (aux["iters_seconds"], aux["iters_flops"], aux["rel_seconds"], aux["rel_flops"]) == ("120", "147", "1.25",
                                                                                              "1.02")
    # equal cost, vs the equal-cost baseline: (42.5-42.5, 45.5-44, 41-40.5) = (0, 1.5, 0.5) points
    assert float(aux["e_mIoU"]) == pytest.approx(2.0 / 3)
    assert int(aux["e_pairs"]) == 3 and int(aux["e_above_zero"]) == 2
    # vs equal-cost logit KD: (-1.0, +0.3, -0.6)
    assert float(aux["k_mIoU"]) == pytest.approx(-1.3 / 3) and aux["k_pairs"] == "3"
    # at equal iterations it was above the baseline on every seed, (+4, +5, +4): resolved
    assert float(aux["i_mIoU"]) == pytest.approx(13 / 3) and aux["verdict_iters"] == "above"
    assert aux["verdict_cost"] == "not resolved"
    assert "| R18 + logit KD + aux KL | 120 / 147 | 1.25 | 1.02 | **+4.33 [" in out
    assert "| above → not resolved |" in out
    kd = recs["pspnet18_kd"]  # (43.5-42.5, 45.2-44, 41.6-40.5) = (1.0, 1.2, 1.1): a tight interval above zero
    assert kd["verdict_iters"] == kd["verdict_cost"] == "above" and "| above (unchanged) |" in out
    assert recs["pspnet18_baseline"]["iters_seconds"] == "200" and recs["pspnet18_baseline"]["e_mIoU"] == ""
    # the figure: a second marker for each row with an equal-cost pair, stored beside the rows
    from PIL import Image

    with Image.open(png) as image:
        stored = json.loads(image.text["Description"])
    assert [r["label"] for r in stored["second"]] == ["R18 + logit KD", "R18 + logit KD + aux KL"]
    assert stored["second"][1]["mean"] == pytest.approx(2.0 / 3)
    assert [r["label"] for r in stored["rows"]] == ["R18 + logit KD", "R18 + logit KD + aux KL"]
    forest_plot = sys.modules["forest_plot"]
    assert [r.label for r in forest_plot.rows_in_png(str(png))] == ["R18 + logit KD", "R18 + logit KD + aux KL"]


def one_error(args, capsys):
    code, out, err = run_main(args, capsys)
    assert code == 2 and out == "" and err.count("\n") == 1 and err.startswith("error: "), (code, out, err)
    return err


def test_an_iteration_matched_run_mixed_in_is_refused(tables, capsys):
    iterated, equal = tables
    fill(equal, {"pspnet18_baseline": [0.4]}, {"pspnet18_baseline": 150}, INTEL)  # seed 1 overwritten: 150 its
    err = one_error([iterated, "--equal-cost", equal], capsys)
    assert "pspnet18_baseline/seed1/eval/ss/metrics.json: row pspnet18_baseline trained 150 iterations" in err
    assert "says 200" in err


def test_a_run_of_another_machine_kind_is_refused_naming_both(tables, capsys):
    iterated, equal = tables
    fill(equal, {"pspnet18_kd": [0.43]}, {"pspnet18_kd": 150}, AMD)
    err = one_error([iterated, "--equal-cost", equal], capsys)
    assert f"trained on {machine_label(AMD)}" in err and machine_label(INTEL) in err


def test_a_cost_file_of_another_machine_than_the_schedule_is_refused(tables, tmp_path, capsys):
    iterated, equal = tables
    (tmp_path / "cost.json").write_text(json.dumps(cost_file(AMD)))  # re-measured on another machine since
    err = one_error([iterated, "--equal-cost", equal], capsys)
    assert f"measured on {machine_label(AMD)}" in err and machine_label(INTEL) in err


def test_runs_without_a_schedule_are_refused(tables, capsys):
    iterated, _ = tables
    err = one_error([iterated, "--equal-cost", iterated], capsys)
    assert "no equal_cost.json in its folder or above: not an equal-cost run" in err


def test_the_equal_cost_module_names_the_rows_of_the_table():
    assert ec.BUDGET_ROW in [name for name, _, _ in table_stats.PAPER_ROWS]


@pytest.mark.slow
@pytest.mark.long
def test_tiny_table_at_equal_cost(tmp_path):
    """SCALE=tiny MATCH=cost: each row trains its scheduled iterations in a folder of its own, which then refuses
    another cost file's schedule and iteration-matched runs; another machine's cost file is refused first."""
    from tools.equal_cost import this_machine

    script = os.path.join(REPO, "scripts", "synthetic", "table.sh")
    import torch

    from util.machine import machine

    meta = machine(torch.device("cpu"))
    mine, other = tmp_path / "mine.json", tmp_path / "other.json"
    rows = {"pspnet18_baseline": row(0.30, 66.0, batch=2), "pspnet18_kd": row(0.40, 96.0, batch=2)}
    mine.write_text(json.dumps(cost_file(meta, rows)))
    other_meta = INTEL if machine_label(meta) != machine_label(INTEL) else AMD
    other.write_text(json.dumps(cost_file(other_meta, rows)))
    env = {**os.environ, "SCALE": "tiny", "MATCH": "cost", "PYTHON": sys.executable, "NPROC": "0",
           "RUNS": str(tmp_path / "runs"), "DATA": str(tmp_path / "data"), "OMP_NUM_THREADS": "1",
           "ROWS": "pspnet18_baseline pspnet18_kd"}

    def table(**extra):
        return subprocess.run(["bash", script], cwd=str(tmp_path), capture_output=True, text=True,
                              env={**env, **extra}, timeout=900)

    r = table(COST_FILE=str(other))
    assert r.returncode != 0 and f"measured on {machine_label(other_meta)}" in r.stderr
    assert this_machine("cpu") in r.stderr and not (tmp_path / "runs" / "synthetic" / "equal_cost.json").exists()
    r = table(COST_FILE=str(mine))
    assert r.returncode == 0, r.stdout + r.stderr
    root = tmp_path / "runs" / "synthetic"
    iters = {name: json.loads((root / name / "seed1" / "eval" / "ss" / "metrics.json").read_text())["iteration"]
             for name in ("pspnet18_baseline", "pspnet18_kd")}
    assert iters == {"pspnet18_baseline": 3, "pspnet18_kd": 2}  # tiny's 2 iterations: 2 * 0.4 / 0.3 = 2.67 -> 3
    assert "pspnet18_baseline seed1 (train.iters=3 train.warmup_iters=" in r.stdout
    schedule = json.loads((root / "equal_cost.json").read_text())
    cheaper = {**rows, "pspnet18_baseline": row(0.20, 66.0, batch=2)}
    other.write_text(json.dumps(cost_file(meta, cheaper)))  # a new measurement: another schedule
    r = table(COST_FILE=str(other))
    assert r.returncode != 0 and "another equal-cost schedule" in r.stderr
    r = table(MATCH="")
    assert r.returncode != 0 and "holds equal-cost runs" in r.stderr
    assert json.loads((root / "equal_cost.json").read_text()) == schedule  # nothing overwritten
    r = table(SCALE="demo")
    assert r.returncode != 0 and "MATCH=cost: only with SCALE=cpu-paired" in r.stderr


def test_instrument_blocks_puts_equal_cost_rows_beside_the_committed_instrument(tmp_path):
    """scripts/instrument_blocks.py --equal-cost: the committed iteration-matched Δ beside fabricated equal-cost runs
    (AMD seeds 5 and 6, the machine of the committed seeds 5-10)."""
    sys.path.insert(0, os.path.join(REPO, "scripts"))
    import instrument_blocks

    cost = tmp_path / "cost.json"
    cost.write_text(json.dumps(cost_file(AMD, {"pspnet18_baseline": row(0.30, 66.0), "pspnet18_kd": row(0.40, 96.0)})))
    equal = tmp_path / "equal"
    fill(equal, {"pspnet18_baseline": [0.40, 0.43], "pspnet18_kd": [0.41, 0.445]},
         {"pspnet18_baseline": 200, "pspnet18_kd": 150}, AMD)
    for name in ("pspnet18_baseline", "pspnet18_kd"):  # seeds 5 and 6
        for old, new in ((2, 6), (1, 5)):
            os.rename(equal / name / f"seed{old}", equal / name / f"seed{new}")
            path = equal / name / f"seed{new}" / "eval" / "ss" / "metrics.json"
            metrics = json.loads(path.read_text())
            metrics["config"]["train"]["seed"] = new
            path.write_text(json.dumps(metrics))
    ref = {r: {"iters": 150, "warmup_iters": 20, "batch_size": 8, "crop_size": 65}
           for r in ("pspnet18_baseline", "pspnet18_kd")}
    ec.record(str(equal / "equal_cost.json"),
              ec.plan_for(ec.load_cost(str(cost)), str(cost), "seconds", list(ref), ref))
    text, recs = instrument_blocks.equal_cost(equal=str(equal))
    kd = next(r for r in recs if r["row"] == "pspnet18_kd")
    assert kd["verdict_iters"] == "above" and kd["i_pairs"] == 10  # the committed instrument's KD row, 10 pairs
    committed = re.search(r"\| R18 \+ logit KD \| [^|]+ \| (\*\*\+\d\.\d\d \[[^]]+\]\*\*) \| 10 of 10 \|",
                          instrument_blocks.blocks()[False]).group(1)  # its Δ vs baseline in README's block
    assert f"| R18 + logit KD | 150 / 150 | 1.00 | 1.00 | {committed} | +1.25 [" in text
    assert kd["e_pairs"] == 2 and kd["verdict_cost"] == "not resolved"
    assert "| above → not resolved |" in text


def test_instrument_blocks_write_with_equal_cost_writes_every_block(tmp_path, monkeypatch, capsys):
    """--write --equal-cost rewrites the blocks (the equal-cost one included) instead of only printing that one."""
    sys.path.insert(0, os.path.join(REPO, "scripts"))
    import instrument_blocks

    for name in instrument_blocks.TARGETS:
        os.makedirs(os.path.dirname(os.path.join(tmp_path, name)) or str(tmp_path), exist_ok=True)
        with open(os.path.join(REPO, name), encoding="utf-8") as f:
            text = f.read()
        with open(os.path.join(tmp_path, name), "w", encoding="utf-8") as f:
            f.write(text.replace(instrument_blocks.EQUAL_END, "a stale line\n" + instrument_blocks.EQUAL_END, 1))
    monkeypatch.setattr(instrument_blocks, "REPO", str(tmp_path))
    assert instrument_blocks.main(["--write", "--equal-cost"]) == 0
    assert "wrote the instrument block of" in capsys.readouterr().out
    for name in instrument_blocks.TARGETS:
        with open(os.path.join(tmp_path, name), encoding="utf-8") as f, \
                open(os.path.join(REPO, name), encoding="utf-8") as g:
            assert f.read() == g.read(), name  # the committed text, the stale line gone
