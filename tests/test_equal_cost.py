"""tools/equal_cost.py: the equal-cost schedule's iteration scaling and rounding, the cost file's schema and machine
check, the one-line error of a row without a measured cost, the schedule recorded beside the runs; and tools/cost.py's
FLOPs of a tiny network against a hand count (the slow tier runs the command on two rows)."""

import copy
import json
import os
import re
import subprocess
import sys

import pytest
import torch
from torch import nn

from tests.conftest import REPO
from tests.test_make_table import table_stats
from tools import equal_cost as ec
from util.errors import SegKDError
from util.machine import machine_label

INTEL = {"cpu": "Intel(R) Xeon(R) Processor", "vendor": "GenuineIntel", "isa": ["avx2", "avx512f", "amx_bf16"],
         "cpus": 2, "device": "cpu", "torch": "2.14.1", "family": "6", "model": "143"}
AMD = {"cpu": "AMD EPYC", "vendor": "AuthenticAMD", "isa": ["avx2", "avx512f", "avx512_bf16"], "cpus": 2,
       "device": "cpu", "torch": "2.14.1", "family": "26", "model": "2"}


def row(seconds, gflops, extra=0, batch=8, crop=65, config="config/synthetic_cpu/x.yaml"):
    return {"config": config, "seconds": {"median": seconds, "q1": seconds * 0.98, "q3": seconds * 1.03,
                                          "iqr": seconds * 0.05, "n": 60, "round_medians": [seconds] * 3},
            "flops": int(gflops * 1e9), "teacher_forward_flops": 0, "extra_params": extra, "extra_params_by": {},
            "student_params": 16_755_792, "peak_memory_mib": 400.0, "batch_size": batch, "crop_size": crop}


def cost_file(meta=INTEL, rows=None):
    """A cost file as tools.cost writes one (the numbers made up): baseline 0.30 s, KD 0.40 s, AFD 0.50 s."""
    rows = rows if rows is not None else {"pspnet18_baseline": row(0.30, 66.0), "pspnet18_kd": row(0.40, 96.0),
                                          "pspnet18_kd_afd": row(0.50, 126.0, extra=685_568)}
    return {"schema": 1, "machine": meta, "machine_label": machine_label(meta), "commit": "abc1234",
            "date": "2026-12-08", "command": "python -m tools.cost --rows all",
            "settings": {"warmup": 5, "iters": 20, "rounds": 3}, "rows": rows}


REF = {r: {"iters": 150, "warmup_iters": 20, "batch_size": 8, "crop_size": 65}
       for r in ("pspnet18_baseline", "pspnet18_kd", "pspnet18_kd_afd")}


def test_scaled_iterations_round_to_the_nearest_halves_up():
    assert ec.scaled_iters(150 * 0.40, 0.40) == 150  # the budget row keeps its schedule
    assert ec.scaled_iters(150 * 0.40, 0.30) == 200  # cheaper per iteration: more iterations
    assert ec.scaled_iters(150 * 0.40, 0.50) == 120
    assert ec.scaled_iters(5.0, 2.0) == 3  # 2.5 -> 3 (round() would say 2)
    assert ec.scaled_iters(7.0, 2.0) == 4  # 3.5 -> 4
    assert ec.scaled_iters(1.0, 3.0) == 1 and ec.scaled_iters(1.0, 1000.0) == 1  # never below one iteration
    assert ec.scaled_iters(150 * 0.4, 0.7) == 86  # 85.71 -> 86
    assert ec.scaled_warmup(20, 150, 150) == 20
    assert ec.scaled_warmup(20, 150, 200) == 27  # 26.67
    assert ec.scaled_warmup(20, 150, 60) == 8  # the demo preset's stretch
    assert ec.scaled_warmup(20, 160, 12) == 2  # 1.5 -> 2
    assert ec.scaled_warmup(20, 150, 1) == 0 and ec.scaled_warmup(200, 150, 3) == 3  # at most the iterations


def test_schedule_gives_each_row_the_budget_of_logit_kd():
    plan = ec.schedule(cost_file(), ["pspnet18_baseline", "pspnet18_kd", "pspnet18_kd_afd"], "seconds", REF, "c.json")
    assert {r: (p["iters"], p["warmup_iters"]) for r, p in plan.items()} == {
        "pspnet18_baseline": (200, 27), "pspnet18_kd": (150, 20), "pspnet18_kd_afd": (120, 16)}
    assert plan["pspnet18_kd_afd"]["relative"] == pytest.approx(1.25)
    flops = ec.schedule(cost_file(), ["pspnet18_baseline", "pspnet18_kd_afd"], "flops", REF, "c.json")
    assert flops["pspnet18_baseline"]["iters"] == 218  # 150 * 96 / 66 = 218.18
    assert flops["pspnet18_kd_afd"]["iters"] == 114  # 150 * 96 / 126 = 114.29
    # each row's iterations times its cost per iteration is the budget, up to the rounding of one iteration
    for p in plan.values():
        assert abs(p["iters"] * p["cost"] - 150 * 0.40) <= p["cost"] / 2 + 1e-9


def test_a_row_without_a_measured_cost_is_one_line_naming_it(capsys, tmp_path):
    with pytest.raises(SegKDError, match=r"c\.json: no measured cost for row pspnet18_kd_cirkd \("):
        ec.schedule(cost_file(), ["pspnet18_kd_cirkd"], "seconds", {**REF, "pspnet18_kd_cirkd": REF["pspnet18_kd"]},
                    "c.json")
    no_budget = cost_file(rows={"pspnet18_baseline": row(0.3, 66.0)})
    with pytest.raises(SegKDError, match="no measured cost for row pspnet18_kd "):
        ec.schedule(no_budget, ["pspnet18_baseline"], "seconds", REF, "c.json")
    path = tmp_path / "c.json"
    path.write_text(json.dumps(cost_file()))
    assert ec.main(["--cost", str(path), "--rows", "pspnet18_baseline pspnet18_kd_cirkd", "--lines"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pspnet18_kd_cirkd" in err and err.startswith("error: ")


def test_cost_file_schema_is_checked_key_by_key(tmp_path):
    good = cost_file()
    assert ec.check_cost(copy.deepcopy(good), "c.json") == good
    for where, key, value, message in [
        (None, "schema", 2, "schema 2, expected 1"),
        (None, "commit", None, "key commit missing"),
        (None, "rows", [], "key rows missing or not a dict"),
        (None, "machine_label", "AMD EPYC (x), 2 CPUs", "is not the label of its machine"),
        ("pspnet18_kd", "flops", 1.5, "row pspnet18_kd: key flops missing or of the wrong type"),
        ("pspnet18_kd", "extra_params", True, "row pspnet18_kd: key extra_params"),
        ("pspnet18_kd", "batch_size", None, "row pspnet18_kd: key batch_size"),
    ]:
        bad = copy.deepcopy(good)
        (bad if where is None else bad["rows"][where])[key] = value
        with pytest.raises(SegKDError, match=re.escape(message)):
            ec.check_cost(bad, "c.json")
    bad = copy.deepcopy(good)
    del bad["rows"]["pspnet18_kd"]["seconds"]["iqr"]
    with pytest.raises(SegKDError, match=r"row pspnet18_kd: seconds\.iqr missing"):
        ec.check_cost(bad, "c.json")
    path = tmp_path / "c.json"
    path.write_text("{")
    with pytest.raises(SegKDError, match="cannot read the cost file"):
        ec.load_cost(str(path))
    with pytest.raises(SegKDError, match="no cost file .* python -m tools.cost --rows all"):
        ec.load_cost(str(tmp_path / "none.json"))


def test_a_cost_file_of_another_machine_kind_is_refused_naming_both():
    ec.check_machine(cost_file(INTEL), machine_label(INTEL), "c.json")
    ec.check_machine(cost_file(INTEL), machine_label({**INTEL, "family": "6", "model": "207"}), "c.json")  # same kind
    with pytest.raises(SegKDError) as e:
        ec.check_machine(cost_file(INTEL), machine_label(AMD), "c.json")
    line = str(e.value)
    assert "\n" not in line and machine_label(INTEL) in line and machine_label(AMD) in line
    assert "amd-epyc-authenticamd-avx2-avx512f-avx512-bf16-2-cpus.json" in line  # where that machine's file would be


def test_a_cost_measured_at_other_settings_is_refused():
    ref = {**REF, "pspnet18_kd_afd": {**REF["pspnet18_kd_afd"], "batch_size": 16}}
    with pytest.raises(SegKDError, match="row pspnet18_kd_afd was measured at train.batch_size=8, but trains at 16"):
        ec.schedule(cost_file(), ["pspnet18_kd_afd"], "seconds", ref, "c.json")


def test_the_cli_prints_the_schedule_from_the_configs(tmp_path, capsys):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(cost_file()))
    rows = "pspnet18_baseline pspnet18_kd pspnet18_kd_afd"
    assert ec.main(["--cost", str(path), "--rows", rows, "--lines"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "pspnet18_baseline train.iters=200 train.warmup_iters=27", "pspnet18_kd train.iters=150 train.warmup_iters=20",
        "pspnet18_kd_afd train.iters=120 train.warmup_iters=16"]
    assert ec.main(["--cost", str(path), "--rows", rows]) == 0
    table = capsys.readouterr().out
    assert "| pspnet18_kd_afd | 0.500 [0.490, 0.515] | 1.25 | 126.0 | 1.31 | 685,568 | 400 | 120 | 114 |" in table


def test_the_schedule_recorded_beside_the_runs_is_never_replaced(tmp_path, capsys):
    path, marker = tmp_path / "c.json", tmp_path / "runs" / "equal_cost.json"
    path.write_text(json.dumps(cost_file()))
    args = ["--cost", str(path), "--rows", "pspnet18_baseline pspnet18_kd", "--lines", "--record", str(marker)]
    assert ec.main(args) == 0 and ec.main(args) == 0  # the same schedule again: fine
    written = json.loads(marker.read_text())
    assert written["rows"]["pspnet18_baseline"] == {"iters": 200, "warmup_iters": 27}
    assert written["machine_label"] == machine_label(INTEL) and written["match"] == "seconds"
    capsys.readouterr()
    assert ec.main([*args, "--match", "flops"]) == 2
    assert "another equal-cost schedule (match, rows differ)" in capsys.readouterr().err
    assert json.loads(marker.read_text()) == written


def test_instrument_rows_are_the_table_scripts_rows():
    with open(os.path.join(REPO, "scripts", "table.sh"), encoding="utf-8") as f:
        text = f.read()
    words = []
    for name in ("STUDENT_ROWS", "METHOD_ROWS", "MUTUAL_ROWS"):
        words += re.search(rf'^{name}="([^"]*)"', text, re.M).group(1).split()
    chain = re.search(r"^CHAIN_ASSISTANT=(\S+) CHAIN_STUDENT=(\S+)", text, re.M).groups()
    assert sorted(ec.INSTRUMENT_ROWS) == sorted(words + list(chain))
    labelled = [name for name, _, _ in table_stats.PAPER_ROWS + table_stats.EXTRA_ROWS]
    assert list(ec.INSTRUMENT_ROWS) == [r for r in labelled if r != table_stats.TEACHER_ROW]  # table order
    assert table_stats.LATER_ROWS <= set(ec.INSTRUMENT_ROWS)
    for name in ec.INSTRUMENT_ROWS:
        assert os.path.isfile(os.path.join(ec.CONFIG_DIR, name + ".yaml")), name


def test_slug_names_a_machine_kind():
    assert ec.slug(machine_label(AMD)) == "amd-epyc-authenticamd-avx2-avx512f-avx512-bf16-2-cpus"
    name = "intel-r-xeon-r-processor-genuineintel-avx2-avx512f-amx-bf16-2-cpus.json"
    assert ec.cost_path(machine_label(INTEL)) == os.path.join(REPO, "docs", "results", "cost", name)


# ------------------------------------------------------------------------------------------------ tools/cost.py
class TinyNet(nn.Module):
    """A segmentor's interface with two 3x3 convolutions: {'out', 'aux'} at the input's resolution."""

    def __init__(self, classes=4, width=5):
        super().__init__()
        self.body = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.out = nn.Conv2d(width, classes, 1, bias=False)
        self.aux = nn.Conv2d(width, classes, 1, bias=False)

    def forward(self, x):
        h = self.body(x)
        return {"out": self.out(h), "aux": self.aux(h)}


def test_step_flops_of_a_tiny_network_equal_a_hand_count():
    from model.distiller import Distiller
    from tools.cost import step_flops, teacher_flops

    torch.manual_seed(0)
    n, s, classes, width = 2, 8, 4, 5
    x, y = torch.randn(n, 3, s, s), torch.randint(0, classes, (n, s, s))
    pixels = n * s * s
    body = 2 * pixels * width * 3 * 9  # a multiply-add is 2 FLOPs
    heads = 2 * (2 * pixels * classes * width)  # out and aux, 1x1
    # backward: every weight's gradient (as many FLOPs as its forward), and the input gradient of every convolution
    # but the first (whose input, the image, needs none)
    student_step = (body + heads) + (body + heads) + heads
    teacher_width = 7
    teacher_forward = 2 * pixels * teacher_width * 3 * 9 + 2 * (2 * pixels * classes * teacher_width)
    supervised = Distiller(TinyNet(classes, width))
    assert step_flops(supervised, x, y) == student_step
    assert teacher_flops(supervised, x) == 0
    distilled = Distiller(TinyNet(classes, width), TinyNet(classes, teacher_width), temperature=4.0)
    assert step_flops(distilled, x, y) == student_step + teacher_forward  # the teacher's forward, no backward
    assert teacher_flops(distilled, x) == teacher_forward
    assert step_flops(distilled, x, y) == step_flops(distilled, x, y)  # deterministic


def test_extra_parameters_are_the_methods_and_the_other_peers():
    from model.mutual import MutualLearner
    from tools.cost import extra_parameters

    connector = nn.Conv2d(4, 6, 1)
    distiller = nn.Module()
    distiller.methods = nn.ModuleDict({"fitnet": connector})
    assert extra_parameters(distiller) == {"fitnet": 4 * 6 + 6}
    peers = [TinyNet(4, 5), TinyNet(4, 7)]
    assert extra_parameters(MutualLearner(peers)) == {"peer1": sum(p.numel() for p in peers[1].parameters())}


def test_seconds_summary_is_the_median_and_quartiles():
    from tools.cost import seconds_summary

    s = seconds_summary([1.0, 2.0, 3.0, 4.0, 5.0], [[1.0, 2.0], [3.0, 4.0, 5.0]])
    assert (s["median"], s["q1"], s["q3"], s["iqr"], s["n"]) == (3.0, 2.0, 4.0, 2.0, 5)
    assert s["round_medians"] == [1.5, 4.0]


@pytest.mark.slow
def test_cost_command_measures_two_rows_and_the_schedule_reads_it(tmp_path):
    folder = str(tmp_path / "cost") + os.sep  # a folder: the file is named after this machine kind
    out = tmp_path / "cost" / (ec.slug(ec.this_machine("cpu")) + ".json")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "tools.cost", "--rows", "pspnet18_baseline pspnet18_kd", "--iters", "2",
                        "--warmup", "0", "--rounds", "2", "train.batch_size=2", "train.crop_size=33",
                        "train.device=cpu", "--out", folder], cwd=REPO, capture_output=True, text=True, env=env,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    cost = ec.load_cost(str(out))  # the schema holds
    assert cost["machine_label"] == ec.this_machine("cpu") and cost["settings"]["rounds"] == 2
    base, kd = cost["rows"]["pspnet18_baseline"], cost["rows"]["pspnet18_kd"]
    assert base["seconds"]["n"] == 4 and len(base["seconds"]["round_medians"]) == 2
    assert kd["teacher_forward_flops"] > 0 and base["teacher_forward_flops"] == 0
    assert kd["flops"] == base["flops"] + kd["teacher_forward_flops"]  # KL on logits adds no counted FLOPs
    assert kd["extra_params"] == 0 and base["peak_memory_mib"] > 0 and kd["batch_size"] == 2
    assert kd["config"] == "config/synthetic_cpu/pspnet18_kd.yaml"
    again = subprocess.run([sys.executable, "-m", "tools.cost", "--rows", "pspnet18_baseline", "--out", folder],
                           cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 2 and "already exists" in again.stderr  # never overwritten
    ec.check_machine(cost, ec.this_machine("cpu"), str(out))


def test_rows_measured_unsteadily_are_named():
    from tools.cost import format_rows

    cost = cost_file()
    cost["settings"]["threads"] = 2
    cost["rows"]["pspnet18_kd"]["seconds"]["round_medians"] = [0.40, 0.43, 0.41]  # 7.5% apart
    text = format_rows(cost)
    assert "| pspnet18_kd | 0.400 | 0.020 | 7.5% | 96.00 |" in text
    assert "warning: the round medians of pspnet18_kd are more than 5% apart" in text
    assert "pspnet18_baseline," not in text.splitlines()[-1]  # steady rows are not named


@pytest.mark.slow
def test_every_instrument_row_builds_and_counts():
    """tools.cost's trainee for every instrument row (distilled, methods, SSLD, chain, mutual) steps once and has a
    FLOP count: the full measurement cannot fail on a row halfway through."""
    from tools.cost import build_trainee, extra_parameters, random_batch, row_config, step_flops, teacher_flops
    from util.config import UNLABELED_LABEL
    from util.distributed import DistInfo

    info = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    counts = {}
    for name in ec.INSTRUMENT_ROWS:
        cfg = row_config(os.path.join(ec.CONFIG_DIR, name + ".yaml"), ["train.batch_size=2", "train.crop_size=33"])
        torch.manual_seed(0)
        trainee = build_trainee(cfg, info)
        x, y = random_batch(cfg, info.device)
        counts[name] = (step_flops(trainee, x, y), teacher_flops(trainee, x), sum(extra_parameters(trainee).values()))
    base, kd = counts["pspnet18_baseline"], counts["pspnet18_kd"]
    assert base[1] == 0 and kd[1] > 0 and kd[0] == base[0] + kd[1]
    assert counts["pspnet18_kd_ta"][1] < kd[1]  # an R34 assistant's forward is cheaper than the R50 teacher's
    assert counts["dml_pspnet50_pspnet18"][2] > 20e6 and counts["dml_pspnet18_pspnet18"][1] == 0  # the R50 peer
    assert counts["pspnet18_kd_fitnet"][2] > 0 and counts["pspnet18_kd_afd"][2] > 0 and kd[2] == 0
    assert counts["pspnet18_kd_ssld"][0] == kd[0]  # batch 2 here too (its config: 16), one of them unlabelled:
    ssld = row_config(os.path.join(ec.CONFIG_DIR, "pspnet18_kd_ssld.yaml"), ["train.batch_size=2"])
    _, y = random_batch(ssld, info.device)
    assert (y[1] == UNLABELED_LABEL).all() and (y[0] < 8).all()
    for name in ("pspnet18_kd_at", "pspnet18_kd_cirkd", "pspnet18_kd_skd", "pspnet18_kd_ifvd"):
        assert counts[name][0] >= kd[0], name
