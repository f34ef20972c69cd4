"""The committed results of the instrument (docs/results/cpu-paired): the table rebuilt from its metrics.json files
equals the table committed beside them, which the runs printed; every seed has every row, each seed's runs come
from one machine (one folder per machine, each with its own teacher), no seed number is used on two machines, and
every run is the tier's recipe."""

import json
import os
import re
import sys

import pytest

from tests.conftest import REPO
from tests.test_collect_results import unlinked
from tests.test_make_table import run_main, table_stats

RESULTS = os.path.join(REPO, "docs", "results", "cpu-paired")
CHAIN_ROWS = ["pspnet34_kd", "pspnet18_kd_ta"]

pytestmark = pytest.mark.skipif(not os.path.isfile(os.path.join(RESULTS, "table.md")),
                                reason="no committed instrument results")


def machine_folders():
    """The folders of docs/results/cpu-paired, one per machine (e.g. intel-xeon-amx), each a table of its own."""
    return sorted(d for d in os.listdir(RESULTS) if os.path.isdir(os.path.join(RESULTS, d)))


def runs(folder):
    """{row: {seed: metrics}} of one machine's folder (the teacher under seed None)."""
    out = {}
    top = os.path.join(RESULTS, folder)
    for row in sorted(os.listdir(top)):
        base = os.path.join(top, row)
        if row == "pspnet50_teacher":
            with open(os.path.join(base, "eval", "ss", "metrics.json")) as f:
                out[row] = {None: json.load(f)}
            continue
        for seed_dir in sorted(os.listdir(base)):
            with open(os.path.join(base, seed_dir, "eval", "ss", "metrics.json")) as f:
                out.setdefault(row, {})[int(seed_dir[len("seed"):])] = json.load(f)
    return out


def test_rebuilt_table_equals_the_committed_one(capsys):
    code, text, err = run_main([RESULTS, "--config-dir", os.path.join(REPO, "config", "synthetic_cpu")], capsys)
    assert code == 0, err
    with open(os.path.join(RESULTS, "table.md")) as f:
        committed = f.read()
    assert unlinked(text) == unlinked(committed)
    assert "Resolution: pooled paired std" in text and "Trained on: " in text and "mix machines" not in text


def test_intel_seeds_kept_as_a_table_of_their_own(capsys):
    """Seeds 1-4 as the Intel VM trained them (the instrument's until 2026-12-07, when they were trained again on the
    AMD VM): one machine, its own teacher, 15 rows of seeds 1-4, their table rebuilt equal to the committed one."""
    intel = os.path.join(REPO, "docs", "results", "cpu-paired-seeds1-4-intel-xeon-amx")
    code, text, err = run_main([intel, "--config-dir", os.path.join(REPO, "config", "synthetic_cpu")], capsys)
    assert code == 0, err
    with open(os.path.join(intel, "table.md")) as f:
        assert unlinked(text) == unlinked(f.read())
    assert "Trained on: seeds 1 2 3 4 and the teacher: Intel(R) Xeon(R)" in text and "mix machines" not in text


def label(trained_on):
    return {k: v for k, v in trained_on.items() if k not in ("family", "model")}


def test_every_seed_has_every_row_from_one_machine():
    rows = {name for name, _, _ in table_stats.PAPER_ROWS + table_stats.EXTRA_ROWS} - {"pspnet50_teacher"}
    all_seeds = []
    for folder in machine_folders():
        found = runs(folder)
        # every row but the later ones, which a machine may have for some of its seeds (committed as they finish)
        assert rows - table_stats.LATER_ROWS | {"pspnet50_teacher"} <= set(found) <= rows | {"pspnet50_teacher"}, folder
        rows_here = rows & set(found)
        seeds = set(found["pspnet18_baseline"])
        all_seeds += sorted(seeds)
        teacher = found["pspnet50_teacher"][None]
        assert teacher["iteration"] == 500 and teacher["trained_on"] is not None
        for row in rows_here:
            later = row in table_stats.LATER_ROWS
            assert set(found[row]) <= seeds if later else set(found[row]) == seeds, (folder, row)
            for seed, m in found[row].items():
                # a seed's runs and the teacher it was distilled from: one machine
                # (CPU family and model, recorded since 2026-12-03, name a generation, not the arithmetic)
                assert label(m["trained_on"]) == label(teacher["trained_on"]), (folder, row, seed)
                assert m["iteration"] == 150 and m["protocol"]["crop_size"] == 97 and m["images"] == 300, (row, seed)
                assert m["config"]["train"]["seed"] == seed
                if row in CHAIN_ROWS[1:]:  # the chained student's teacher is its own seed's assistant
                    assert re.search(rf"pspnet34_kd/seed{seed}/model/final.pth$", m["config"]["teacher"]["checkpoint"])
    assert len(all_seeds) == len(set(all_seeds)) >= 2  # a seed number on one machine only: pairs are independent


def test_readme_and_tables_blocks_are_the_committed_results():
    """The summaries between the instrument markers of README.md and docs/TABLES.md are what
    scripts/instrument_blocks.py makes of the committed folder: a number in them cannot drift from the runs."""

    sys.path.insert(0, os.path.join(REPO, "scripts"))
    import instrument_blocks

    made = instrument_blocks.blocks()
    for name, with_seeds in instrument_blocks.TARGETS.items():
        with open(os.path.join(REPO, name), encoding="utf-8") as f:
            text = f.read()
        inside = text.split(instrument_blocks.BEGIN, 1)[1].split(instrument_blocks.END, 1)[0]
        assert inside == "\n" + made[with_seeds] + "\n", name
    assert "| R18 + logit KD + CIRKD |" in made[False] and "| seed 1 |" in made[True]


def test_versus_kd_column_is_make_tables_pairing_against_the_kd_runs(capsys):
    """The block's "Δ vs logit KD" column (instrument_blocks.versus_kd) is what make_table.py prints with the KD
    runs as its --baseline, row by row, for each machine folder's seeds (one folder today)."""
    sys.path.insert(0, os.path.join(REPO, "scripts"))
    import instrument_blocks

    (folder,) = machine_folders()
    top = os.path.join(RESULTS, folder)
    rows = instrument_blocks.group_runs([instrument_blocks.load_run(p) for p in
                                         instrument_blocks.find_metrics([RESULTS], "ss")], None, None)
    column = instrument_blocks.versus_kd(rows)
    code, text, err = run_main([top, "--baseline", os.path.join(top, "pspnet18_kd"),
                                "--config-dir", os.path.join(REPO, "config", "synthetic_cpu")], capsys)
    assert code == 0, err
    checked = 0
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] in column:
            mean, interval = re.match(r"(\**[+-]\d+\.\d\d) ± \d+\.\d\d\** (\[.*\])", cells[8]).groups()
            assert column[cells[0]].strip("*") == f"{mean.strip('*')} {interval}", cells[0]
            assert column[cells[0]].startswith("**") == mean.startswith("**"), cells[0]
            checked += 1
    assert checked == len(column) >= 18 and "R18 + logit KD" not in column


def test_holm_line_is_stricter_than_the_column_and_the_readme_names_its_rows():
    """The block's Holm line keeps only rows whose own interval against logit KD excludes zero (a family-wise
    correction can only remove verdicts), on the side of their Δ; the README's prose names exactly its rows above."""
    sys.path.insert(0, os.path.join(REPO, "scripts"))
    import instrument_blocks

    rows = instrument_blocks.group_runs([instrument_blocks.load_run(p) for p in
                                         instrument_blocks.find_metrics([RESULTS], "ss")], None, None)
    column = {instrument_blocks.short_label(k): v for k, v in instrument_blocks.versus_kd(rows).items()}
    line = instrument_blocks.versus_kd_holm(rows)
    above, below, rest = re.search(r"above: (.*); below: (.*); not resolved: the other (\d+)\.$", line).groups()
    above, below = above.split(", "), below.split(", ")
    assert len(above) + len(below) + int(rest) == len(column) >= 18
    for name in above + below:
        assert column[name].startswith("**"), name  # resolved alone too
        assert column[name].strip("*").startswith("+" if name in above else "-"), name
    assert len(above) < sum(v.startswith("**+") for v in column.values())  # today the correction removes some
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        readme = " ".join(f.read().split())
    named = re.search(r"corrected for the 18 comparisons \(Holm\), (.*?) stay\.", readme).group(1)
    assert re.split(r", | and ", named) == above


LONG = os.path.join(REPO, "docs", "results", "cpu-long-equal-cost", "amd-epyc-avx512")
LONG_HEADING = "**At the longer schedule (students 400 iterations)."


def test_longer_schedule_numbers_are_the_committed_runs(capsys):
    """docs/TABLES.md's section on the longer schedule (400 student iterations: equal cost, and the rows from the
    1500-iteration teacher) quotes only what make_table.py prints of docs/results/cpu-long-equal-cost (the commands
    written there): every "Δ [interval]" and "mIoU ± std"."""
    cfg = ["--config-dir", os.path.join(REPO, "config", "synthetic_cpu")]
    out = []
    for args in ([os.path.join(LONG, "iteration-matched"), "--equal-cost", os.path.join(LONG, "equal-cost")],
                 [os.path.join(LONG, "equal-cost", "pspnet18_baseline"), os.path.join(LONG, "teacher1500")],
                 [os.path.join(LONG, "iteration-matched", "pspnet18_baseline"), os.path.join(LONG, "teacher1500")],
                 [os.path.join(LONG, "teacher1500"), "--baseline", os.path.join(LONG, "equal-cost", "pspnet18_kd")],
                 [os.path.join(LONG, "iteration-matched", "pspnet18_baseline"), os.path.join(LONG, "teacher1500",
                  "pspnet18_kd"), os.path.join(LONG, "teacher1500-iteration-matched")],
                 [os.path.join(LONG, "teacher1500-iteration-matched"), "--baseline",
                  os.path.join(LONG, "teacher1500", "pspnet18_kd")],
                 [os.path.join(LONG, "equal-cost", "pspnet18_baseline"),
                  os.path.join(LONG, "teacher1500-iteration-matched")]):
        code, text, err = run_main(args + cfg, capsys)
        assert code == 0, err
        out.append(text)
    raw = "\n".join(out)
    plain = re.sub(r" ± \d+\.\d\d", "", raw.replace("**", ""))
    with open(os.path.join(REPO, "docs", "TABLES.md"), encoding="utf-8") as f:
        text = f.read()
    section = " ".join(text.split(LONG_HEADING, 1)[1].split("\n## ", 1)[0].split())
    intervals = re.findall(r"[+-]\d+\.\d\d \[[+-]\d+\.\d\d, [+-]\d+\.\d\d\]", section)
    scores = re.findall(r"\d+\.\d\d ± \d+\.\d\d", section)
    assert len(intervals) >= 4 and len(scores) >= 3
    assert [q for q in intervals if q not in plain] == [] and [q for q in scores if q not in raw] == []
    for folder, iters in (("equal-cost", {"pspnet18_baseline": 760, "pspnet18_kd": 400}),
                          ("iteration-matched", {"pspnet18_baseline": 400, "pspnet18_kd": 400}),
                          ("teacher1500", {"pspnet18_kd": 400, "pspnet50_teacher": 1500}),
                          ("teacher1500-iteration-matched",
                           {"pspnet18_kd_aux_kl": 400, "pspnet18_kd_at": 400, "pspnet50_teacher": 1500})):
        for row, n in iters.items():
            found = table_stats.find_metrics([os.path.join(LONG, folder, row)], "ss")
            seeds = {int(re.search(r"seed(\d+)", p).group(1)) for p in found if "/seed" in p}
            if row == "pspnet50_teacher":
                assert len(found) == 1 and not seeds, (folder, found)
            else:
                assert seeds == set(range(1, 11)), (folder, row, seeds)
            for path in found:
                with open(path, encoding="utf-8") as f:
                    assert json.load(f)["iteration"] == n, path
    teachers = []
    for folder in ("teacher1500", "teacher1500-iteration-matched"):  # one teacher run behind both folders' rows
        with open(os.path.join(LONG, folder, "pspnet50_teacher", "eval", "ss", "metrics.json"), encoding="utf-8") as f:
            teachers.append(json.load(f))
    assert teachers[0] == teachers[1]


def test_a_file_without_one_marker_pair_is_a_one_line_error():

    sys.path.insert(0, os.path.join(REPO, "scripts"))
    import instrument_blocks as ib

    assert ib.replace_block(f"a\n{ib.BEGIN}\nold\n{ib.END}\nb", "new\n", "X.md") == f"a\n{ib.BEGIN}\nnew\n\n{ib.END}\nb"
    for bad in (f"{ib.BEGIN} only", f"{ib.END}\n{ib.BEGIN}", f"{ib.BEGIN}{ib.END}{ib.BEGIN}{ib.END}"):
        with pytest.raises(SystemExit, match=r"^error: X.md: expected one <!-- instrument:begin -->"):
            ib.replace_block(bad, "new\n", "X.md")


DEMO = os.path.join(REPO, "docs", "results", "demo-t250s60-2026-12-03-amd-epyc-family25")
DEMOS = [DEMO, *(os.path.join(REPO, "docs", "results", f"demo-t250s60-2026-12-07-amd-epyc-family26{kind}")
                 for kind in ("", "-bf16")),
         os.path.join(REPO, "docs", "results", "demo-t250s60-2026-12-08-amd-epyc-family25-model1")]


@pytest.mark.parametrize("demo", DEMOS, ids=os.path.basename)
def test_readme_demo_table_is_the_committed_demo(capsys, demo):
    """docs/TABLES.md's `make demo` table is what scripts/make_table.py prints for the demo's committed metrics.json
    files (without the config and notes columns), and those runs are the demo preset's schedule: teacher 250
    iterations, students 60, three seeds of the four paper rows, one machine."""
    code, text, err = run_main([demo, "--config-dir", os.path.join(REPO, "config", "synthetic_cpu")], capsys)
    assert code == 0, err
    made = ["|".join(line.split("|")[:11]) + "|" for line in text.splitlines() if line.startswith("| ")]
    with open(os.path.join(REPO, "docs", "TABLES.md"), encoding="utf-8") as f:
        readme = f.read().splitlines()
    named = next(i for i, line in enumerate(readme) if os.path.basename(demo) + "/`" in line)  # the table's folder
    at = readme.index(made[0], named)  # the header row of the demo table after it
    assert readme[at:at + len(made) + 1] == made[:1] + readme[at + 1:at + 2] + made[1:]
    assert len(made) == 6 and "| 250 |" in made[1] and all("| 60 |" in row for row in made[2:])
    found = {}
    for row in sorted(os.listdir(demo)):
        base = os.path.join(demo, row)
        paths = ([os.path.join(base, "eval", "ss", "metrics.json")] if row == "pspnet50_teacher" else
                 [os.path.join(base, f"seed{k}", "eval", "ss", "metrics.json") for k in (1, 2, 3)])
        for path in paths:
            with open(path) as f:
                found[path] = json.load(f)
    assert {m["iteration"] for m in found.values()} == {250, 60} and len(found) == 13
    assert len({json.dumps(m["trained_on"], sort_keys=True) for m in found.values()}) == 1
    # the arithmetic its folder names: bfloat16 autocast for every run (DEMO_BF16), or float32 for every run
    assert {m["config"]["train"]["amp"] for m in found.values()} == {demo.endswith("-bf16")}


@pytest.mark.parametrize("demo, pooled", [(DEMO, "2.23"), (DEMOS[1], "2.26"), (DEMOS[2], "2.59")],
                         ids=lambda v: os.path.basename(v) if os.sep in v else v)
def test_readme_six_seed_demo_numbers_are_the_committed_runs(capsys, demo, pooled):
    """The six-seed figures docs/TABLES.md gives for the demo's schedule (seeds 1-3 of the demo, 4-6 run after it on the
    same VM) are what make_table prints for the two committed folders, the second one's students only."""
    extra = demo + "-seeds4-6"
    for row in ("pspnet18_baseline", "pspnet18_kd"):  # the folder's arithmetic is its base's
        with open(os.path.join(extra, row, "seed4", "eval", "ss", "metrics.json")) as f:
            assert json.load(f)["config"]["train"]["amp"] is demo.endswith("-bf16")
    students = [os.path.join(extra, row) for row in sorted(os.listdir(extra)) if row != "pspnet50_teacher"]
    code, text, err = run_main([demo, *students, "--config-dir", os.path.join(REPO, "config", "synthetic_cpu")],
                               capsys)
    assert code == 0, err
    assert "Seeds" not in text.split("Trained on:")[1]  # one machine: no seed mixes CPUs
    with open(os.path.join(REPO, "docs", "TABLES.md"), encoding="utf-8") as f:
        readme = " ".join(f.read().split())
    for label, name in (("logit KD", "R18 + logit KD |"), ("+ aux KL", "+ aux KL |"),
                        ("+ aux SmoothL1", "+ aux SmoothL1 |")):
        row = next(line for line in text.splitlines() if name in line)
        interval = re.search(r"\*\*([+-]\d+\.\d\d) ± \d+\.\d\d\*\* (\[[^\]]+\])", row)
        assert interval and "6 (6 > 0)" in row, row
        assert f"{label} {interval.group(1)} {interval.group(2)}" in readme, (label, row)
    assert f"pooled paired std {pooled}" in readme and f"Resolution: pooled paired std {pooled} points" in text


def test_readme_prose_quotes_the_instrument_block():
    """Every paired difference with its interval that the README's prose quotes ("+2.10 [+0.71, +3.49]") is a number
    of the instrument block or of the equal-cost block, which the tests here hold to the committed runs."""
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        text = f.read()
    sys_block = text.split("<!-- instrument:begin -->", 1)[1].split("<!-- instrument:end -->", 1)
    block, prose = sys_block[0], text.split("<!-- instrument:begin -->", 1)[0] + sys_block[1]
    quoted = re.findall(r"[+-]\d+\.\d\d \[[+-]\d+\.\d\d, [+-]\d+\.\d\d\]", prose)
    assert quoted, "the README quotes no paired difference"
    sys.path.insert(0, os.path.join(REPO, "scripts"))
    import instrument_blocks

    equal_cost = instrument_blocks.equal_cost()[0]  # the equal-cost block, held to its runs by the test below
    assert [q for q in quoted if q not in block and q not in equal_cost] == []


def test_tables_equal_cost_block_is_the_committed_equal_cost_runs():
    """docs/TABLES.md's equal-cost rows (between the equal-cost markers) are what scripts/instrument_blocks.py makes
    of docs/results/cpu-paired-equal-cost beside the committed instrument: every equal-cost number is a run's."""

    sys.path.insert(0, os.path.join(REPO, "scripts"))
    import instrument_blocks

    made, records = instrument_blocks.equal_cost()
    with open(os.path.join(REPO, "docs", "TABLES.md"), encoding="utf-8") as f:
        text = f.read()
    inside = text.split(instrument_blocks.EQUAL_BEGIN, 1)[1].split(instrument_blocks.EQUAL_END, 1)[0]
    assert inside == "\n" + made + "\n"
    assert "| R18 + logit KD + CIRKD |" in made and len(records) >= 17
