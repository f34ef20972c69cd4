"""distill.terms end to end: a distilled run with a connector logs each term under its name, keeps the
connector in last.pth (not in final.pth, whose network test.py evaluates), and a SIGKILL-and-resume run
ends bitwise where the uninterrupted run ends, connector included; the connectors' gradients are averaged
across processes."""

import json
import os
import re

import pytest
import torch

from model.build import checkpoint_meta
from model.pspnet import build_pspnet
from tests.conftest import TINY_CLASSES, run_cli, tiny_overrides
from tests.test_faults import start, wait_for
from util.checkpoint import save_checkpoint
from util.config import load_config

pytestmark = pytest.mark.slow
KD_CFG = "config/synthetic/pspnet18_kd.yaml"
ITERS = 6
ENV = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}  # make test: 1 per worker


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """An untrained R34 teacher checkpoint (what it teaches does not matter here, only what is saved; R34's
    layer4 has R18's 512 channels, so the connector is 512 -> 512 and cheap)."""
    cfg = load_config("config/synthetic/pspnet50_teacher.yaml", [f"data.classes={TINY_CLASSES}", "model.layers=34"])
    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp("teacher") / "final.pth")
    save_checkpoint({**checkpoint_meta(cfg.model, cfg, "supervised"),
                     "model": build_pspnet(34, TINY_CLASSES).state_dict()}, path)
    return path


def args(root, run_dir, teacher):
    return ["train.py", "--config", KD_CFG, *tiny_overrides(root, str(run_dir)), f"train.iters={ITERS}",
            "train.checkpoint_every=2", f"teacher.checkpoint={teacher}", "teacher.layers=34",
            "distill.terms=[fitnet,at,dkd]", "distill.fitnet.tensor=layer4"]


@pytest.fixture(scope="module")
def reference(tiny_data, teacher, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ref") / "run"
    r = run_cli(*args(tiny_data, run_dir, teacher), env=ENV, timeout=300)
    assert r.returncode == 0, r.stderr
    return run_dir, r


def test_terms_are_logged_and_connectors_stay_out_of_the_student(tiny_data, reference):
    run_dir, r = reference
    assert re.search(r"fitnet \d+\.\d+ at \d+\.\d+ dkd \d+\.\d+", r.stdout)
    rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    assert {"kd", "fitnet", "at", "dkd"} <= set(rows[-1]) and all(v == v for v in rows[-1].values())
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(run_dir / "tb"))
    last = torch.load(run_dir / "model" / "last.pth", weights_only=True)
    assert sorted(last["distill_modules"]) == sorted(
        f"fitnet.connector.{k}" for k in ("0.weight", "1.weight", "1.bias", "1.running_mean", "1.running_var",
                                          "1.num_batches_tracked"))
    assert len(last["optimizer"]["param_groups"]) == 3
    final = torch.load(run_dir / "model" / "final.pth", weights_only=True)
    assert "distill_modules" not in final
    assert final["model"].keys() == build_pspnet(18, TINY_CLASSES).state_dict().keys()
    r = run_cli("test.py", "--config", KD_CFG, *tiny_overrides(tiny_data, str(run_dir)), env=ENV)
    assert r.returncode == 0, r.stderr
    assert os.path.exists(run_dir / "eval" / "ss" / "metrics.json")


def test_sigkill_then_resume_is_exact_with_connectors(tiny_data, teacher, reference, tmp_path):
    run_dir = tmp_path / "run"
    proc, out, _ = start(args(tiny_data, run_dir, teacher), tmp_path, "killed")
    wait_for(out, "iter 5/", proc)
    proc.kill()
    proc.wait()
    saved = torch.load(run_dir / "model" / "last.pth", weights_only=True)
    assert 4 <= saved["iteration"] < ITERS and "distill_modules" in saved
    r = run_cli(*args(tiny_data, run_dir, teacher), "train.resume=auto", env=ENV, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"at iteration {saved['iteration']}/{ITERS}" in r.stdout
    ref_dir = reference[0]
    for name, key in (("final.pth", "model"), ("last.pth", "model"), ("last.pth", "distill_modules")):
        a = torch.load(run_dir / "model" / name, weights_only=True)[key]
        b = torch.load(ref_dir / "model" / name, weights_only=True)[key]
        assert a.keys() == b.keys()
        assert [k for k in a if not torch.equal(a[k], b[k])] == [], (name, key)


def _average_rank(rank, init_file, out_dir):
    import torch.distributed as dist

    from util.distributed import average_gradients

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        params = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2, 2))]
        params[0].grad = torch.full((3,), float(rank + 1))
        params[1].grad = torch.full((2, 2), 10.0 * (rank + 1))
        average_gradients(params, 2)
        torch.save([p.grad for p in params], os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_connector_gradients_are_averaged_across_processes(tmp_path):
    import torch.multiprocessing as mp

    mp.start_processes(_average_rank, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, start_method="spawn")
    for rank in range(2):
        g0, g1 = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert torch.equal(g0, torch.full((3,), 1.5)) and torch.equal(g1, torch.full((2, 2), 15.0))
