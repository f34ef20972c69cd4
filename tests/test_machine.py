"""util/machine: the machine train.py records in every checkpoint, test.py's ``trained_on``, and the line of
scripts/make_table.py that names which machine trained each seed."""

import json
import os
import re

import torch

from tests.test_make_table import (  # noqa: F401  (paper_runs: a fixture)
    make_table,
    paper_runs,
    read_csv,
    run_main,
    write_run,
)
from util.machine import ISA_FLAGS, cpu_flags, machine, machine_label

INTEL = {"cpu": "Intel(R) Xeon(R) Processor", "vendor": "GenuineIntel", "isa": ["avx2", "avx512f", "amx_bf16"],
         "cpus": 2, "device": "cpu", "torch": "2.14.1"}
AMD = {"cpu": "AMD EPYC 9B14", "vendor": "AuthenticAMD", "isa": ["avx2", "avx512f"], "cpus": 2, "device": "cpu",
       "torch": "2.14.1"}


def test_machine_describes_this_cpu(tmp_path):
    m = machine(torch.device("cpu"))
    assert m["device"] == "cpu" and m["torch"] == torch.__version__ and m["cpus"] == os.cpu_count()
    assert m["isa"] == [f for f in ISA_FLAGS if f in cpu_flags()]  # in ISA_FLAGS' order, only those present
    if os.path.isfile("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            text = f.read()
        assert m["cpu"] in text and m["vendor"] in text
        family = re.search(r"^cpu family\s*:\s*(\S+)", text, re.M)  # what lscpu prints as "CPU family"
        model = re.search(r"^model\s*:\s*(\S+)", text, re.M)
        assert m["family"] == (family.group(1) if family else None)
        assert m["model"] == (model.group(1) if model else None)
    assert machine_label(m) == machine_label({k: v for k, v in m.items() if k not in ("family", "model")})
    json.dumps(m)  # it goes into metrics.json and into checkpoints, which are loaded with weights_only=True:
    path = os.path.join(str(tmp_path), "meta.pth")
    torch.save({"machine": m}, path)
    assert torch.load(path, weights_only=True) == {"machine": m}  # (torch.__version__ itself is refused there)


def test_limited_kernels_are_recorded_and_named(monkeypatch):
    """ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA give another arithmetic on the same CPU: recorded and in the label,
    so such runs never pair with the CPU's own; without them the record and the label are as before."""
    for name in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        monkeypatch.delenv(name, raising=False)
    plain = machine(torch.device("cpu"))
    assert "kernels" not in plain
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    limited = machine(torch.device("cpu"))
    assert limited["kernels"] == "ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2"
    assert machine_label(limited) == machine_label(plain).replace(
        "), ", "; kernels limited: ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2), ", 1)
    assert machine_label({**AMD, "kernels": "ATEN_CPU_CAPABILITY=avx2"}) == (
        "AMD EPYC 9B14 (AuthenticAMD; avx2 avx512f; kernels limited: ATEN_CPU_CAPABILITY=avx2), 2 CPUs")


def test_machine_label():
    assert machine_label(INTEL) == "Intel(R) Xeon(R) Processor (GenuineIntel; avx2 avx512f amx_bf16), 2 CPUs"
    assert machine_label({**AMD, "isa": []}) == "AMD EPYC 9B14 (AuthenticAMD; no AVX2), 2 CPUs"
    assert machine_label({**INTEL, "device": "NVIDIA A100"}).endswith("2 CPUs, NVIDIA A100")
    assert machine_label(None) == "not recorded"


def set_machine(root, row, seed, meta):
    run = root / row if seed is None else root / row / f"seed{seed}"
    path = run / "eval" / "ss" / "metrics.json"
    metrics = json.loads(path.read_text())
    metrics["trained_on"] = meta
    path.write_text(json.dumps(metrics))


def test_table_names_the_machine_of_each_seed(paper_runs, capsys):  # noqa: F811
    code, out, _ = run_main([paper_runs], capsys)
    assert code == 0 and "Trained on" not in out  # nothing recorded (runs of an older train.py): no line
    for row, seeds in [("pspnet18_baseline", [1, 2, 3]), ("pspnet18_kd", [1, 2]),
                       ("pspnet18_kd_aux_smoothl1", [1, 2, 3, 4])]:
        for seed in seeds:
            set_machine(paper_runs, row, seed, AMD if seed == 3 else INTEL)
    set_machine(paper_runs, "pspnet50_teacher", None, INTEL)
    code, out, _ = run_main([paper_runs], capsys)
    intel, amd = machine_label(INTEL), machine_label(AMD)
    assert code == 0
    assert f"Trained on: seeds 1 2 4 and the teacher: {intel}; seed 3: {amd}." in out
    set_machine(paper_runs, "pspnet50_teacher", None, {**INTEL, "cpus": 4})
    code, out, _ = run_main([paper_runs], capsys)
    assert f"Trained on: seeds 1 2 4: {intel}; seed 3: {amd}; the teacher: {intel.replace('2 CPUs', '4 CPUs')}." in out
    assert "mix machines" not in out
    set_machine(paper_runs, "pspnet18_kd_aux_smoothl1", 2, AMD)  # seed 2's baseline on Intel, one of its rows on AMD
    code, out, _ = run_main([paper_runs], capsys)
    assert "seeds 2 3: " + amd in out and "Seeds 2 mix machines: their pairs compare CPUs." in out
    # the CPU generation, where recorded, follows the label without splitting it: same vector units, same arithmetic
    set_machine(paper_runs, "pspnet18_kd_aux_smoothl1", 3, {**AMD, "family": "26", "model": "2"})
    set_machine(paper_runs, "pspnet18_baseline", 3, {**AMD, "family": "25", "model": "17"})
    code, out, _ = run_main([paper_runs], capsys)
    assert f"seeds 2 3: {amd} [CPU family 25 model 17; family 26 model 2]" in out
    assert "Seeds 2 mix machines" in out and "Seeds 2 3 mix" not in out



def test_a_table_over_two_machines_has_one_teacher_per_machine(tmp_path, capsys):
    """The layout of docs/results/cpu-paired: one folder per machine, each with its teacher and its seeds; the
    table over both pairs every seed with its own baseline and its teacher row holds one run per machine."""
    scores = {"intel": {1: 0.40, 2: 0.42}, "amd": {5: 0.44}}
    for folder, meta, teacher in (("intel", INTEL, 0.58), ("amd", AMD, 0.56)):
        root = tmp_path / "cpu-paired" / folder
        write_run(str(root / "pspnet50_teacher"), (teacher, 0.7, 0.9), 1, "supervised", 50, iteration=500)
        set_machine(root, "pspnet50_teacher", None, meta)
        for seed, base in scores[folder].items():
            write_run(str(root / "pspnet18_baseline" / f"seed{seed}"), (base, 0.5, 0.8), seed, "supervised", 18)
            write_run(str(root / "pspnet18_kd" / f"seed{seed}"), (base + 0.01 * seed, 0.5, 0.8), seed)
            for row in ("pspnet18_baseline", "pspnet18_kd"):
                set_machine(root, row, seed, meta)
    csv_path = tmp_path / "t.csv"
    code, out, err = run_main([tmp_path / "cpu-paired", "--out-csv", csv_path], capsys)
    assert code == 0, err
    rec = read_csv(csv_path)
    assert rec["pspnet50_teacher"]["n"] == "2" and abs(float(rec["pspnet50_teacher"]["mIoU"]) - 57.0) < 1e-9
    assert "one teacher per machine (2 runs" in rec["pspnet50_teacher"]["notes"]
    assert rec["pspnet18_kd"]["d_pairs"] == "3" and abs(float(rec["pspnet18_kd"]["d_mIoU"]) - 8 / 3) < 1e-9
    intel, amd = machine_label(INTEL), machine_label(AMD)
    assert (f"Trained on: seeds 1 2 and the teacher (58.00 mIoU): {intel}; seed 5 and the teacher (56.00 mIoU): "
            f"{amd}.") in out
    # a seed whose machine has no teacher in a table that has one per machine is named
    set_machine(tmp_path / "cpu-paired" / "amd", "pspnet18_baseline", 5, {**AMD, "cpus": 4})
    set_machine(tmp_path / "cpu-paired" / "amd", "pspnet18_kd", 5, {**AMD, "cpus": 4})
    code, out, _ = run_main([tmp_path / "cpu-paired"], capsys)
    assert code == 0 and "Seeds 5: no teacher from their machine in the table" in out
    # two teachers from one machine are two runs of one seed: refused, naming both
    set_machine(tmp_path / "cpu-paired" / "amd", "pspnet50_teacher", None, INTEL)
    code, _, err = run_main([tmp_path / "cpu-paired"], capsys)
    assert code == 2 and "row pspnet50_teacher: two runs with train.seed=1 on " + intel in err
    assert str(tmp_path / "cpu-paired" / "amd" / "pspnet50_teacher") in err
