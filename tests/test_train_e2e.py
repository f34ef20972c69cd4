"""End to end on a generated dataset: teacher -> distilled student -> test.py; resume; torchrun with 2 processes."""

import json
import os
import shutil
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from model.pspnet import build_pspnet
from tests.conftest import REPO, TINY_CLASSES, run_cli, tiny_overrides

pytestmark = pytest.mark.slow
TEACHER_CFG = "config/synthetic/pspnet50_teacher.yaml"
KD_CFG = "config/synthetic/pspnet18_kd_aux_kl.yaml"


@pytest.fixture(scope="module")
def teacher(tiny_data, tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("teacher") / "t")
    r = run_cli("train.py", "--config", TEACHER_CFG, *tiny_overrides(tiny_data, run_dir), "train.iters=2")
    assert r.returncode == 0, r.stderr
    return os.path.join(run_dir, "model", "final.pth")


def recompute_miou(root, list_file, gray_dir, classes):
    """Independent of util.metrics: numpy over the saved gray PNGs and the label PNGs."""
    inter, union = np.zeros(classes), np.zeros(classes)
    gt_count = np.zeros(classes)
    with open(os.path.join(root, list_file)) as f:
        for line in f.read().split():
            if not line.startswith("SegmentationClassAug"):
                continue
            label = np.array(Image.open(os.path.join(root, line)))
            name = os.path.splitext(os.path.basename(line))[0]
            pred = np.array(Image.open(os.path.join(gray_dir, name + ".png")))
            valid = label != 255
            for c in range(classes):
                p, g = (pred == c) & valid, (label == c) & valid
                inter[c] += (p & g).sum()
                union[c] += (p | g).sum()
                gt_count[c] += g.sum()
    present = gt_count > 0
    return float((inter[present] / union[present]).mean())


def test_teacher_distill_test_end_to_end(tiny_data, teacher, tmp_path):
    run_dir = str(tmp_path / "kd")
    r = run_cli("train.py", "--config", KD_CFG, *tiny_overrides(tiny_data, run_dir), "train.iters=3",
                f"teacher.checkpoint={teacher}")
    assert r.returncode == 0, r.stderr
    assert "kd " in r.stdout and "feat " in r.stdout and "img/s" in r.stdout and "eta" in r.stdout
    for name in ("config.yaml", "git_commit.txt", "train.log", "metrics.jsonl", "model/last.pth", "model/final.pth"):
        assert os.path.exists(os.path.join(run_dir, name)), name
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(run_dir, "tb")))
    rows = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    assert {"loss", "ce", "aux", "kd", "feat", "lr", "images_per_s"} <= set(rows[-1])
    ckpt = torch.load(os.path.join(run_dir, "model", "final.pth"), weights_only=True)
    assert ckpt["mode"] == "distill" and ckpt["layers"] == 18 and ckpt["iteration"] == 3
    # exactly the student's own weights: no teacher tensors, no wrapper prefixes, nothing missing
    assert set(ckpt["model"]) == set(build_pspnet(18, TINY_CLASSES).state_dict())
    assert {"epoch", "config"} <= set(ckpt) and not {"optimizer", "rng", "scheduler"} & set(ckpt)  # the network
    last = torch.load(os.path.join(run_dir, "model", "last.pth"), weights_only=True)
    assert {"optimizer", "rng", "epoch", "config", "scheduler"} <= set(last) and last["iteration"] == 3

    r = run_cli("test.py", "--config", KD_CFG, *tiny_overrides(tiny_data, run_dir), "test.flip=true")
    assert r.returncode == 0, r.stderr
    out = os.path.join(run_dir, "eval", "ss_flip")
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert metrics["protocol"]["flip"] is True and metrics["images"] == 4
    assert len(os.listdir(os.path.join(out, "gray"))) == 4 and len(os.listdir(os.path.join(out, "color"))) == 4
    assert Image.open(os.path.join(out, "color", os.listdir(os.path.join(out, "color"))[0])).mode == "P"
    expected = recompute_miou(tiny_data, "list/val.txt", os.path.join(out, "gray"), TINY_CLASSES)
    assert metrics["mIoU"] == pytest.approx(expected, abs=1e-9)
    assert "mIoU" in r.stdout and "class_0" in r.stdout

    # nothing is silently overwritten: a second test.py into the same folder and a new run into run_dir fail
    r = run_cli("test.py", "--config", KD_CFG, *tiny_overrides(tiny_data, run_dir), "test.flip=true")
    assert r.returncode == 2 and "metrics.json: already exists" in r.stderr
    r = run_cli("train.py", "--config", KD_CFG, *tiny_overrides(tiny_data, run_dir), f"teacher.checkpoint={teacher}")
    assert r.returncode == 2 and "already holds a run" in r.stderr and "Traceback" not in r.stderr


def weights(path):
    return torch.load(path, weights_only=True)["model"]


def test_resume_gives_identical_weights(tiny_data, tmp_path):
    base = ["--config", "config/synthetic/pspnet18_baseline.yaml", "train.epochs=2", "train.workers=1"]
    one = str(tmp_path / "one")
    r = run_cli("train.py", *base, *tiny_overrides(tiny_data, one), "train.workers=1")
    assert r.returncode == 0, r.stderr
    two = str(tmp_path / "two")
    r = run_cli("train.py", *base, *tiny_overrides(tiny_data, two), "train.workers=1", "train.stop_after=9")
    assert r.returncode == 3 and "train.resume=auto" in r.stdout  # stopped mid-epoch 2 (6 iterations an epoch)
    r = run_cli("train.py", *base, *tiny_overrides(tiny_data, two), "train.workers=1", "train.resume=auto")
    assert r.returncode == 0, r.stderr
    a, b = weights(os.path.join(one, "model", "final.pth")), weights(os.path.join(two, "model", "final.pth"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.long
@pytest.mark.skipif(shutil.which("torchrun") is None and not os.path.exists(
    os.path.join(os.path.dirname(sys.executable), "torchrun")), reason="torchrun not installed")
def test_torchrun_two_processes(tiny_data, teacher, tmp_path):
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    run_dir = str(tmp_path / "ddp")
    cmd = [torchrun, "--standalone", "--nproc_per_node=2", "train.py", "--config", KD_CFG,
           *tiny_overrides(tiny_data, run_dir), "train.batch_size=4", "train.iters=2", f"teacher.checkpoint={teacher}",
           "distill.terms=[fitnet]"]  # a connector: its gradients are averaged by the trainer, not by DDP
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "student and distillation connector parameters identical on all 2 processes" in r.stdout
    log = open(os.path.join(run_dir, "train.log")).read()
    assert log.count("iter 2/2") == 1  # rank 0 alone logs
    assert len(os.listdir(os.path.join(run_dir, "tb"))) == 1
    assert sorted(os.listdir(os.path.join(run_dir, "model"))) == ["final.pth", "last.pth"]

    outs = {}
    for n in (1, 2):
        out = str(tmp_path / f"eval{n}")
        test_args = ["test.py", "--config", KD_CFG, *tiny_overrides(tiny_data, run_dir), f"test.out_dir={out}"]
        cmd = [torchrun, "--standalone", f"--nproc_per_node={n}", *test_args]
        r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        outs[n] = json.load(open(os.path.join(out, "metrics.json")))
        assert len(os.listdir(os.path.join(out, "gray"))) == 4  # every image once, no duplicates
    for key in ("mIoU", "mAcc", "allAcc"):
        assert outs[1][key] == pytest.approx(outs[2][key], abs=1e-12)


@pytest.mark.slow
def test_val_every_validates_at_epoch_ends_with_the_test_protocol(tiny_data, tmp_path):
    """train.val_every=1 over 2 epochs of 6 iterations: val rows at iterations 6 and 12, and the last one scores
    the final weights exactly as test.py does."""
    cfg = "config/synthetic/pspnet18_baseline.yaml"
    run_dir = str(tmp_path / "val")
    r = run_cli("train.py", "--config", cfg, *tiny_overrides(tiny_data, run_dir), "train.epochs=2", "train.val_every=1")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    val = [row for row in rows if row["kind"] == "val"]
    assert [row["iteration"] for row in val] == [6, 12]
    r = run_cli("test.py", "--config", cfg, *tiny_overrides(tiny_data, run_dir), "test.save_predictions=false")
    assert r.returncode == 0, r.stderr
    metrics = json.load(open(os.path.join(run_dir, "eval", "ss", "metrics.json")))
    for key in ("mIoU", "mAcc", "allAcc"):
        assert val[-1][key] == pytest.approx(metrics[key], abs=1e-12)
