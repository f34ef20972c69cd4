"""The methods of issue 33 end to end from their CPU-tier configs: each trains a couple of iterations and logs its
term by name; a bad parameter is one line before the run directory exists."""

import json
import re

import pytest

from tests.conftest import tiny_overrides
from tests.test_bad_inputs import run_in_process
from tests.test_distill_terms_e2e import teacher  # noqa: F401 (the R34 teacher checkpoint, a fixture)

pytestmark = pytest.mark.slow
ITERS = 2


def args(name, root, run_dir, teacher_path, *extra):
    return ["--config", f"config/synthetic_cpu/pspnet18_kd_{name}.yaml", *tiny_overrides(root, str(run_dir)),
            "data.names=null", "train.crop_size=33", f"train.iters={ITERS}", "train.warmup_iters=1",
            f"teacher.checkpoint={teacher_path}", "teacher.layers=34", *extra]


@pytest.mark.parametrize("name", ["sphere", "rkd"])
def test_config_trains_and_logs_its_term(name, tiny_data, teacher, tmp_path):  # noqa: F811
    run_dir = tmp_path / "run"
    r = run_in_process(args(name, tiny_data, run_dir, teacher))
    assert r.returncode == 0, r.stderr
    assert re.search(rf"kd \d+\.\d+ {name} \d+\.\d+", r.stdout), r.stdout
    rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    assert any(name in row and row[name] == row[name] and row[name] > 0 for row in rows)


@pytest.mark.parametrize("name, override, message", [
    ("sphere", "distill.sphere.multiplier=0", "distill.sphere.multiplier=0.0: must be a positive finite number"),
    ("sphere", "distill.sphere.tensor=out_feat", "distill.sphere.tensor='out_feat': sphere compares class logits"),
    ("rkd", "distill.rkd.grid=1", "distill.rkd.grid=1: must be an integer >= 2"),
])
def test_bad_parameter_is_one_line_before_the_run_directory(name, override, message, tiny_data, teacher,  # noqa: F811
                                                            tmp_path):
    run_dir = tmp_path / "run"
    r = run_in_process(args(name, tiny_data, run_dir, teacher, override))
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and message in r.stderr
    assert not run_dir.exists()
