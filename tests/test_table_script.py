"""scripts/synthetic/table.sh at SCALE=tiny end to end: five rows, reruns skip, a failed run stops the script
without losing finished runs, and the next call resumes it; scripts/sweep.sh over the new feature losses."""

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from tests.conftest import REPO
from tests.test_make_table import table_stats

SCRIPT = os.path.join(REPO, "scripts", "synthetic", "table.sh")
ROWS = ["pspnet50_teacher", "pspnet18_baseline", "pspnet18_kd", "pspnet18_kd_aux_kl", "pspnet18_kd_aux_smoothl1"]


THREADS = os.environ.get("OMP_NUM_THREADS", "2")  # make test runs two workers of one thread each


def fabricate_teacher(path: str, layers: int = 50, classes: int = 4, **arch) -> str:
    """A randomly initialised supervised segkd checkpoint, as train.py (or tools.import_weights) writes one."""
    from model.build import ARCH_DEFAULTS, build_network
    from util.checkpoint import save_checkpoint

    arch = {**ARCH_DEFAULTS, **arch}
    torch.manual_seed(0)
    model = build_network(arch, layers, classes, pretrained=False)
    save_checkpoint({"format": "segkd", "mode": "supervised", "layers": layers, "classes": classes, **arch,
                     "model": model.state_dict()}, path)
    return path


def run_table(tmp_path, **env):
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "SCALE": "tiny", "PYTHON": sys.executable, "NPROC": "0",
                "RUNS": str(tmp_path / "runs"), "DATA": str(tmp_path / "data"), "OMP_NUM_THREADS": THREADS, **env}
    # from another directory: the script must find its repo and keep the user's relative paths meaningful
    return subprocess.run(["bash", SCRIPT], cwd=str(tmp_path), capture_output=True, text=True, env=full_env,
                          timeout=600)


def run_dir(tmp_path, row, seed=1):
    base = tmp_path / "runs" / "synthetic" / row
    return base if row == "pspnet50_teacher" else base / f"seed{seed}"


def metrics(tmp_path, row, seed=1):
    return run_dir(tmp_path, row, seed) / "eval" / "ss" / "metrics.json"


def final_mtimes(tmp_path):
    return {row: os.path.getmtime(run_dir(tmp_path, row) / "model" / "final.pth") for row in ROWS}


@pytest.mark.slow
@pytest.mark.long
def test_tiny_table_skip_fail_resume(tmp_path):
    r = run_table(tmp_path, TEACHER_CACHE="1")
    assert r.returncode == 0, r.stdout + r.stderr
    # a progress line per run; the ETA comes from the student runs timed so far
    assert "[run 1/5] pspnet50_teacher (elapsed 00:" in r.stdout
    assert "[run 2/5] pspnet18_baseline seed1 (elapsed" in r.stdout and "ETA after the first student run" in r.stdout
    assert "[run 5/5] pspnet18_kd_aux_smoothl1 seed1 (elapsed" in r.stdout and ", ETA 00:" in r.stdout
    assert (tmp_path / "runs" / "synthetic" / "figure.png").stat().st_size > 1000
    # the distilled rows of a seed see identical batches: the first fills the teacher cache, the others hit it
    logs = tmp_path / "runs" / "synthetic" / "logs"
    assert "teacher cache" in (logs / "pspnet18_kd_seed1.train.log").read_text()
    assert ": 0 hits, 2 misses" in (logs / "pspnet18_kd_seed1.train.log").read_text()
    for row in ("pspnet18_kd_aux_kl", "pspnet18_kd_aux_smoothl1"):
        assert ": 2 hits, 0 misses" in (logs / f"{row}_seed1.train.log").read_text()
    table = tmp_path / "runs" / "synthetic" / "table.md"
    text = table.read_text()
    for label in ("Teacher PSPNet-R50", "Student PSPNet-R18 baseline", "R18 + logit KD |", "+ aux KL |",
                  "+ aux SmoothL1 |"):
        assert label in text
    assert text in r.stdout  # printed as well
    with open(tmp_path / "runs" / "synthetic" / "table.csv", newline="") as f:
        records = list(csv.DictReader(f))
    assert [rec["row"] for rec in records] == ROWS and all(rec["n"] == "1" for rec in records)
    assert all(metrics(tmp_path, row).is_file() for row in ROWS)
    assert (tmp_path / "runs" / "synthetic" / "logs" / "pspnet18_kd_seed1.train.log").is_file()
    # a run that trains is evaluated in train.py's process (test.after_training): its scores in the train log
    assert "training and evaluation done in" in r.stdout and not list(logs.glob("*.test.log"))
    assert "mIoU" in (logs / "pspnet18_kd_seed1.train.log").read_text()
    mtimes = final_mtimes(tmp_path)

    # rerun: nothing is trained; a run whose metrics.json went missing is only evaluated again
    os.remove(metrics(tmp_path, "pspnet18_kd"))
    r = run_table(tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "[train]" not in r.stdout and r.stdout.count("[skip]") == 4
    assert "[test] pspnet18_kd seed1" in r.stdout
    assert table.read_text() == text and final_mtimes(tmp_path) == mtimes

    # a run that stops early (as if preempted) ends the script, naming the run and its log
    log = tmp_path / "runs" / "synthetic" / "logs" / "pspnet18_baseline_seed2.train.log"
    r = run_table(tmp_path, SEEDS="1 2", ROWS="pspnet18_baseline", STUDENT_EXTRA="train.stop_after=1")
    assert r.returncode != 0
    assert "pspnet18_baseline seed2" in r.stderr and str(log) in r.stderr
    assert log.is_file() and (run_dir(tmp_path, "pspnet18_baseline", 2) / "model" / "last.pth").is_file()
    assert not metrics(tmp_path, "pspnet18_baseline", 2).exists()
    assert all(metrics(tmp_path, row).is_file() for row in ROWS) and final_mtimes(tmp_path) == mtimes

    # the same command without the stop resumes that run, tests it, and tabulates seeds 1 and 2
    r = run_table(tmp_path, SEEDS="1 2", ROWS="pspnet18_baseline")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "[train] pspnet18_baseline seed2" in r.stdout and "(resuming)" in r.stdout
    assert metrics(tmp_path, "pspnet18_baseline", 2).is_file()
    text = table.read_text()
    assert "| Student PSPNet-R18 baseline |" in text and "missing: seed 2" in text
    with open(tmp_path / "runs" / "synthetic" / "table.csv", newline="") as f:
        records = {rec["row"]: rec for rec in csv.DictReader(f)}
    assert records["pspnet18_baseline"]["n"] == "2" and records["pspnet18_baseline"]["mIoU_std"] != ""
    assert records["pspnet18_kd"]["notes"] == "missing: seed 2"


@pytest.mark.slow
def test_drop_last_deletes_finished_runs_last_pth_and_a_finished_seeds_teacher_cache(tmp_path):
    """DROP_LAST=1 (cpu-paired's default) removes a finished run's model/last.pth, keeping final.pth and
    metrics.json, and the teacher's cached logits once every run of a seed is done (no later seed reads them); a
    run stopped early keeps its last.pth (it resumes from it) and its seed's cache; without it every file stays.
    (One sequence of three table calls checks both: each call starts several processes.)"""
    rows = dict(ROWS="pspnet18_baseline pspnet18_kd", TEACHER_CACHE="1")
    cache = tmp_path / "runs" / "synthetic" / "teacher_cache"
    r = run_table(tmp_path, **rows)
    assert r.returncode == 0, r.stdout + r.stderr
    for row in ("pspnet50_teacher", "pspnet18_baseline", "pspnet18_kd"):
        assert (run_dir(tmp_path, row) / "model" / "last.pth").is_file() and "removed" not in r.stdout
    assert any(cache.rglob("*.pt"))
    # each run's progress lines reach the console as train.py logs them, between the run's line and its last
    lines = r.stdout.splitlines()
    at = lines.index(f"[train] pspnet50_teacher -> {run_dir(tmp_path, 'pspnet50_teacher')}")
    for k in (1, 2):
        assert re.fullmatch(rf"  \[\d\d:\d\d:\d\d\] iter {k}/2 loss \d+\.\d{{4}}, [\d.]+ img/s, eta \d\d:\d\d:\d\d",
                            lines[at + k]), lines[at:at + 4]
    assert lines[at + 3].startswith("  training and evaluation done in")
    assert sum(" iter 2/2 loss " in line for line in lines) == 3  # the teacher's and both students'
    r = run_table(tmp_path, **rows, SEEDS="1 2", DROP_LAST="1", STUDENT_EXTRA="train.stop_after=1", PROGRESS="0")
    assert r.returncode != 0  # seed 2's baseline stopped early, after seed 1's finished runs were skipped (and dropped)
    assert "[train] pspnet18_baseline seed2" in r.stdout and " iter " not in r.stdout  # PROGRESS=0: no progress lines
    for row in ("pspnet50_teacher", "pspnet18_baseline", "pspnet18_kd"):
        model = run_dir(tmp_path, row) / "model"
        assert not (model / "last.pth").exists() and (model / "final.pth").is_file()
        assert metrics(tmp_path, row).is_file()
        assert f"removed {model / 'last.pth'} (DROP_LAST=1" in r.stdout
    assert (run_dir(tmp_path, "pspnet18_baseline", 2) / "model" / "last.pth").is_file()
    assert f"removed {cache} (DROP_LAST=1: every run of seed 1 is finished" in r.stdout and not cache.exists()
    r = run_table(tmp_path, **rows, SEEDS="1 2", DROP_LAST="1")  # seed 2 resumed, distilled (a new cache), dropped
    assert r.returncode == 0 and "(resuming)" in r.stdout, r.stdout + r.stderr
    assert not (run_dir(tmp_path, "pspnet18_baseline", 2) / "model" / "last.pth").exists()
    assert f"removed {cache} (DROP_LAST=1: every run of seed 2 is finished" in r.stdout and not cache.exists()
    assert metrics(tmp_path, "pspnet18_baseline", 2).is_file() and metrics(tmp_path, "pspnet18_kd", 2).is_file()
    assert resolved("cpu-paired", ["$DROP_LAST"]) == ["1"] and resolved("demo", ["$DROP_LAST"]) == ["0"]
    assert resolved("cpu-paired", ["$DROP_LAST"], DROP_LAST="0") == ["0"]  # the user's value wins


@pytest.mark.slow
def test_tiny_table_from_an_imported_teacher(tmp_path):
    """TEACHER=PATH, here torchvision's DeepLabV3-R50 imported by tools.import_weights: adopted as the table's
    teacher run, evaluated as its row, the teacher of every distilled row with teacher.layers from the file; a
    different file at the teacher's place later stops the script and is left as it is."""
    from torchvision.models.segmentation import deeplabv3_resnet50

    from tools.import_weights import import_weights

    (tmp_path / "imported").mkdir()
    src, teacher = str(tmp_path / "imported" / "torchvision.pth"), str(tmp_path / "imported" / "deeplabv3_r50.pth")
    torch.save(deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=4, aux_loss=True).state_dict(), src)
    import_weights(src, teacher, "torchvision", classes=4)
    r = run_table(tmp_path, TEACHER=os.path.relpath(teacher, tmp_path), ROWS="pspnet18_kd")  # relative to cwd
    assert r.returncode == 0, r.stdout + r.stderr
    adopted = run_dir(tmp_path, "pspnet50_teacher") / "model" / "final.pth"
    assert adopted.read_bytes() == open(teacher, "rb").read()
    assert f"teacher TEACHER={teacher}, R50" in r.stdout and "[test] pspnet50_teacher" in r.stdout
    assert json.loads(metrics(tmp_path, "pspnet50_teacher").read_text())["checkpoint"] == str(adopted)
    resolved = yaml.safe_load((run_dir(tmp_path, "pspnet18_kd") / "config.yaml").read_text())
    assert (resolved["teacher"]["layers"], resolved["teacher"]["checkpoint"]) == (50, str(adopted))
    assert "| Teacher DeepLabV3-R50" in (tmp_path / "runs" / "synthetic" / "table.md").read_text()

    other = fabricate_teacher(str(tmp_path / "imported" / "other.pth"), layers=18)
    r = run_table(tmp_path, TEACHER=other, ROWS="pspnet18_kd")
    assert r.returncode != 0 and f"{adopted} exists and is not TEACHER={other}" in r.stderr
    assert adopted.read_bytes() == open(teacher, "rb").read()


@pytest.mark.slow  # bash subprocesses
def test_bad_arguments_fail_before_any_run(tmp_path):
    r = run_table(tmp_path, SCALE="huge")
    assert r.returncode != 0 and "SCALE=huge" in r.stderr
    r = run_table(tmp_path, ROWS="pspnet50_teacher")
    assert r.returncode != 0 and "ROWS: pspnet50_teacher" in r.stderr
    r = run_table(tmp_path, EXTRA="train.itres=3")
    assert r.returncode != 0 and "train.itres" in r.stderr
    r = run_table(tmp_path, CHAIN="50 18")
    assert r.returncode != 0 and 'CHAIN="50 18": the chain is "50 34 18"' in r.stderr
    r = run_table(tmp_path, DROP_LAST="yes")
    assert r.returncode != 0 and r.stderr.startswith("error: DROP_LAST=yes: expected 1")
    assert not (tmp_path / "runs" / "synthetic").exists()  # the bad override was caught before training
    sweep = os.path.join(REPO, "scripts", "sweep.sh")
    r = subprocess.run(["bash", sweep, "config/synthetic/pspnet18_kd.yaml", "distill.temperature"],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and "usage" in r.stderr
    r = subprocess.run(["bash", sweep, "config/synthetic/pspnet18_kd.yaml", "model.pretrained", "a/b.pth"],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode != 0 and "model.pretrained=a/b.pth" in r.stderr


@pytest.mark.slow
@pytest.mark.parametrize("key, values, resolved_value", [
    pytest.param("distill.feat_loss", ["cwd", "dist", "kl_std"], lambda v: v, marks=pytest.mark.long),
    ("distill.terms", ["fitnet"], lambda v: [v]),  # a registered method (one is enough: the rows are as above)
])
def test_sweep_ablates_the_new_feature_losses(tmp_path, tiny_data, key, values, resolved_value):
    """scripts/sweep.sh over distill.feat_loss with the losses beyond the seed, and over distill.terms with the
    registered methods: one row per value, each paired with the baseline the sweep trains for the same seed,
    and each run trained with the value it names."""
    teacher = tmp_path / "teacher"
    fabricate_teacher(str(teacher / "model" / "final.pth"))
    env = {**os.environ, "SCALE": "tiny", "PYTHON": sys.executable, "NPROC": "0", "RUNS": str(tmp_path / "runs"),
           "DATA": tiny_data, "TEACHER": str(teacher / "model" / "final.pth"), "OMP_NUM_THREADS": THREADS}
    config = os.path.join(REPO, "config", "synthetic", "pspnet18_kd.yaml")
    r = subprocess.run(["bash", os.path.join(REPO, "scripts", "sweep.sh"), config, key, *values],
                       cwd=str(tmp_path), capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    root = tmp_path / "runs" / "sweep" / "pspnet18_kd"
    with open(root / f"{key}.csv", newline="") as f:
        records = list(csv.DictReader(f))
    assert [rec["row"] for rec in records] == [f"{key}={v}" for v in values]
    for rec in records:
        assert rec["n"] == "1" and rec["d_pairs"] == "1" and rec["d_mIoU"] != ""
        assert float(rec["d_mIoU"]) == pytest.approx(float(rec["mIoU"]) - baseline_miou(tmp_path), abs=1e-6)
    for v in values:
        resolved = yaml.safe_load((root / f"{key}={v}" / "seed1" / "config.yaml").read_text())
        assert resolved["distill"][key.split(".")[1]] == resolved_value(v)
        assert resolved["teacher"]["checkpoint"] == str(teacher / "model" / "final.pth")


def baseline_miou(tmp_path):
    path = tmp_path / "runs" / "sweep" / "synthetic_baseline" / "seed1" / "eval" / "ss" / "metrics.json"
    return 100 * json.loads(path.read_text())["mIoU"]


def resolved(scale, names, **env):
    """The shell values ``names`` (e.g. ``$SEEDS``, ``${EXTRA_ARGS[*]}``), one line each, as scripts/table.sh's
    preset and setup resolve them for SCALE=scale (no run)."""
    script = (f'source "{REPO}/scripts/table.sh"; segkd_synthetic_preset; segkd_setup datasets/x; '
              + "; ".join(f'echo "{name}"' for name in names))
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                       env={**os.environ, "SCALE": scale, **env})
    assert r.returncode == 0, r.stderr
    return r.stdout.split("\n")[:len(names)]


def preset(scale, **env):
    """SEEDS, ROWS and CHAIN as scripts/table.sh's preset and setup resolve them (no run)."""
    seeds, rows, chain = resolved(scale, ["$SEEDS", "$ROWS", "${CHAIN}"], **env)
    return seeds.split(), rows.split(), chain


@pytest.mark.slow  # bash subprocesses (a fraction of a second each)
def test_cpu_paired_preset_runs_every_row_over_ten_seeds():
    from util.config import load_config

    seeds, rows, chain = preset("cpu-paired")
    assert seeds == [str(k) for k in range(1, 11)] and chain == "50 34 18"
    labelled = {name: sig for name, _, sig in table_stats.PAPER_ROWS + table_stats.EXTRA_ROWS}
    chain_rows = {"pspnet34_kd", "pspnet18_kd_ta"}
    assert set(rows) == set(labelled) - {"pspnet50_teacher"} - chain_rows and len(rows) == len(set(rows))
    for row in rows + sorted(chain_rows):  # each row's config exists and is the run its table row expects
        cfg = load_config(os.path.join(REPO, "config", "synthetic_cpu", f"{row}.yaml"))
        mode = "mutual" if cfg.mutual.peers else "distill" if cfg.teacher.checkpoint else "supervised"
        feat, terms = (cfg.distill.feat_loss, tuple(cfg.distill.terms)) if mode == "distill" else (None, None)
        assert (mode, cfg.model.layers, feat, terms) == labelled[row], row
        assert cfg.train.iters == 150 and cfg.test.crop_size == 97  # the demo's schedule, one window per image
    assert rows.index("pspnet18_kd") < rows.index("pspnet18_kd_aux_cwd")  # logit KD first: it fills the cache
    seeds, rows, chain = preset("cpu-paired", CHAIN="", SEEDS="3", ROWS="pspnet18_kd_dkd")
    assert (seeds, rows, chain) == (["3"], ["pspnet18_kd_dkd"], "")  # the user's variables win, an empty CHAIN too
    assert preset("demo")[1:] == (ROWS[1:], "")


@pytest.mark.slow  # bash subprocesses
def test_method_rows_need_their_config(tmp_path):
    r = run_table(tmp_path, ROWS="pspnet18_kd_fitnet")  # SCALE=tiny reads config/synthetic: no method configs
    missing = "ROWS: pspnet18_kd_fitnet has no config config/synthetic/pspnet18_kd_fitnet.yaml"
    assert r.returncode != 0 and missing in r.stderr
    r = run_table(tmp_path, ROWS="pspnet18_kd_bogus")
    assert r.returncode != 0 and "ROWS: pspnet18_kd_bogus is not one of: pspnet18_baseline" in r.stderr
    assert not (tmp_path / "runs" / "synthetic").exists()


def same_run(run, config, *overrides):
    """scripts/table.sh's segkd_same_run RUN_DIR CONFIG OVERRIDES... in a bash of its own."""
    script = f'source "{REPO}/scripts/table.sh"; PYTHON="{sys.executable}"; segkd_same_run "$@"'
    return subprocess.run(["bash", "-c", script, "same_run", str(run), config, *overrides], capture_output=True,
                          text=True, cwd=REPO)


@pytest.mark.slow  # bash subprocesses (a fraction of a second each)
def test_a_finished_run_of_another_recipe_stops_the_table(tmp_path):
    """A rerun skips a finished run only when it was trained as the same experiment: a runs/demo of an older
    recipe, or other EXTRA, stops the table with the run dir and the key instead of entering a mixed table."""
    from util.config import load_config, save_config

    config = os.path.join(REPO, "config", "synthetic_cpu", "pspnet18_baseline.yaml")
    run = tmp_path / "pspnet18_baseline" / "seed1"
    (run / "eval" / "ss").mkdir(parents=True)
    trained = ["train.iters=60", "train.warmup_iters=8", "train.seed=1", "data.root=/somewhere/else"]
    save_config(load_config(config, trained + [f"output.dir={run}"]), str(run / "config.yaml"))
    scores = run / "eval" / "ss" / "metrics.json"
    scores.write_text('{"mIoU": 0.3}')

    ok = same_run(run, config, "train.iters=60", "train.warmup_iters=8", "train.seed=1")
    assert ok.returncode == 0, ok.stderr  # where the data is (data.root) and test.* may differ
    assert same_run(run, config, *trained, "test.crop_size=65").returncode == 0
    r = same_run(run, config, "train.seed=1")  # the configs' 150 iterations against the run's 60
    assert r.returncode != 0 and r.stderr.strip().count("\n") == 0, r.stderr
    assert f"error: {run}: a finished run of another experiment (train.iters: 60 there, 150 now" in r.stderr
    assert "+1 more: train.warmup_iters" in r.stderr and "remove it or set RUNS" in r.stderr
    r = same_run(run, config, *trained[:2], "train.seed=2")
    assert r.returncode != 0 and "train.seed: 1 there, 2 now" in r.stderr
    r = same_run(run, config, *trained[:2], "train.seed=1", "train.amp=true")  # the demo on a bfloat16 CPU
    assert r.returncode != 0 and "train.amp: False there, True now" in r.stderr and "DEMO_BF16=0 or 1" in r.stderr
    assert scores.read_text() == '{"mIoU": 0.3}'  # nothing written
    (run / "config.yaml").unlink()  # an adopted TEACHER has no config.yaml: nothing to compare
    assert same_run(run, config, "train.seed=5").returncode == 0


@pytest.mark.slow  # bash subprocesses
def test_demo_preset_shortens_the_schedule_and_the_user_wins():
    """SCALE=demo trains the teacher 250 and the students 60 iterations (the configs, which the instrument runs
    as written, say 500 and 150) and evaluates 8 images at a time; a user's TEACHER_EXTRA / STUDENT_EXTRA /
    TEST_EXTRA come after the preset's, so they win."""
    def args(scale, **env):
        return resolved(scale, ["${TEACHER_ARGS[*]}", "${STUDENT_ARGS[*]}", "${TEST_ARGS[*]}"], **env)

    teacher, student, test = args("demo")
    assert teacher.split() == ["train.iters=250", "train.warmup_iters=25"]
    assert student.split() == ["train.iters=60", "train.warmup_iters=8"]
    assert test.split() == ["test.batch_size=8"]
    teacher, student, test = args("demo", TEACHER_EXTRA="train.iters=500", STUDENT_EXTRA="train.iters=150",
                                  TEST_EXTRA="test.batch_size=1")
    assert teacher.split()[-1] == "train.iters=500" and student.split()[-1] == "train.iters=150"
    assert test.split()[-1] == "test.batch_size=1"
    assert args("cpu-paired") == ["", "", ""]  # the instrument: the configs as written, one image at a time


@pytest.mark.slow  # bash subprocesses
def test_demo_trains_in_bfloat16_where_the_cpu_has_bfloat16_units():
    """DEMO_BF16=auto (the default) adds bfloat16 autocast to the demo's runs exactly when /proc/cpuinfo names
    avx512_bf16 or amx_bf16; 1 and 0 force it; other presets never get it; a bad value is a one-line error."""
    from util.config import load_config

    def extra(scale, **env):
        return resolved(scale, ["${EXTRA_ARGS[*]}"], **env)[0].split()

    from util.machine import cpu_flags

    amp = ["train.amp=true", "train.amp_dtype=bfloat16"]
    has_units = bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})  # what metrics.json's trained_on records
    assert (extra("demo")[-2:] == amp) is has_units
    assert extra("demo", DEMO_BF16="1")[-2:] == amp and not set(amp) & set(extra("demo", DEMO_BF16="0"))
    cfg = load_config("config/synthetic_cpu/pspnet18_kd.yaml", extra("demo", DEMO_BF16="1"))
    assert cfg.train.amp is True and cfg.train.amp_dtype == "bfloat16"
    for scale in ("cpu-paired", "cpu-long", "full"):
        assert not set(amp) & set(extra(scale, DEMO_BF16="1")), scale
    script = f'source "{REPO}/scripts/table.sh"; segkd_synthetic_preset'
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                       env={**os.environ, "SCALE": "demo", "DEMO_BF16": "yes"})
    assert r.returncode != 0 and r.stderr.count("\n") == 1 and r.stderr.startswith("error: DEMO_BF16=yes: expected")


@pytest.mark.slow  # bash and a failing generator process
@pytest.mark.parametrize("env, says", [
    ({"DEMO_BF16": "1"}, "[demo] training under bfloat16 autocast (DEMO_BF16=1;"),
    ({"DEMO_BF16": "0"}, "[demo] training in float32 (DEMO_BF16=0)"),
    ({"DEMO_BF16": "1", "EXTRA": "train.amp=false"}, "[demo] training arithmetic as EXTRA")])
def test_demo_says_which_arithmetic_it_trains_in(tmp_path, env, says):
    """The demo's first line names its training arithmetic (a user's train.amp in EXTRA wins over DEMO_BF16);
    stopped here by a generator that refuses its arguments, before any run."""
    r = subprocess.run(["bash", os.path.join(REPO, "scripts", "synthetic", "table.sh")], capture_output=True,
                       text=True, env={**os.environ, "SCALE": "demo", "PYTHON": sys.executable,
                                       "DATA": str(tmp_path / "data"), "RUNS": str(tmp_path / "runs"),
                                       "GEN_ARGS": "--no-such-flag", **env})
    assert r.returncode != 0 and "generating" in r.stdout and not (tmp_path / "runs").exists()
    assert r.stdout.splitlines()[0].startswith(says), r.stdout


@pytest.mark.slow  # bash subprocesses
def test_presets_of_committed_tables_keep_float32_batches():
    """uint8 batches are the default since 2026-12-07; the presets that continue committed tables (demo, cpu-paired,
    cpu-long), trained in float32, pass train.uint8_batches=false before the user's EXTRA (which wins, as the uint8
    check of docs/BENCHMARKS.md ran), and the others leave the default alone."""
    from util.config import load_config

    def extra(scale, **env):
        return resolved(scale, ["${EXTRA_ARGS[*]}"], **env)[0].split()

    assert load_config(None).train.uint8_batches is True
    for scale in ("demo", "cpu-paired", "cpu-long"):
        args = extra(scale)
        assert "train.uint8_batches=false" in args, scale
        assert load_config("config/synthetic_cpu/pspnet18_kd.yaml", args).train.uint8_batches is False
    args = extra("cpu-paired", EXTRA="train.uint8_batches=true")
    assert load_config("config/synthetic_cpu/pspnet18_kd.yaml", args).train.uint8_batches is True
    assert not any("uint8" in a for a in extra("full"))


@pytest.mark.slow  # bash subprocesses
def test_python_defaults_to_the_activated_environment_else_the_repositorys_venv(tmp_path):
    """After `make venv` the table scripts run without activating it; an activated environment (or PYTHON) wins."""
    root = tmp_path / "repo"
    (root / "scripts").mkdir(parents=True)
    shutil.copy(os.path.join(REPO, "scripts", "table.sh"), root / "scripts" / "table.sh")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "VIRTUAL_ENV", "CONDA_PREFIX")}

    def python(**extra):
        r = subprocess.run(["bash", "-c", f'source "{root}/scripts/table.sh"; segkd_setup datasets/x; echo "$PYTHON"'],
                           capture_output=True, text=True, env={**env, **extra})
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()

    assert python() == "python"  # no .venv
    venv = root / ".venv" / "bin" / "python"
    venv.parent.mkdir(parents=True)
    venv.write_text('#!/bin/sh\necho "ran $0 $*"\n')
    venv.chmod(0o755)
    assert python() == str(venv)
    assert python(VIRTUAL_ENV="/opt/env") == "python" and python(CONDA_PREFIX="/opt/conda") == "python"
    assert python(PYTHON="/usr/bin/python3") == "/usr/bin/python3"
    # voc2012/prepare.sh picks it with the same function (scripts/table.sh's segkd_python)
    (root / "scripts" / "voc2012").mkdir()
    shutil.copy(os.path.join(REPO, "scripts", "voc2012", "prepare.sh"), root / "scripts" / "voc2012" / "prepare.sh")
    r = subprocess.run(["bash", str(root / "scripts" / "voc2012" / "prepare.sh"), "--help"], capture_output=True,
                       text=True, env=env)
    assert r.returncode == 0 and r.stdout.splitlines()[-1] == f"ran {venv} -m tools.prepare_voc --help", r.stderr


@pytest.mark.slow  # bash and python subprocesses
@pytest.mark.parametrize("signum, status, group", [(15, 143, False), (2, 130, False), (2, 130, True),
                                                   (15, 143, True)])
def test_a_signal_to_the_script_reaches_the_run_which_finishes_its_checkpoint(tmp_path, signum, status, group):
    """`kill PID` of a table script, or Ctrl-C / a scheduler's stop to its whole process group (``group``): the
    running step gets SIGTERM, the script (under the drivers' `set -euo pipefail`) waits for it to write what it
    writes on a stop, then exits with the signal's status and says how to resume; nothing runs after."""
    child = tmp_path / "child.py"
    child.write_text(
        "import pathlib, signal, sys, time\n"
        f"out = pathlib.Path({str(tmp_path)!r})\n"
        "def stop(signum, frame):\n"
        "    time.sleep(0.5)  # a checkpoint being written\n"
        "    (out / 'last.pth').write_text(str(signum))\n"
        "    sys.exit(143)\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        "(out / 'ready').write_text('')\n"
        "time.sleep(60)\n")
    script = (f'set -euo pipefail; source "{REPO}/scripts/table.sh"; NPROC=0; PYTHON="{sys.executable}"; '
              f'segkd_step run1 training "{tmp_path}/run1.log" "{child}"; touch "{tmp_path}/next"')
    # SIGINT as at a terminal: a shell started in the background (nohup, CI) inherits SIGINT ignored, and bash cannot
    # trap a signal ignored on entry, so the test gives the script the default disposition a terminal's shell has
    proc = subprocess.Popen(["bash", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), start_new_session=True)
    for _ in range(200):
        if (tmp_path / "ready").exists():
            break
        time.sleep(0.05)
    if group:  # bash and the step both get it, as from a terminal or a scheduler
        os.killpg(proc.pid, signum)
    else:
        proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == status, err
    assert (tmp_path / "last.pth").read_text() == "15"  # SIGTERM reached the step, which finished its write
    assert not (tmp_path / "next").exists()  # nothing after the stopped step
    assert err.startswith(f"stopped by {'SIGTERM' if signum == 15 else 'SIGINT'} during the training of run1")
    assert "rerun the same command to resume from run1" in err


@pytest.mark.slow  # bash and python subprocesses
def test_a_step_killed_by_the_groups_signal_still_ends_the_script_with_its_line(tmp_path):
    """A step without a handler dies of the process group's SIGTERM at once, before the script's trap passes the
    signal on: the trap's kill then finds no process, which under `set -e` must not end the script silently."""
    child = tmp_path / "child.py"
    child.write_text(f"import pathlib, time\npathlib.Path({str(tmp_path)!r}, 'ready').write_text('')\ntime.sleep(60)\n")
    script = (f'set -euo pipefail; source "{REPO}/scripts/table.sh"; NPROC=0; PYTHON="{sys.executable}"; '
              f'segkd_step run1 training "{tmp_path}/run1.log" "{child}"')
    for attempt in range(3):  # the race is the trap's against the child's exit: give it a few chances
        (tmp_path / "ready").unlink(missing_ok=True)
        proc = subprocess.Popen(["bash", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        for _ in range(200):
            if (tmp_path / "ready").exists():
                break
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 143, (attempt, err)
        assert err.startswith("stopped by SIGTERM during the training of run1"), (attempt, err)
