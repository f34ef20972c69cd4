"""The CIRKD rows with MobileNetV3 students: config/cityscapes/{deeplabv3,pspnet}_mbv3s_*.yaml and
config/voc2012/deeplabv3_mbv3l_*.yaml resolve, build CIRKD's network (no aux head, aux weight 0), cite CIRKD's recipe
and the README's numbers, and distil from a DeepLabV3-R101 teacher; the table names their rows by the student's
network and pairs them with their baseline; the table scripts choose the student by STUDENT."""

import csv
import glob
import json
import os
import subprocess

import pytest
import torch

from model.build import build_model, build_network
from model.distiller import Distiller
from tests.conftest import REPO
from util.config import check_training, load_config

# dataset -> (prefix, backbone, arch, CIRKD's README: baseline, CIRKDV2; its train script's batch, lr)
STUDENTS = {
    "deeplabv3_mbv3s": ("cityscapes", "mobilenetv3_small_cirkd", "deeplabv3", "65.05", "67.62", 8, 0.01),
    "pspnet_mbv3s": ("cityscapes", "mobilenetv3_small_cirkd", "pspnet", "62.78", "65.42", 8, 0.01),
    "deeplabv3_mbv3l": ("voc2012", "mobilenetv3_large_cirkd", "deeplabv3", "69.33", "71.90", 16, 0.02),
}
ROWS = ("baseline", "kd", "kd_fitnet", "kd_skd", "kd_ifvd", "kd_cirkd")
CLASSES = {"cityscapes": 19, "voc2012": 21}


def test_every_student_has_its_rows_and_nothing_else():
    for prefix, (dataset, *_) in STUDENTS.items():
        found = sorted(os.path.basename(p)[:-5] for p in glob.glob(os.path.join(REPO, "config", dataset,
                                                                                 f"{prefix}_*.yaml")))
        assert found == sorted(f"{prefix}_{row}" for row in ROWS)


@pytest.fixture(scope="module")
def teachers():
    """A random DeepLabV3-R101 per class count (segkd's teacher config's architecture), for the terms' channels."""
    torch.manual_seed(0)
    return {ds: build_network({"arch": "deeplabv3", "dilation": "contract"}, 101, k).eval()
            for ds, k in CLASSES.items()}


@pytest.mark.parametrize("prefix", STUDENTS)
@pytest.mark.parametrize("row", ROWS)
def test_config_resolves_builds_and_cites_its_recipe(prefix, row, teachers, tmp_path):
    dataset, backbone, arch, base, v2, batch, lr = STUDENTS[prefix]
    path = os.path.join(REPO, "config", dataset, f"{prefix}_{row}.yaml")
    cfg = load_config(path, ["model.pretrained=false", f"output.dir={tmp_path / 'run'}", f"data.root={tmp_path}"])
    assert (cfg.model.backbone, cfg.model.arch, cfg.data.dataset, cfg.data.classes) == (
        backbone, arch, dataset, CLASSES[dataset])
    assert (cfg.train.batch_size, cfg.train.base_lr, cfg.train.iters, cfg.train.aux_weight) == (batch, lr, 80000, 0.0)
    assert cfg.output.dir == str(tmp_path / "run")
    assert cfg.test.mode == {"cityscapes": "whole", "voc2012": "slide"}[dataset]  # each dataset's protocol
    check_training(cfg, 1, False, "cpu")
    student = build_model(cfg)
    assert student.aux_head is None and type(student).__name__ == {"deeplabv3": "DeepLabV3", "pspnet": "PSPNet"}[arch]
    head = " ".join(line[2:] for line in open(path).read().splitlines() if line.startswith("# "))  # the comment
    script = f"{'deeplabv3' if arch == 'deeplabv3' else 'pspnet'}_{backbone.removesuffix('_cirkd')}.sh"
    assert f"scripts/train_baseline/{'cityscapes' if dataset == 'cityscapes' else 'pascal_voc'}/{script}" in head
    assert "not measured here" in head and (base in head) and (row == "baseline" or v2 in head)
    teacher = teachers[dataset] if row != "baseline" else None
    assert (cfg.teacher.checkpoint is None) == (teacher is None)
    distiller = Distiller.from_config(student, teacher, cfg)
    assert list(distiller.methods) == list(cfg.distill.terms)


@pytest.mark.parametrize("prefix", ["pspnet_mbv3s", "deeplabv3_mbv3l"])
def test_a_distilled_config_steps(prefix, teachers, tmp_path):
    dataset = STUDENTS[prefix][0]
    cfg = load_config(os.path.join(REPO, "config", dataset, f"{prefix}_kd_fitnet.yaml"), ["model.pretrained=false"])
    torch.manual_seed(0)
    distiller = Distiller.from_config(build_model(cfg).train(), teachers[dataset], cfg)
    images, labels = torch.randn(2, 3, 33, 33), torch.randint(0, CLASSES[dataset], (2, 33, 33))
    total, terms = distiller(images, labels)
    total.backward()
    assert set(terms) == {"ce", "kd", "fitnet"} and torch.isfinite(total)
    assert distiller.methods["fitnet"].connector[0].weight.grad is not None  # 128 -> the teacher's 256


# ---------------------------------------------------------------- the table
def _run(root, name, score, seed, backbone, terms=None, mode="distill"):
    from tests.test_make_table import write_run

    run = root / name / f"seed{seed}"
    write_run(str(run), (score, 0.8, 0.9), seed, mode=mode, terms=terms)
    path = run / "eval" / "ss" / "metrics.json"
    metrics = json.loads(path.read_text())
    path.write_text(json.dumps({**metrics, "arch": "deeplabv3", "backbone": backbone}))


def test_mobilenet_rows_are_labelled_by_the_student_and_paired_with_its_baseline(tmp_path):
    from tests.test_make_table import make_table, write_run

    root = tmp_path / "runs" / "cityscapes_deeplabv3_mbv3s"
    teacher = tmp_path / "runs" / "cityscapes" / "deeplabv3_r101_teacher"
    write_run(str(teacher), (0.78, 0.85, 0.95), 1, mode="supervised", layers=101)
    for seed, (base, kd) in {1: (0.65, 0.66), 2: (0.64, 0.67)}.items():
        _run(root, "deeplabv3_mbv3s_baseline", base, seed, "mobilenetv3_small_cirkd", mode="supervised")
        _run(root, "deeplabv3_mbv3s_kd_cirkd", kd, seed, "mobilenetv3_small_cirkd", terms=["cirkd"])
    out_md, out_csv = tmp_path / "table.md", tmp_path / "table.csv"
    assert make_table.main([str(root), str(teacher), "--seeds", "1 2", "--config-dir", "config/cityscapes",
                            "--out-md", str(out_md), "--out-csv", str(out_csv)]) == 0
    text = out_md.read_text()
    assert "Teacher" in text and "Student DeepLabV3-MobileNetV3-Small baseline" in text
    assert "MobileNetV3-Small + logit KD + CIRKD" in text and "config/cityscapes/deeplabv3_mbv3s_kd_cirkd.yaml" in text
    with open(out_csv, newline="") as f:
        records = {rec["row"]: rec for rec in csv.DictReader(f)}
    assert float(records["deeplabv3_mbv3s_kd_cirkd"]["d_mIoU"]) == pytest.approx(2.0)


def test_a_resnet_run_in_a_mobilenet_row_is_refused(tmp_path, capsys):
    from tests.test_make_table import make_table

    _run(tmp_path, "pspnet_mbv3s_baseline", 0.6, 1, "resnet", mode="supervised")
    assert make_table.main([str(tmp_path), "--seeds", "1"]) != 0
    assert ("in row pspnet18_baseline but the run is a supervised R18 (expected supervised mobilenetv3_small_cirkd)"
            in capsys.readouterr().err)


@pytest.mark.slow  # a subprocess (seconds)
@pytest.mark.parametrize("script, student", [("cityscapes", "deeplabv3_mbv3l"), ("voc2012", "pspnet_mbv3s")])
def test_table_scripts_name_the_students_they_have(script, student, tmp_path):
    r = subprocess.run(["bash", os.path.join(REPO, "scripts", script, "table.sh")], cwd=str(tmp_path),
                       capture_output=True, text=True, env={**os.environ, "STUDENT": student}, timeout=60)
    assert r.returncode == 1 and r.stderr.count("\n") == 1
    assert r.stderr.startswith(f"error: STUDENT={student}: expected ")


@pytest.mark.slow
@pytest.mark.long
def test_cityscapes_mobilenet_table_from_a_fabricated_archive(tmp_path):
    """A fabricated Cityscapes archive prepared, then STUDENT=pspnet_mbv3s scripts/cityscapes/table.sh: the
    DeepLabV3-R101 teacher and two PSPNet-MobileNetV3-Small rows (baseline, FitNets) for 2 iterations each, evaluated,
    the table in its own folder with the dataset's teacher; the numbers mean nothing."""
    import sys

    from tests import dataset_archives as fab
    from tools.prepare_cityscapes import prepare

    data = str(tmp_path / "data")
    archives = fab.cityscapes(str(tmp_path))
    prepare(data, archives["images"], archives["labels"], expect_real=False, skip_checksum=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHON": sys.executable, "NPROC": "0", "SEEDS": "1",
           "STUDENT": "pspnet_mbv3s", "ROWS": "pspnet_mbv3s_baseline pspnet_mbv3s_kd_fitnet",
           "RUNS": str(tmp_path / "runs"), "DATA": data, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
           "EXTRA": "train.iters=2 train.batch_size=2 train.crop_size=32 train.workers=0 train.log_every=1 "
                    "model.pretrained=false", "TEST_EXTRA": "test.base_size=64 test.workers=0"}
    r = subprocess.run(["bash", os.path.join(REPO, "scripts", "cityscapes", "table.sh")], cwd=str(tmp_path),
                       capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    root = tmp_path / "runs" / "cityscapes_pspnet_mbv3s"
    assert (tmp_path / "runs" / "cityscapes" / "deeplabv3_r101_teacher" / "model" / "final.pth").is_file()
    table = (root / "table.md").read_text()
    assert "| Teacher DeepLabV3-R101 |" in table and "| Student PSPNet-MobileNetV3-Small baseline |" in table
    assert "| MobileNetV3-Small + logit KD + FitNets |" in table
    metrics = json.loads(next(root.glob("pspnet_mbv3s_kd_fitnet/seed1/eval/*/metrics.json")).read_text())
    assert metrics["backbone"] == "mobilenetv3_small_cirkd" and metrics["mode"] == "distill"
