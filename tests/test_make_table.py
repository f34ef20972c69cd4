"""scripts/make_table.py (with scripts/table_stats.py, which it imports) on fabricated metrics.json files: means,
sample stds, missing runs, group-by, CSV, paired differences to the baseline, iterations."""

import csv
import importlib.util
import json
import os
import statistics
import sys

import pytest

from tests.conftest import REPO

_spec = importlib.util.spec_from_file_location("make_table", os.path.join(REPO, "scripts", "make_table.py"))
make_table = importlib.util.module_from_spec(_spec)
sys.modules["make_table"] = make_table  # dataclasses look their module up there
_spec.loader.exec_module(make_table)
table_stats = sys.modules["table_stats"]  # imported by make_table from its own folder

# row dir -> (mode, layers, feat_loss, {seed: (mIoU, mAcc, allAcc)}); aux KL has no runs at all.
PAPER = {
    "pspnet50_teacher": ("supervised", 50, "none", {1: (0.712, 0.80, 0.93)}),
    "pspnet18_baseline": ("supervised", 18, "none", {1: (0.501, 0.61, 0.88), 2: (0.523, 0.64, 0.885),
                                                     3: (0.488, 0.60, 0.871)}),
    "pspnet18_kd": ("distill", 18, "none", {1: (0.551, 0.66, 0.89), 2: (0.569, 0.67, 0.9)}),
    "pspnet18_kd_aux_smoothl1": ("distill", 18, "smoothl1", {1: (0.56, 0.7, 0.9), 2: (0.58, 0.71, 0.91),
                                                             3: (0.57, 0.69, 0.905), 4: (0.9, 0.9, 0.9)}),
}


def write_run(run_dir, scores, seed, mode="distill", layers=18, feat="none", temperature=1.0, eval_name="ss",
              iteration=None, checkpoint=None, relative=True, terms=None):
    """A run directory as train.py + test.py leave it: config.yaml and eval/<eval_name>/metrics.json (with the
    checkpoint's ``iteration`` unless None). The checkpoint evaluated is ``run_dir/model/final.pth`` unless given;
    ``relative=False`` leaves out ``checkpoint_relative``, as test.py did before it recorded it; ``terms``: the
    recorded ``distill.terms`` (left out when None, as in runs from before the key)."""
    out = os.path.join(run_dir, "eval", eval_name)
    os.makedirs(out, exist_ok=True)
    checkpoint = os.path.abspath(checkpoint or os.path.join(run_dir, "model", "final.pth"))
    config = {"train": {"seed": seed, "crop_size": 129},
              "distill": {"feat_loss": feat, "temperature": temperature}}
    if terms is not None:
        config["distill"]["terms"] = list(terms)
    metrics = {"mIoU": scores[0], "mAcc": scores[1], "allAcc": scores[2], "mode": mode, "layers": layers,
               "params": 16_750_000 if layers == 18 else 48_940_000, "gflops": 2.5 if layers == 18 else 7.5,
               "gflops_crop_size": 129, "protocol": {"scales": [1.0], "flip": False}, "config": config,
               "checkpoint": checkpoint}
    if relative:
        metrics["checkpoint_relative"] = os.path.relpath(checkpoint, os.path.abspath(out))
    if iteration is not None:
        metrics["iteration"] = iteration
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(metrics, f)
    with open(os.path.join(run_dir, "config.yaml"), "w") as f:
        f.write(f"train:\n  seed: {seed}\n")


@pytest.fixture
def paper_runs(tmp_path):
    root = tmp_path / "runs" / "synthetic"
    for row, (mode, layers, feat, seeds) in PAPER.items():
        for seed, scores in seeds.items():
            run_dir = root / row if row == "pspnet50_teacher" else root / row / f"seed{seed}"
            write_run(str(run_dir), scores, seed, mode, layers, feat, iteration=1200 if layers == 50 else 300)
    return root


def run_main(args, capsys):
    code = make_table.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def read_csv(path):
    with open(path, newline="") as f:
        return {rec["row"]: rec for rec in csv.DictReader(f)}


def expected(row, index, seeds):
    values = [PAPER[row][3][s][index] * 100 for s in seeds]
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else None)


def test_paper_table_means_stds_and_missing(paper_runs, tmp_path, capsys):
    md, out_csv = tmp_path / "t.md", tmp_path / "t.csv"
    code, out, _ = run_main([paper_runs, "--seeds", "1 2 3", "--config-dir", os.path.join(REPO, "config", "synthetic"),
                             "--out-md", md, "--out-csv", out_csv], capsys)
    assert code == 0
    assert out == md.read_text()
    rows = read_csv(out_csv)
    assert list(rows) == [name for name, _, _ in table_stats.PAPER_ROWS]
    for row, seeds in (("pspnet18_baseline", [1, 2, 3]), ("pspnet18_kd", [1, 2]),
                       ("pspnet18_kd_aux_smoothl1", [1, 2, 3])):
        for index, score in enumerate(("mIoU", "mAcc", "allAcc")):
            mean, std = expected(row, index, seeds)
            assert float(rows[row][score]) == pytest.approx(mean, abs=1e-9)
            assert float(rows[row][score + "_std"]) == pytest.approx(std, abs=1e-9)
        assert int(rows[row]["n"]) == len(seeds)
        mean, std = expected(row, 0, seeds)
        assert f"| {mean:.2f} ± {std:.2f} |" in out  # the markdown shows the CSV's numbers, rounded
    # the teacher: one run, no std, no seeds expected of it
    assert rows["pspnet50_teacher"]["n"] == "1" and rows["pspnet50_teacher"]["mIoU_std"] == ""
    assert float(rows["pspnet50_teacher"]["mIoU"]) == pytest.approx(71.2)
    assert "| Teacher PSPNet-R50 | 71.20 | 80.00 | 93.00 | 1 | 48.94 | 7.50 @ 129 |" in out
    assert rows["pspnet50_teacher"]["notes"] == ""
    # missing runs are marked; extra seeds are left out and said so
    assert rows["pspnet18_kd"]["notes"] == "missing: seed 3"
    assert rows["pspnet18_kd_aux_kl"]["n"] == "0" and rows["pspnet18_kd_aux_kl"]["mIoU"] == ""
    assert "missing: seeds 1, 2, 3" in rows["pspnet18_kd_aux_kl"]["notes"]
    assert "| R18 + logit KD + aux KL | — | — | — | 0 |" in out
    assert rows["pspnet18_kd_aux_smoothl1"]["notes"] == "ignored: seed 4"
    assert rows["pspnet18_kd_aux_smoothl1"]["seeds"] == "1 2 3"
    # links are relative to the markdown file
    assert "[pspnet18_kd.yaml](" in out and "(runs/synthetic/pspnet18_kd/seed1/config.yaml)" in out
    assert rows["pspnet18_kd"]["resolved_config"] == "runs/synthetic/pspnet18_kd/seed1/config.yaml"
    assert os.path.samefile(tmp_path / rows["pspnet18_kd"]["config"], os.path.join(REPO, "config", "synthetic",
                                                                                  "pspnet18_kd.yaml"))
    assert float(rows["pspnet18_baseline"]["params_M"]) == pytest.approx(16.75)


def test_without_seeds_every_run_counts(paper_runs, tmp_path, capsys):
    code, _, _ = run_main([paper_runs, "--out-csv", tmp_path / "t.csv"], capsys)
    assert code == 0
    rows = read_csv(tmp_path / "t.csv")
    mean, std = expected("pspnet18_kd_aux_smoothl1", 0, [1, 2, 3, 4])
    assert float(rows["pspnet18_kd_aux_smoothl1"]["mIoU"]) == pytest.approx(mean)
    assert float(rows["pspnet18_kd_aux_smoothl1"]["mIoU_std"]) == pytest.approx(std)
    assert rows["pspnet18_kd"]["notes"] == "" and rows["pspnet18_kd_aux_kl"]["notes"] == "missing: no runs"


def test_group_by_a_config_key(tmp_path, capsys):
    root = tmp_path / "sweep" / "pspnet18_kd"
    values = {4.0: [0.40, 0.44], 1.0: [0.50, 0.53], 2.0: [0.61, 0.60]}
    dirs = []
    for temperature, mious in values.items():
        dirs.append(root / f"distill.temperature={temperature:g}")
        for seed, miou in enumerate(mious, start=1):
            write_run(str(dirs[-1] / f"seed{seed}"), (miou, 0.5, 0.8), seed, temperature=temperature)
    code, out, _ = run_main([*dirs, "--group-by", "distill.temperature", "--seeds", "1,2", "--out-csv",
                             tmp_path / "s.csv"], capsys)
    assert code == 0
    rows = read_csv(tmp_path / "s.csv")
    assert list(rows) == ["distill.temperature=4.0", "distill.temperature=1.0", "distill.temperature=2.0"]
    for temperature, mious in values.items():
        rec = rows[f"distill.temperature={temperature}"]
        assert float(rec["mIoU"]) == pytest.approx(statistics.mean(mious) * 100)
        assert float(rec["mIoU_std"]) == pytest.approx(statistics.stdev([m * 100 for m in mious]))
    assert "Teacher" not in out  # a sweep lists its values only
    code, _, err = run_main([*dirs, "--group-by", "distill.nope"], capsys)
    assert code == 2 and "distill.nope" in err and "metrics.json" in err


def test_unknown_runs_grouped_by_dir_name(tmp_path, capsys):
    write_run(str(tmp_path / "a" / "lr_high"), (0.3, 0.4, 0.7), 1)
    write_run(str(tmp_path / "b" / "r34" / "seed1"), (0.5, 0.6, 0.8), 1, mode="supervised", layers=34)
    write_run(str(tmp_path / "b" / "r34" / "seed2"), (0.7, 0.6, 0.8), 2, mode="supervised", layers=34)
    code, out, _ = run_main([tmp_path / "a" / "lr_high", tmp_path / "b", "--out-csv", tmp_path / "u.csv"], capsys)
    assert code == 0
    rows = read_csv(tmp_path / "u.csv")
    assert list(rows) == ["lr_high", "r34"]
    assert rows["r34"]["label"] == "r34 (supervised R34)" and rows["r34"]["n"] == "2"
    assert float(rows["r34"]["mIoU_std"]) == pytest.approx(statistics.stdev([50.0, 70.0]))
    assert "Teacher" not in out and "lr_high (distill R18, feat_loss none)" in out


def test_a_mobilenet_run_is_labelled_by_its_backbone_and_kept_out_of_a_resnet_row(paper_runs, tmp_path, capsys):
    """metrics.json's ``backbone`` (model.backbone): a MobileNetV3 run's ``layers`` (model.layers, unused) does not make
    it an R18 row's run."""
    def mobilenet_run(run_dir, seed):
        write_run(str(run_dir), (0.4, 0.5, 0.8), seed)
        path = run_dir / "eval" / "ss" / "metrics.json"
        metrics = json.load(open(path))
        json.dump({**metrics, "backbone": "mobilenetv3_small"}, open(path, "w"))

    mobilenet_run(tmp_path / "m" / "pspnet_mbv3s_kd" / "seed1", 1)
    code, out, _ = run_main([tmp_path / "m"], capsys)
    assert code == 0 and "| MobileNetV3-Small + logit KD |" in out  # the KD row of a MobileNetV3 student's table
    mobilenet_run(paper_runs / "pspnet18_kd" / "seed3", 3)
    code, _, err = run_main([paper_runs], capsys)
    assert code == 2 and "pspnet18_kd/seed3/eval/ss/metrics.json" in err and "distill mobilenetv3_small" in err


def test_bad_inputs_name_the_file(paper_runs, tmp_path, capsys):
    # a run filed under a paper row that its checkpoint contradicts
    write_run(str(paper_runs / "pspnet18_kd" / "seed3"), (0.5, 0.5, 0.5), 3, feat="kl")
    code, _, err = run_main([paper_runs], capsys)
    assert code == 2 and "pspnet18_kd/seed3/eval/ss/metrics.json" in err and "feat_loss kl" in err
    # two runs of one row with one seed
    write_run(str(tmp_path / "x" / "row" / "seed1"), (0.5, 0.5, 0.5), 1)
    write_run(str(tmp_path / "y" / "row" / "seed1"), (0.6, 0.5, 0.5), 1)
    code, _, err = run_main([tmp_path / "x", tmp_path / "y"], capsys)
    assert code == 2 and "train.seed=1" in err and "row" in err
    code, _, err = run_main([tmp_path / "nowhere"], capsys)
    assert code == 2 and "nowhere" in err
    code, _, err = run_main([tmp_path / "x", "--eval", "ms_flip"], capsys)
    assert code == 2 and "eval/ms_flip/metrics.json" in err
    code, _, err = run_main([tmp_path / "x", "--seeds", "one two"], capsys)
    assert code == 2 and "--seeds" in err


def test_scores_of_another_runs_checkpoint_are_refused(paper_runs, tmp_path, capsys):
    """test.py --config X test.checkpoint=OTHER/... used to write OTHER's scores into X/eval/: such a row is
    refused, naming the metrics.json, with or without the relative path test.py now records."""
    other = str(paper_runs / "pspnet18_baseline" / "seed1" / "model" / "final.pth")
    for relative in (True, False):
        run_dir = paper_runs / "pspnet18_kd" / "seed3"
        write_run(str(run_dir), (0.5, 0.5, 0.5), 3, checkpoint=other, relative=relative)
        code, out, err = run_main([paper_runs], capsys)
        metrics = str(run_dir / "eval" / "ss" / "metrics.json")
        assert code == 2 and out == ""
        assert err.splitlines() == [f"error: {metrics}: the scores of {other}, a checkpoint outside this run "
                                    f"directory {run_dir} (another run's test.checkpoint?); leave this file out, "
                                    "or evaluate that run into its own eval folder"]
    # any checkpoint inside the run directory is its own, whatever its name
    write_run(str(run_dir), (0.5, 0.5, 0.5), 3, checkpoint=str(run_dir / "model" / "last.pth"))
    assert run_main([paper_runs], capsys)[0] == 0


def test_a_copied_run_directory_still_names_its_own_checkpoint(paper_runs, tmp_path, capsys):
    """checkpoint_relative holds in a copy (as TABLES.md copies the demo's teacher); the absolute path of a file
    written before it was recorded points at the original, outside the copy, and is refused."""
    import shutil

    copy = tmp_path / "copy" / "synthetic"
    shutil.copytree(paper_runs, copy)
    code, out, _ = run_main([copy, "--out-csv", tmp_path / "t.csv"], capsys)
    assert code == 0 and read_csv(tmp_path / "t.csv")["pspnet18_baseline"]["n"] == "3"
    legacy = copy / "pspnet50_teacher"
    write_run(str(legacy), (0.7, 0.8, 0.9), 1, "supervised", 50,
              checkpoint=str(paper_runs / "pspnet50_teacher" / "model" / "final.pth"), relative=False)
    code, _, err = run_main([copy], capsys)
    assert code == 2 and str(legacy / "eval" / "ss" / "metrics.json") in err and "outside this run" in err


def test_same_path_twice_counts_once(paper_runs, tmp_path, capsys):
    code, _, _ = run_main([paper_runs, paper_runs / "pspnet18_kd", "--out-csv", tmp_path / "t.csv"], capsys)
    assert code == 0 and read_csv(tmp_path / "t.csv")["pspnet18_kd"]["n"] == "2"


def paired(rec):
    """(d_mIoU, d_mIoU_std, d_pairs, d_unpaired) of a CSV record: numbers parsed, empty ones None; seeds as text."""
    return (*(None if rec[k] == "" else float(rec[k]) for k in ("d_mIoU", "d_mIoU_std", "d_pairs")), rec["d_unpaired"])


def test_paired_difference_to_the_baseline_row(paper_runs, tmp_path, capsys):
    # an extra R18 row with one seed (one pair, no std) and an R34 row (not a student of the table: no Δ)
    write_run(str(paper_runs / "kd_T4" / "seed2"), (0.535, 0.6, 0.9), 2)
    write_run(str(paper_runs / "r34" / "seed1"), (0.6, 0.6, 0.9), 1, mode="supervised", layers=34)
    code, out, _ = run_main([paper_runs, "--out-csv", tmp_path / "t.csv"], capsys)
    assert code == 0
    rows = read_csv(tmp_path / "t.csv")
    # baseline mIoU by seed: 50.1, 52.3, 48.8 (PAPER above)
    # logit KD, seeds 1 2: 55.1 - 50.1 = 5.0, 56.9 - 52.3 = 4.6 -> 4.8 ± 0.4 / sqrt(2); baseline seed 3 unpaired
    d, std, pairs, unpaired = paired(rows["pspnet18_kd"])
    assert (d, std, pairs, unpaired) == (pytest.approx(4.8), pytest.approx(0.28284271247), 2, "3")
    # 95% interval: 4.8 ± t(0.975, 1) 0.2828 / sqrt(2) = 4.8 ± 12.7062 x 0.2 = [2.26, 7.34]: excludes zero (bold)
    assert "| **+4.80 ± 0.28** [+2.26, +7.34] | 2 (2 > 0; unpaired: seed 3) |" in out
    assert float(rows["pspnet18_kd"]["d_ci95_low"]) == pytest.approx(2.25875905)
    assert rows["pspnet18_kd"]["d_resolved"] == "True" and rows["pspnet18_kd"]["d_above_zero"] == "2"
    # SmoothL1, seeds 1-4: 5.9, 5.7, 8.2 -> 6.6, std sqrt((0.49 + 0.81 + 2.56) / 2); its seed 4 has no baseline
    d, std, pairs, unpaired = paired(rows["pspnet18_kd_aux_smoothl1"])
    assert (d, std, pairs, unpaired) == (pytest.approx(6.6), pytest.approx(1.38924439894), 3, "4")
    # 6.6 ± t(0.975, 2) 1.3892 / sqrt(3) = 6.6 ± 4.3027 x 0.8021 = [3.15, 10.05]
    assert "| **+6.60 ± 1.39** [+3.15, +10.05] | 3 (3 > 0; unpaired: seed 4) |" in out
    # one pair: 53.5 - 52.3
    assert paired(rows["kd_T4"]) == (pytest.approx(1.2), None, 1, "1 3")
    assert "| +1.20 | 1 (1 > 0; unpaired: seeds 1, 3) |" in out  # no interval from one pair
    assert rows["kd_T4"]["d_ci95_low"] == "" and rows["kd_T4"]["d_resolved"] == ""
    # the resolution line pools the two rows with 2+ pairs: s^2 = (0.08 + 3.86) / (1 + 2) on 3 degrees of freedom
    pooled = ((0.08 + 3.86) / 3) ** 0.5
    assert f"Resolution: pooled paired std {pooled:.2f} points over 2 compared rows (3 degrees of freedom)" in out
    half2 = 3.18244630528 * pooled / 2 ** 0.5  # t(0.975, 3)
    assert f"with 2 pairs a 95% interval is ± {half2:.2f} points" in out
    # no runs: no pairs and no Δ; the teacher, the baseline itself and the R34 row are not compared
    assert paired(rows["pspnet18_kd_aux_kl"]) == (None, None, 0, "")
    for row in ("pspnet50_teacher", "pspnet18_baseline", "r34"):
        assert paired(rows[row]) == (None, None, None, "")
    assert "| Teacher PSPNet-R50 | 71.20 | 80.00 | 93.00 | 1 | 48.94 | 7.50 @ 129 | 1200 | — | — |" in out
    assert "| Student PSPNet-R18 baseline | 50.40 ± 1.77 | 61.67 ± 2.08 | 87.87 ± 0.71 | 3 | 16.75 | 2.50 @ 129 " \
           "| 300 | — | — |" in out
    # --seeds 1 2 3 leaves SmoothL1's seed 4 out of the row, hence out of the pairs; the notes are untouched
    code, out, _ = run_main([paper_runs, "--seeds", "1 2 3", "--out-csv", tmp_path / "s.csv"], capsys)
    rows = read_csv(tmp_path / "s.csv")
    assert code == 0 and paired(rows["pspnet18_kd_aux_smoothl1"])[2:] == (3, "")
    assert rows["pspnet18_kd"]["notes"] == "missing: seed 3"


def test_baseline_option_pairs_every_group(tmp_path, capsys):
    root = tmp_path / "sweep" / "pspnet18_kd"
    values = {4.0: [0.40, 0.44], 1.0: [0.50, 0.53], 2.0: [0.61, 0.60]}
    dirs = []
    for temperature, mious in values.items():
        dirs.append(root / f"distill.feat_loss={temperature:g}")
        for seed, miou in enumerate(mious, start=1):
            write_run(str(dirs[-1] / f"seed{seed}"), (miou, 0.5, 0.8), seed, temperature=temperature)
    base = tmp_path / "runs" / "pspnet18_baseline"
    for seed, miou in {1: 0.45, 2: 0.47, 3: 0.99}.items():
        write_run(str(base / f"seed{seed}"), (miou, 0.5, 0.8), seed, mode="supervised")
    args = [*dirs, "--group-by", "distill.temperature", "--out-csv", tmp_path / "s.csv"]
    code, out, _ = run_main([*args, "--seeds", "1 2", "--baseline", base], capsys)
    assert code == 0
    rows = read_csv(tmp_path / "s.csv")
    # baseline 45, 47 (its seed 3 is not in --seeds): T=4 -5, -3; T=1 +5, +6; T=2 +16, +13
    assert paired(rows["distill.temperature=4.0"]) == (pytest.approx(-4.0), pytest.approx(1.41421356237), 2, "")
    assert paired(rows["distill.temperature=1.0"]) == (pytest.approx(5.5), pytest.approx(0.70710678119), 2, "")
    assert paired(rows["distill.temperature=2.0"]) == (pytest.approx(14.5), pytest.approx(2.12132034356), 2, "")
    # one degree of freedom each: ± t(0.975, 1) x std / sqrt(2) = ± 12.7062 x 1.0 and x 1.5: neither excludes zero
    assert "| -4.00 ± 1.41 [-16.71, +8.71] | 2 (0 > 0) |" in out
    assert "| +14.50 ± 2.12 [-4.56, +33.56] | 2 (2 > 0) |" in out
    assert "runs/pspnet18_baseline` (supervised R18, seeds 1 2)" in out
    # without --seeds the baseline's seed 3 is unpaired in every row
    code, out, _ = run_main([*args, "--baseline", base], capsys)
    assert code == 0 and all(paired(rec)[2:] == (2, "3") for rec in read_csv(tmp_path / "s.csv").values())
    assert out.count("> 0; unpaired: seed 3) |") == 3
    # without --baseline a sweep has nothing to pair with
    code, out, _ = run_main(args, capsys)
    assert code == 0 and all(paired(rec) == (None, None, None, "") for rec in read_csv(tmp_path / "s.csv").values())
    assert out.count("| — | — |") == 3 and "Δ mIoU vs baseline:" not in out
    code, _, err = run_main([*args, "--baseline", tmp_path / "nowhere"], capsys)
    assert code == 2 and "--baseline" in err and "nowhere" in err


def test_iters_column_and_the_teachers_schedule(paper_runs, tmp_path, capsys):
    code, out, _ = run_main([paper_runs, "--out-csv", tmp_path / "t.csv"], capsys)
    rows = read_csv(tmp_path / "t.csv")
    assert code == 0 and rows["pspnet50_teacher"]["iters"] == "1200" and rows["pspnet18_kd"]["iters"] == "300"
    assert rows["pspnet18_kd_aux_kl"]["iters"] == ""
    assert "The teacher trained 4.0× the students' iterations (1200 vs 300)." in out.split("\n")[0]
    # runs of one row that disagree show the range; the caption then gives both schedules without a ratio
    write_run(str(paper_runs / "pspnet18_baseline" / "seed3"), PAPER["pspnet18_baseline"][3][3], 3, "supervised",
              iteration=280)
    code, out, _ = run_main([paper_runs, "--out-csv", tmp_path / "t.csv"], capsys)
    assert code == 0 and read_csv(tmp_path / "t.csv")["pspnet18_baseline"]["iters"] == "280–300"
    assert "| 2.50 @ 129 | 280–300 |" in out
    assert "The teacher trained 1200 iterations, the baseline 280–300." in out and "× the students" not in out
    # a run without a recorded iteration is named; a teacher without one drops the sentence
    write_run(str(paper_runs / "pspnet18_kd" / "seed2"), PAPER["pspnet18_kd"][3][2], 2)
    write_run(str(paper_runs / "pspnet50_teacher"), PAPER["pspnet50_teacher"][3][1], 1, "supervised", 50)
    code, out, _ = run_main([paper_runs, "--out-csv", tmp_path / "t.csv"], capsys)
    rows = read_csv(tmp_path / "t.csv")
    assert code == 0 and rows["pspnet18_kd"]["notes"] == "iteration not recorded: seed 2"
    assert rows["pspnet18_kd"]["iters"] == "300" and rows["pspnet50_teacher"]["iters"] == ""
    assert "The teacher trained" not in out


def test_caption_names_autocast_training_and_how_many_runs_had_it(paper_runs, tmp_path, capsys):
    """Runs trained under ``train.amp`` (the demo on CPUs with bfloat16 units) are named in the caption, with the
    dtype and the count when the table mixes them with float32 runs; an all-float32 table says nothing."""
    code, out, _ = run_main([paper_runs], capsys)
    assert code == 0 and "autocast" not in out.split("\n")[0]
    paths = sorted(paper_runs.glob("**/eval/ss/metrics.json"))

    def set_amp(path, amp):
        metrics = json.loads(path.read_text())
        metrics["config"]["train"].update(amp=amp, amp_dtype="bfloat16")
        path.write_text(json.dumps(metrics))

    for path in paths:
        set_amp(path, True)
    code, out, _ = run_main([paper_runs], capsys)
    caption = out.split("\n")[0]
    assert code == 0 and caption.endswith(
        " Trained under bfloat16 autocast (`train.amp`): every run; evaluated in float32.")
    set_amp(paths[0], False)
    code, out, _ = run_main([paper_runs], capsys)
    assert code == 0 and (f"Trained under bfloat16 autocast (`train.amp`): {len(paths) - 1} of the {len(paths)} runs "
                          "(the others in float32)") in out.split("\n")[0]


def test_caption_names_the_fused_optimizer_step_and_how_many_runs_had_it(paper_runs, capsys):
    """``train.fused_optimizer`` rounds AdamW differently from the loop: a table whose runs used it says so, with
    the count when it mixes them; a table of loop runs says nothing."""
    code, out, _ = run_main([paper_runs], capsys)
    assert code == 0 and "fused" not in out.split("\n")[0]
    paths = sorted(paper_runs.glob("**/eval/ss/metrics.json"))

    def set_fused(path, on):
        metrics = json.loads(path.read_text())
        metrics["config"]["train"]["fused_optimizer"] = on
        path.write_text(json.dumps(metrics))

    for path in paths:
        set_fused(path, True)
    code, out, _ = run_main([paper_runs], capsys)
    assert code == 0 and out.split("\n")[0].endswith(
        " The optimizer's fused step (`train.fused_optimizer`): every run.")
    set_fused(paths[-1], False)
    code, out, _ = run_main([paper_runs], capsys)
    assert code == 0 and (f"fused step (`train.fused_optimizer`): {len(paths) - 1} of the {len(paths)} runs "
                          "(the others with the loop).") in out.split("\n")[0]


def test_teacher_row_names_an_adopted_teachers_architecture(tmp_path, capsys):
    """TEACHER=PATH can put a DeepLabV3-R101 (imported, say) at the teacher's place: its row says so."""
    from model.build import ARCHS

    root = tmp_path / "runs" / "synthetic"
    write_run(str(root / "pspnet50_teacher"), (0.8, 0.85, 0.9), 1, "supervised", 101, iteration=None)
    path = root / "pspnet50_teacher" / "eval" / "ss" / "metrics.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "arch": "deeplabv3"}))
    write_run(str(root / "pspnet18_baseline" / "seed1"), (0.5, 0.6, 0.7), 1, "supervised", 18)
    code, out, _ = run_main([root, "--seeds", "1"], capsys)
    assert code == 0 and "| Teacher DeepLabV3-R101 |" in out and "Teacher PSPNet-R50" not in out
    assert table_stats.ARCH_NAMES == {k: v[0] for k, v in ARCHS.items()}
