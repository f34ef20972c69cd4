"""scripts/compare_arms.py: two arms of the same rows paired seed by seed (the uint8-batch check of issue 41.7)."""

import json
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "scripts"))

import compare_arms  # noqa: E402

RESULTS = os.path.join(REPO, "docs", "results")
AMD = {"cpu": "AMD EPYC", "vendor": "AuthenticAMD", "isa": ["avx2"], "cpus": 2, "device": "cpu"}
INTEL = {**AMD, "cpu": "Intel(R) Xeon(R) Processor", "vendor": "GenuineIntel"}


def write_run(root, row, seed, miou, machine=AMD):
    folder = os.path.join(root, row, f"seed{seed}", "eval", "ss")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "metrics.json"), "w") as f:
        json.dump({"mIoU": miou, "config": {"train": {"seed": seed}}, "trained_on": machine}, f)


def test_committed_uint8_comparison_is_what_benchmarks_quotes(capsys):
    """The table of docs/BENCHMARKS.md ("Whether uint8 batches change results") is the script's output on the
    committed runs: ten pairs on one machine, and every interval inside the instrument's resolution."""
    code = compare_arms.main([
        "--rows", "pspnet18_baseline", "pspnet18_kd",
        "--a", os.path.join(RESULTS, "cpu-paired", "amd-epyc-avx512"),
        "--b", os.path.join(RESULTS, "uint8-batches", "amd-epyc-avx512")])
    out = capsys.readouterr().out
    assert code == 0 and out.startswith("seeds 1 2 3 4 5 6 7 8 9 10 (10 pairs); machines: AMD EPYC")
    with open(os.path.join(REPO, "docs", "BENCHMARKS.md"), encoding="utf-8") as f:
        doc = f.read().replace("−", "-")
    for line in out.splitlines()[4:]:
        cells = [c.strip().replace("*", "") for c in line.strip("|").split("|")]
        assert all(cell in doc for cell in cells[1:]), line
        low, high = (float(x) for x in cells[3].split("[")[1].split("]")[0].split(", "))
        assert -1.20 < low < 0 < high < 1.20, line  # no change beyond the resolution at 10 pairs


def test_paired_difference_and_gain(tmp_path, capsys):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    for seed, (base, kd) in enumerate([(0.40, 0.42), (0.41, 0.44), (0.39, 0.40)], start=1):
        write_run(a, "base", seed, base)
        write_run(a, "kd", seed, kd)
        write_run(b, "base", seed, base + 0.01)
        write_run(b, "kd", seed, kd + 0.03)
    assert compare_arms.main(["--a", a, "--b", b, "--rows", "base", "kd"]) == 0
    out = capsys.readouterr().out
    assert "| base | 40.00 | 41.00 | **+1.00 [+1.00, +1.00]**" in out
    assert "| kd - base | +2.00 [-0.48, +4.48], sd 1.00 | **+4.00 [+1.52, +6.48]**, sd 1.00 |" in out
    assert "**+2.00 [+2.00, +2.00]**, sd 0.00 |" in out.splitlines()[-1]  # the gain grew by 2 points in each pair


@pytest.mark.parametrize("case", ["twice", "machines", "missing"])
def test_bad_arms_are_one_line_errors(tmp_path, capsys, case):
    a, a2, b = str(tmp_path / "a"), str(tmp_path / "a2"), str(tmp_path / "b")
    write_run(a, "base", 1, 0.4)
    write_run(b, "base", 1, 0.4, INTEL if case == "machines" else AMD)
    args = ["--a", a, "--b", b, "--rows", "base"]
    if case == "twice":
        write_run(a2, "base", 1, 0.5)
        args = ["--a", a, a2, "--b", b, "--rows", "base"]
    if case == "missing":
        args = ["--a", a, "--b", b, "--rows", "base", "kd"]
    assert compare_arms.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert {"twice": "base seed 1 twice", "machines": "a pair must share its machine",
            "missing": "no run of kd"}[case] in err
