"""SSLD end to end from its CPU-tier config (config/synthetic_cpu/pspnet18_kd_ssld.yaml) on a tiny generated set with
an unlabelled pool: it trains and logs its terms by name, and a run stopped mid-epoch and resumed ends bitwise where
the straight run ends (the sampler's labelled order and the pool's stream both restart where they were)."""

import json
import re

import pytest
import torch

from tests.test_bad_inputs import run_in_process
from tests.test_ssld import pool_set, r18_teacher  # noqa: F401 (fixtures: the set with its pool, an R18 teacher)

pytestmark = pytest.mark.slow


def args(root, run_dir, teacher, *extra):
    return ["--config", "config/synthetic_cpu/pspnet18_kd_ssld.yaml", f"data.root={root}", "data.names=null",
            "data.classes=4", "train.batch_size=4", "train.crop_size=33", "train.workers=0", "train.log_every=1",
            "train.warmup_iters=1", f"teacher.checkpoint={teacher}", "teacher.layers=18", f"output.dir={run_dir}",
            *extra]


def test_ssld_config_trains_and_logs_its_terms(pool_set, r18_teacher, tmp_path):  # noqa: F811
    run_dir = tmp_path / "run"
    r = run_in_process(args(pool_set, run_dir, r18_teacher, "train.iters=2"))
    assert r.returncode == 0, r.stderr
    assert re.search(r"iter 2/2 loss \d+\.\d+ ce \d+\.\d+ aux \d+\.\d+ kd \d+\.\d+ lr", r.stdout), r.stdout
    rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    last = [row for row in rows if "kd" in row][-1]
    assert all(last[k] == last[k] and last[k] > 0 for k in ("ce", "aux", "kd", "loss"))


def test_ssld_stop_and_resume_is_bitwise(pool_set, r18_teacher, tmp_path):  # noqa: F811
    """6 labelled images, 2 a batch: 3 iterations an epoch; stopped after 2, resumed to 4 (across the epoch)."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    r = run_in_process(args(pool_set, straight, r18_teacher, "train.iters=4"))
    assert r.returncode == 0, r.stderr
    r = run_in_process(args(pool_set, resumed, r18_teacher, "train.iters=4", "train.stop_after=2"))
    assert r.returncode == 3, r.stderr
    r = run_in_process(args(pool_set, resumed, r18_teacher, "train.iters=4", "train.resume=auto"))
    assert r.returncode == 0, r.stderr
    a = torch.load(straight / "model" / "final.pth", weights_only=True)["model"]
    b = torch.load(resumed / "model" / "final.pth", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
