"""scripts/collect_results.sh: a table's metrics.json files, and only those, copied with their layout; what the
destination already holds is never overwritten; the copy rebuilds the same table."""

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.test_make_table import PAPER, run_main, write_run

SCRIPT = os.path.join(REPO, "scripts", "collect_results.sh")


def collect(src, dest, **env):
    return subprocess.run(["bash", SCRIPT, str(src), str(dest)], capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable, **env})  # the script compares configs with segkd


def make_runs(root, seeds_of=None):
    for row, (mode, layers, feat, seeds) in PAPER.items():
        for seed, scores in seeds.items():
            if seeds_of is not None and seed not in seeds_of and row != "pspnet50_teacher":
                continue
            run_dir = root / row if row == "pspnet50_teacher" else root / row / f"seed{seed}"
            write_run(str(run_dir), scores, seed, mode, layers, feat, iteration=1200 if layers == 50 else 300)
            (run_dir / "model").mkdir(exist_ok=True)
            (run_dir / "model" / "final.pth").write_bytes(b"not copied")
    (root / "logs").mkdir(exist_ok=True)
    (root / "logs" / "pspnet18_kd_seed1.train.log").write_text("not copied")


def unlinked(markdown):
    """The table without its links' targets (each table links the config files of its own folder)."""
    return re.sub(r"\]\([^)]*\)", "]", markdown)


def files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


@pytest.mark.slow  # bash
def test_collect_copies_metrics_only_and_rebuilds_the_table(tmp_path, capsys):
    src, dest = tmp_path / "runs" / "synthetic", tmp_path / "docs" / "results" / "t"
    make_runs(src, seeds_of={1, 2})
    r = collect(src, dest)
    assert r.returncode == 0, r.stderr
    copied = files(dest)
    assert copied == sorted(p for p in files(src) if p.endswith(("metrics.json", "config.yaml")))
    assert "pspnet50_teacher/eval/ss/metrics.json" in copied and f"{dest}: {len(copied)} new" in r.stdout
    _, from_runs, _ = run_main([src], capsys)
    _, from_copy, _ = run_main([dest], capsys)  # the same command on the copy
    assert "[resolved](" in from_copy and unlinked(from_copy) == unlinked(from_runs)  # links: to each one's files
    make_runs(src)  # a later session adds seeds 3 and 4; SEEDS takes seed 3 only, and only new files are copied
    r = collect(src, dest, SEEDS="1 2 3")
    added = [p for p in files(dest) if p not in copied]
    assert r.returncode == 0 and f"{len(added)} new files, {len(copied)} already" in r.stdout
    assert added and all("/seed3/" in p for p in added)


@pytest.mark.slow  # bash
def test_collect_never_overwrites(tmp_path):
    src, dest = tmp_path / "runs", tmp_path / "dest"
    make_runs(src, seeds_of={1})
    assert collect(src, dest).returncode == 0
    kept = dest / "pspnet18_kd" / "seed1" / "eval" / "ss" / "metrics.json"
    kept.write_text('{"mIoU": 0.1}')
    make_runs(src)
    r = collect(src, dest)
    assert r.returncode == 1 and f"{kept} exists and differs" in r.stderr and "nothing was copied" in r.stderr
    assert kept.read_text() == '{"mIoU": 0.1}' and not (dest / "pspnet18_kd" / "seed2").exists()
    assert collect(src, tmp_path / "x", EVAL="ms").returncode == 1  # no eval/ms anywhere: an error, no folder
    assert not (tmp_path / "x").exists()
    assert collect(src, tmp_path / "y").returncode == 0 and collect(tmp_path / "none", dest).returncode == 1


@pytest.mark.slow  # bash
def test_a_retrained_teacher_with_the_same_scores_is_kept_not_refused(tmp_path):
    """A new session on the same kind of machine retrains the teacher bit for bit into other folders: its
    metrics.json differs from the committed one only in absolute paths, so the committed files stay and the new
    seeds are copied; a teacher with other scores is still an error."""
    import json

    def teacher_metrics(root):
        return root / "pspnet50_teacher" / "eval" / "ss" / "metrics.json"

    def retrained(root, seeds, miou_shift=0.0, **generation):
        make_runs(root, seeds_of=seeds)
        path = teacher_metrics(root)
        m = json.loads(path.read_text())
        m.update(trained_on={"cpu": "x", "vendor": "y", **generation}, mIoU=m["mIoU"] + miou_shift)
        m["config"]["data"] = {"root": str(root / "data")}  # an absolute path of this session's
        path.write_text(json.dumps(m))
        (root / "pspnet50_teacher" / "config.yaml").write_text(f"data:\n  root: {root}/data\n")

    dest = tmp_path / "dest"
    retrained(tmp_path / "a", {1})
    assert collect(tmp_path / "a", dest).returncode == 0
    committed = teacher_metrics(dest).read_text(), (dest / "pspnet50_teacher" / "config.yaml").read_text()
    retrained(tmp_path / "b", {2, 3, 4})  # the next session's seeds
    r = collect(tmp_path / "b", dest)
    assert r.returncode == 0, r.stderr
    assert f"kept {dest}/pspnet50_teacher: the same scores, machine and config" in r.stdout
    assert (teacher_metrics(dest).read_text(), (dest / "pspnet50_teacher" / "config.yaml").read_text()) == committed
    assert (dest / "pspnet18_kd" / "seed2" / "eval" / "ss" / "metrics.json").is_file()
    retrained(tmp_path / "g", {6}, family="26", model="2")  # a newer CPU generation, recorded since: the same label
    assert collect(tmp_path / "g", dest).returncode == 0 and teacher_metrics(dest).read_text() == committed[0]
    retrained(tmp_path / "c", {5}, miou_shift=0.01)  # another teacher: refused, as any differing file
    r = collect(tmp_path / "c", dest)
    assert r.returncode == 1 and "pspnet50_teacher/eval/ss/metrics.json exists and differs" in r.stderr
    for threads, code in ((-1, 0), (0, 1)):  # a key added since: kept at what the older code did, else refused
        retrained(tmp_path / f"k{threads}", {7})
        path = teacher_metrics(tmp_path / f"k{threads}")
        m = json.loads(path.read_text())
        m["config"]["data"]["opencv_threads"] = threads
        path.write_text(json.dumps(m))
        assert collect(tmp_path / f"k{threads}", dest).returncode == code, threads
