"""Mutual learning and teacher-assistant chains end to end (slow tier): a stopped-and-resumed mutual run ends bitwise
where the uninterrupted one ends, every peer and the optimizer included, and its peers' checkpoints load in test.py
and as a teacher; two gloo processes keep both peers identical; CHAIN="50 34 18" through the table script."""

import csv
import os
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

from tests.conftest import REPO, TINY_CLASSES, tiny_overrides
from tests.test_bad_inputs import run_in_process

pytestmark = pytest.mark.slow
DML = "config/synthetic/dml_pspnet18_pspnet18.yaml"
ITERS = 4


def load(path, key):
    return torch.load(path, map_location="cpu", weights_only=True)[key]


def same(a, b):
    """The tensors of two state dicts (nested: the optimizer's) that differ, by key."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        return [k for k in a if same(a[k], b[k])]
    if isinstance(a, (list, tuple)):
        return [i for i, (x, y) in enumerate(zip(a, b)) if same(x, y)] or len(a) != len(b)
    return not torch.equal(a, b) if isinstance(a, torch.Tensor) else a != b


def test_mutual_resume_is_bitwise_and_the_peers_load_in_test_py_and_as_teachers(tiny_data, tmp_path):
    args = ["--config", DML, "train.iters=4", "train.checkpoint_every=2"]
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    r = run_in_process([*args, *tiny_overrides(tiny_data, one)])
    assert r.returncode == 0, r.stderr
    assert "mutual PSPNet-R18+R18: 4 iterations" in r.stdout and " dml " in r.stdout and "peer1/dml" in r.stdout
    r = run_in_process([*args, *tiny_overrides(tiny_data, two), "train.stop_after=2"])
    assert r.returncode == 3 and not os.path.exists(os.path.join(two, "peer0"))  # no final checkpoint when stopped
    r = run_in_process([*args, *tiny_overrides(tiny_data, two), "train.resume=auto"])
    assert r.returncode == 0 and "at iteration 2/4" in r.stdout, r.stderr
    for name in ("model/last.pth", "model/final.pth", "peer0/model/final.pth", "peer1/model/final.pth"):
        for key in ("model", *(("optimizer",) if name == "model/last.pth" else ())):  # final.pth: weights only
            assert same(load(os.path.join(one, name), key), load(os.path.join(two, name), key)) == [], (name, key)
    last = torch.load(os.path.join(two, "model", "last.pth"), weights_only=True)
    assert last["mode"] == "mutual" and last["peers"] == [18, 18] and len(last["optimizer"]["param_groups"]) == 4
    assert {k.split(".")[0] for k in last["model"]} == {"0", "1"}
    assert same(load(os.path.join(two, "peer1/model/final.pth"), "model"),
                {k[2:]: v for k, v in last["model"].items() if k.startswith("1.")}) == []

    import test as test_py  # test.py's own loader and default checkpoint: peer 0
    code = test_py.main(["--config", DML, *tiny_overrides(tiny_data, two), "test.workers=0",
                         "test.save_predictions=false"])
    metrics = yaml.safe_load(open(os.path.join(two, "eval", "ss", "metrics.json")))
    assert code == 0 and metrics["checkpoint_relative"] == "../../peer0/model/final.pth" and metrics["mode"] == "mutual"
    kd = ["--config", "config/synthetic/pspnet18_kd.yaml", *tiny_overrides(tiny_data, str(tmp_path / "kd")),
          "train.iters=1", "teacher.layers=18", f"teacher.checkpoint={two}/peer1/model/final.pth"]
    r = run_in_process(kd)
    assert r.returncode == 0 and " kd " in r.stdout, r.stderr
    r = run_in_process([*kd[:-1], f"teacher.checkpoint={two}/model/final.pth", f"output.dir={tmp_path}/kd2"])
    assert r.returncode == 2 and "is a whole mutual-learning run" in r.stderr and "\n" not in r.stderr.strip()


@pytest.mark.long
@pytest.mark.skipif(not os.path.exists(os.path.join(os.path.dirname(sys.executable), "torchrun"))
                    and shutil.which("torchrun") is None, reason="torchrun not installed")
def test_torchrun_keeps_every_peer_identical_across_processes(tiny_data, tmp_path):
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    torchrun = torchrun if os.path.exists(torchrun) else shutil.which("torchrun")
    run_dir = tmp_path / "ddp"
    cmd = [torchrun, "--standalone", "--nproc_per_node=2", "train.py", "--config", DML,
           *tiny_overrides(tiny_data, str(run_dir)), "train.batch_size=4", "train.iters=2"]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "every peer's (2 peers) parameters identical on all 2 processes" in r.stdout
    assert (run_dir / "train.log").read_text().count("iter 2/2") == 1  # rank 0 alone logs
    assert sorted(os.listdir(run_dir / "peer1" / "model")) == ["final.pth"]


@pytest.mark.long
def test_chain_through_the_table_script(tiny_data, tmp_path):
    """SCALE=tiny ROWS=pspnet18_kd CHAIN="50 34 18": the teacher, the direct R50 -> R18 student, the R34 assistant
    and the R18 student distilled from it, in that order; the table has the chain's rows."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "SCALE": "tiny", "PYTHON": sys.executable, "NPROC": "0",
           "RUNS": str(tmp_path / "runs"), "DATA": tiny_data, "OMP_NUM_THREADS": "1", "ROWS": "pspnet18_kd",
           "CHAIN": "50 34 18"}
    r = subprocess.run(["bash", os.path.join(REPO, "scripts", "synthetic", "table.sh")], cwd=str(tmp_path),
                       capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    root = tmp_path / "runs" / "synthetic"
    trained = [line.split()[1] for line in r.stdout.splitlines() if line.startswith("[train]")]
    assert trained == ["pspnet50_teacher", "pspnet18_kd", "pspnet34_kd", "pspnet18_kd_ta"]
    assert "[run 4/4] pspnet18_kd_ta seed1" in r.stdout
    dirs = [root / "pspnet50_teacher", root / "pspnet34_kd" / "seed1", root / "pspnet18_kd_ta" / "seed1"]
    started = [os.path.getmtime(d / "config.yaml") for d in dirs]
    assert started == sorted(started)  # three run directories, in order
    assistant = yaml.safe_load((dirs[1] / "config.yaml").read_text())
    assert assistant["model"]["layers"] == 34 and assistant["teacher"]["checkpoint"] == str(
        dirs[0] / "model" / "final.pth")
    student = yaml.safe_load((dirs[2] / "config.yaml").read_text())
    assert student["teacher"] == {**student["teacher"], "layers": 34, "assistant": True,
                                  "checkpoint": str(dirs[1] / "model" / "final.pth")}
    assert load(dirs[2] / "model" / "final.pth", "mode") == "distill"
    with open(root / "table.csv", newline="") as f:
        records = {rec["row"]: rec for rec in csv.DictReader(f)}
    assert {"pspnet50_teacher", "pspnet18_kd", "pspnet34_kd", "pspnet18_kd_ta"} <= set(records)
    assert "Δ mIoU vs R18 + logit KD:" in records["pspnet18_kd_ta"]["notes"]
    text = (root / "table.md").read_text()
    assert "| Assistant PSPNet-R34 + logit KD (R50 -> R34) |" in text
    assert "| R18 + logit KD from the R34 assistant (R50 -> R34 -> R18) |" in text
    assert TINY_CLASSES == 4
