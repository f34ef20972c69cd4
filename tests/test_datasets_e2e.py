"""Each CIRKD dataset end to end on fabricated archives of its official layout: prepare -> tools.check -> a
2-iteration DeepLabV3-R101 teacher and a distilled DeepLabV3-R18 student through scripts/<dataset>/table.sh ->
test.py -> the table. The numbers mean nothing; the names, colours, lists and the plumbing are what is checked."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from data.datasets import get_dataset
from tests import dataset_archives as fab
from tests.conftest import REPO, run_cli

THREADS = os.environ.get("OMP_NUM_THREADS", "2")
# seconds per run on a CPU: 2 iterations of batch 2 at a 32 px crop, no ImageNet weights, images evaluated at their size
TINY = "train.iters=2 train.batch_size=2 train.crop_size=32 train.workers=0 train.log_every=1 model.pretrained=false"
BASE = {"cityscapes": 64, "ade20k": 40, "camvid": 32}  # the fabricated images' long (ADE20K: short) side


def _prepare(name, tmp):
    dest = str(tmp / "data")
    if name == "cityscapes":
        from tools.prepare_cityscapes import prepare
        arch = fab.cityscapes(str(tmp))
        prepare(dest, arch["images"], arch["labels"], expect_real=False, skip_checksum=True)
    elif name == "ade20k":
        from tools.prepare_ade20k import prepare
        prepare(dest, fab.ade20k(str(tmp))["archive"], skip_checksum=True, expect_real=False)
    else:
        from tools.prepare_camvid import prepare
        prepare(dest, fab.camvid(str(tmp))["archive"], expect_real=False)
    return dest


@pytest.mark.slow
@pytest.mark.long
@pytest.mark.parametrize("name", ["cityscapes", "ade20k", "camvid"])
def test_archive_to_table(tmp_path, name):
    facts = get_dataset(name)
    data = _prepare(name, tmp_path)

    teacher_cfg = os.path.join("config", name, "deeplabv3_r101_teacher.yaml")
    r = run_cli("-m", "tools.check", "--config", teacher_cfg, f"data.root={data}", "--workers", "1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "OK: no problems" in r.stdout
    first = facts.names()[0]
    assert f"train: label pixels per value: 0 {first}:" in r.stdout  # the histogram names the classes

    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHON": sys.executable, "NPROC": "0", "SEEDS": "1",
           "ROWS": "deeplabv3_r18_kd", "RUNS": str(tmp_path / "runs"), "DATA": data, "OMP_NUM_THREADS": THREADS,
           "EXTRA": TINY, "TEST_EXTRA": f"test.base_size={BASE[name]} test.workers=0"}
    r = subprocess.run(["bash", os.path.join(REPO, "scripts", name, "table.sh")], cwd=str(tmp_path),
                       capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    root = tmp_path / "runs" / name
    table = (root / "table.md").read_text()
    assert "| Teacher DeepLabV3-R101 |" in table and "| R18 + logit KD |" in table
    assert "[deeplabv3_r18_kd](" in table or "deeplabv3_r18_kd" in (root / "table.csv").read_text()

    student = root / "deeplabv3_r18_kd" / "seed1"
    out = tmp_path / "eval"
    r = run_cli("test.py", "--config", os.path.join("config", name, "deeplabv3_r18_kd.yaml"), f"data.root={data}",
                f"test.checkpoint={student / 'model' / 'final.pth'}", f"test.out_dir={out}",
                f"test.base_size={BASE[name]}", "test.workers=0")
    assert r.returncode == 0, r.stdout + r.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["per_class"]) == facts.names()
    assert metrics["protocol"]["mode"] == facts.protocol["mode"]
    assert metrics["images"] == len(open(os.path.join(data, facts.lists["test" if name == "camvid" else "val"]))
                                         .read().splitlines())
    colour = Image.open(next((out / "color").iterdir()))
    assert colour.getpalette()[:3 * facts.classes] == facts.palette()[:3 * facts.classes]
    gray = np.array(Image.open(next((out / "gray").iterdir())))
    assert gray.max() < facts.classes
