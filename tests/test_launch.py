"""The parts of multi-node and elastic training that need no process (tests/test_elastic.py runs them for real):
tools.launch's refusal and one-line messages, the run-folder lock, the cross-rank config check and the process
group's store per restart round."""

import os
from types import SimpleNamespace

import pytest
import torch.distributed as dist
from torch.distributed.elastic.rendezvous import RendezvousConnectionError, RendezvousTimeoutError
from torch.distributed.run import get_args_parser

from engine import state as state_module
from engine.preemption import stop_with_launcher
from engine.rundir import LOCK_NAME, RunLock, RunLog
from engine.state import agreed_config
from tools.launch import failures_line, refusal, rendezvous_line
from util.config import load_config
from util.distributed import DistInfo, restart_round_store
from util.errors import SegKDError

CONFIG = "config/synthetic_cpu/pspnet18_baseline.yaml"


def parsed(*argv):
    return get_args_parser().parse_args(list(argv))


def test_restarts_of_train_py_need_resume_auto_from_the_first_launch():
    assert refusal(parsed("--max-restarts", "2", "train.py", "--config", CONFIG)) == (
        "--max-restarts 2: a restarted train.py must resume its run - add train.resume=auto from the first launch on "
        "(a restarted group otherwise finds its own run in output.dir and is refused)")
    assert refusal(parsed("--max-restarts", "2", "train.py", "--config", CONFIG, "train.resume=auto")) is None
    assert refusal(parsed("--max-restarts", "2", "train.py", "--config", CONFIG, "train.resume=runs/a/last.pth"))
    assert refusal(parsed("train.py", "--config", CONFIG)) is None  # no restarts: a plain run
    assert refusal(parsed("--max-restarts", "2", "test.py", "--config", CONFIG)) is None


def test_a_rendezvous_failure_is_one_line_naming_the_endpoint_and_the_timeout():
    args = parsed("--nnodes", "2", "--rdzv-backend", "c10d", "--rdzv-endpoint", "node0:29500", "--rdzv-id", "job7",
                  "--rdzv-conf", "read_timeout=60,join_timeout=45", "train.py")
    line = rendezvous_line(args, RendezvousTimeoutError())
    assert line.startswith("rendezvous at node0:29500 (--rdzv-id job7) did not complete within join_timeout=45 s: "
                           "not all of --nnodes 2 node(s) joined")
    assert "\n" not in line
    line = rendezvous_line(parsed("--nnodes", "2", "--rdzv-endpoint", "node0:29500", "train.py"),
                           RendezvousConnectionError("The connection to the C10d store has failed.\nmore"))
    assert line == ("rendezvous at node0:29500 (--rdzv-id none, join_timeout=600 s) failed: The connection to the C10d "
                    "store has failed.")


def test_failed_workers_are_one_line_and_the_first_to_exit_on_its_own_sets_the_status():
    fail = lambda code, t: SimpleNamespace(exitcode=code, timestamp=t)  # noqa: E731
    line, status = failures_line(SimpleNamespace(failures={0: fail(-15, 100), 1: fail(2, 100)}))
    assert (line, status) == ("2 worker(s) failed: rank 1 (exit 2), rank 0 (signal SIGTERM); their own errors are "
                              "above", 2)
    assert failures_line(SimpleNamespace(failures={3: fail(-9, 5)}))[1] == 128 + 9


def test_the_run_lock_refuses_a_second_holder_in_one_line_and_a_released_lock_is_free(tmp_path):
    run = str(tmp_path / "run")
    os.makedirs(run)
    first = RunLock(run)
    first.acquire()
    holder = (tmp_path / "run" / LOCK_NAME).read_text()
    assert holder.startswith(f"pid {os.getpid()} on ")
    second = RunLock(run)  # its own open file: flock refuses it as it would another process
    with pytest.raises(SegKDError) as caught:
        second.acquire()
    assert str(caught.value) == (f"{run}: output.dir is in use by a training job still running ({holder} holds "
                                 f"{run}/{LOCK_NAME}); wait for it to stop or end it, then resume with "
                                 "train.resume=auto")
    first.release()
    second.acquire(sign=False)  # the file a dead holder left behind does not block; unsigned, it is unchanged
    assert (tmp_path / "run" / LOCK_NAME).read_text() == holder
    second.release()


def test_a_claim_locks_only_a_folder_that_holds_a_run(tmp_path):
    cfg = load_config(CONFIG, [f"output.dir={tmp_path / 'run'}"])
    log = RunLog(str(tmp_path / "run"), cfg)
    log.claim()  # nothing there yet: nothing created
    assert not (tmp_path / "run").exists()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("{}\n")
    log.claim()  # a run of an older segkd, without a lock file: none created (a claim writes nothing)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.yaml"]
    earlier = RunLock(str(tmp_path / "run"))
    earlier.acquire()  # a run of this code creates and signs the file; it has ended since
    earlier.release()
    log.claim()
    with pytest.raises(SegKDError, match="output.dir is in use"):
        RunLock(str(tmp_path / "run")).acquire()
    log.close()
    RunLock(str(tmp_path / "run")).acquire()


def test_configs_that_differ_across_ranks_name_the_first_key(monkeypatch):
    cfg = load_config(CONFIG, ["train.crop_size=65"])
    other = load_config(CONFIG, ["train.crop_size=73", "train.base_lr=0.5"])
    info = DistInfo(rank=1, local_rank=0, world_size=2, device=None)
    from util.config import flat_dict

    monkeypatch.setattr(state_module, "all_gather_objects", lambda obj, n: [flat_dict(cfg), obj])
    agreed_config(cfg, info)  # the same config on both: nothing to say
    with pytest.raises(SegKDError) as caught:
        agreed_config(other, info)
    assert str(caught.value) == ("config differs between processes: train.base_lr is 0.001 on rank 0, 0.5 on rank 1 "
                                 "(+1 more: train.crop_size); start every node with the same config and overrides")


def test_the_process_group_keys_of_a_restart_round_are_its_own(monkeypatch):
    monkeypatch.delenv("TORCHELASTIC_USE_AGENT_STORE", raising=False)
    assert restart_round_store(None) is None  # torch's env:// as it is
    server = dist.TCPStore("127.0.0.1", 0, 1, is_master=True, wait_for_workers=False)
    server.set("0", "a dead worker's address")  # what round 0 left in the agent's store
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(server.port))
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    from datetime import timedelta

    store = restart_round_store(timedelta(seconds=10))
    assert not store.check(["0"])  # round 1 does not see round 0's key
    store.set("0", "this round's address")
    assert server.get("0") == b"a dead worker's address"  # nor overwrites it
    assert restart_round_store(timedelta(seconds=10)).get("0") == b"this round's address"  # round 1's other workers
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "2")
    assert not restart_round_store(timedelta(seconds=10)).check(["0"])  # the next round starts clean


def test_only_workers_of_a_launcher_watch_it(monkeypatch):
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    assert stop_with_launcher() is None  # python train.py under nohup outlives its shell
