"""train.resume across nodes: rank 0 decides where to resume from, and a rank that cannot read that checkpoint
(a node-local output.dir) stops every rank with one line, instead of ranks disagreeing about the iteration."""

import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from util.checkpoint import save_checkpoint
from util.config import load_config
from util.distributed import DistInfo
from util.errors import SegKDError

CONFIG = "config/synthetic/pspnet18_baseline.yaml"


def _rank(rank, init_file, dirs, out, blind):
    """One gloo process; ``dirs[rank]`` is its output.dir; with ``blind`` rank 1 is on another 'node', whose
    file system does not hold rank 0's run directory (the processes share this machine's disk, so that
    node's view is simulated: checkpoint files under rank 0's folder do not exist for it)."""
    from engine import state as state_module
    from engine.state import agreed_resume

    if blind and rank == 1:
        real = state_module.load_checkpoint

        def node_local(path):
            if path.startswith(dirs[0]):
                raise SegKDError(f"{path}: checkpoint not found")
            return real(path)

        state_module.load_checkpoint = node_local

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        cfg = load_config(CONFIG, [f"output.dir={dirs[rank]}", "train.resume=auto"])
        info = DistInfo(rank=rank, local_rank=rank, world_size=2, device=torch.device("cpu"))
        try:
            path, state = agreed_resume(cfg, info)
            result = {"path": path, "iteration": None if state is None else state["iteration"]}
        except SegKDError as e:
            result = {"error": str(e)}
    finally:
        dist.destroy_process_group()
    with open(os.path.join(out, f"rank{rank}.json"), "w", encoding="utf-8") as f:
        json.dump(result, f)


def run_two(tmp_path, dirs, blind=False):
    out = tmp_path / "out"
    out.mkdir()
    mp.start_processes(_rank, args=(str(tmp_path / "init"), dirs, str(out), blind), nprocs=2, start_method="spawn")
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def write_last(run_dir, iteration):
    os.makedirs(os.path.join(run_dir, "model"))
    path = os.path.join(run_dir, "model", "last.pth")
    save_checkpoint({"model": {"w": torch.zeros(1)}, "iteration": iteration}, path)
    return path


@pytest.mark.slow
def test_a_rank_that_cannot_read_rank0s_checkpoint_stops_every_rank(tmp_path):
    node0, node1 = str(tmp_path / "node0"), str(tmp_path / "node1")
    path = write_last(node0, 7)  # only "node 0" has the run directory
    os.makedirs(node1)
    ranks = run_two(tmp_path, [node0, node1], blind=True)
    assert "another rank cannot read" in ranks[0]["error"] and path in ranks[0]["error"]
    assert ranks[1]["error"].startswith(f"{path}: rank 0 resumes from it but this rank cannot read it")
    for r in ranks:
        assert "shares" in r["error"] and "\n" not in r["error"]


@pytest.mark.slow
def test_rank0_decides_and_every_rank_loads_the_same_checkpoint(tmp_path):
    shared = str(tmp_path / "shared")
    path = write_last(shared, 5)
    other = str(tmp_path / "stale")  # what rank 1 would have resolved on its own: no checkpoint there
    os.makedirs(other)
    ranks = run_two(tmp_path, [shared, other])
    assert ranks == [{"path": path, "iteration": 5}] * 2


def test_where_a_run_is_written_and_how_it_is_evaluated_are_not_the_experiment():
    """engine.rundir.experiment_diff, the one rule of resume, run folder, table rerun and collect: output.* and
    test.* may differ, anything else is named."""
    from engine.rundir import experiment_diff
    from util.config import flat_dict, load_config

    old = flat_dict(load_config(None, ["output.dir=runs/a"]))
    moved = {**old, "output.dir": "runs/b", "test.flip": True, "test.after_training": True, "test.batch_size": 8}
    assert experiment_diff(old, moved) == ""
    assert experiment_diff(old, {**moved, "train.base_lr": 0.02}) == "train.base_lr: 0.01 there, 0.02 now"
