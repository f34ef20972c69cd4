"""The methods of issue 33 end to end from their CPU-tier configs: each trains a couple of iterations and logs its
term by name; AFD's attention network is saved in last.pth (not final.pth) and a stopped-then-resumed run ends
bitwise where the straight run ends, the attention network included; a bad parameter is one line before the run
directory exists."""

import json
import re

import pytest
import torch

from model.pspnet import build_pspnet
from tests.conftest import TINY_CLASSES, tiny_overrides
from tests.test_bad_inputs import run_in_process
from tests.test_distill_terms_e2e import teacher  # noqa: F401 (the R34 teacher checkpoint, a fixture)

pytestmark = pytest.mark.slow
ITERS = 2


def args(name, root, run_dir, teacher_path, *extra):
    return ["--config", f"config/synthetic_cpu/pspnet18_kd_{name}.yaml", *tiny_overrides(root, str(run_dir)),
            "data.names=null", "train.crop_size=33", f"train.iters={ITERS}", "train.warmup_iters=1",
            f"teacher.checkpoint={teacher_path}", "teacher.layers=34", *extra]


@pytest.mark.parametrize("name", ["sphere", "rkd", "afd"])
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
    ("afd", "distill.afd.tensor=[layer1,layer5]", "distill.afd.tensor='layer5': must be one of"),
])
def test_bad_parameter_is_one_line_before_the_run_directory(name, override, message, tiny_data, teacher,  # noqa: F811
                                                            tmp_path):
    run_dir = tmp_path / "run"
    r = run_in_process(args(name, tiny_data, run_dir, teacher, override))
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and message in r.stderr
    assert not run_dir.exists()


def test_afd_attention_network_is_saved_resumed_bitwise_and_kept_out_of_the_student(tiny_data, teacher,  # noqa: F811
                                                                                    tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    r = run_in_process(args("afd", tiny_data, straight, teacher, "train.iters=3"))
    assert r.returncode == 0, r.stderr
    last = torch.load(straight / "model" / "last.pth", weights_only=True)
    keys = set(last["distill_modules"])
    assert {"afd.attention.p_t", "afd.attention.p_s", "afd.attention.bilinear.1.running_mean"} <= keys
    assert all(k.startswith("afd.attention.") for k in keys)
    assert last["distill_modules"]["afd.attention.query.3.0.weight"].shape == (128, 512)  # R34's layer4
    assert len(last["optimizer"]["param_groups"]) == 3
    final = torch.load(straight / "model" / "final.pth", weights_only=True)
    assert "distill_modules" not in final
    assert final["model"].keys() == build_pspnet(18, TINY_CLASSES).state_dict().keys()
    assert run_in_process(args("afd", tiny_data, resumed, teacher, "train.iters=3", "train.stop_after=1")
                          ).returncode == 3
    r = run_in_process(args("afd", tiny_data, resumed, teacher, "train.iters=3", "train.resume=auto"))
    assert r.returncode == 0, r.stderr
    assert "at iteration 1/3" in r.stdout
    for name, key in (("final.pth", "model"), ("last.pth", "model"), ("last.pth", "distill_modules")):
        a = torch.load(straight / "model" / name, weights_only=True)[key]
        b = torch.load(resumed / "model" / name, weights_only=True)[key]
        assert a.keys() == b.keys()
        assert [k for k in a if not torch.equal(a[k], b[k])] == [], (name, key)
