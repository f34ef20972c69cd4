"""Several processes and nodes under faults, on the CPU with gloo over loopback, launched as the README says
(``python -m tools.launch``, torchrun with every argument passed through): two nodes equal one node; an elastic run
whose workers are SIGKILLed twice (a non-zero rank, then rank 0, the writer) ends bitwise equal to an uninterrupted
run; a changed world size, configs that differ across nodes and a rendezvous that never completes are each one line;
workers stop when their launcher is gone and a second job on their run folder is refused. docs/RELIABILITY.md's table
names each test. The restart is repeated 10 times by the command that RELIABILITY.md gives."""

import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from engine.rundir import LOCK_NAME, RunLock
from tests.conftest import REPO, tiny_overrides

CONFIG = "config/synthetic_cpu/pspnet18_baseline.yaml"
ITERS = 8
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}

pytestmark = [pytest.mark.slow, pytest.mark.long]


def train_args(data, run_dir, *extra):
    """Global batch 4 (2 per process), 8 iterations of a 3-iteration epoch, a checkpoint every iteration, resume on
    from the first launch (what an elastic command carries)."""
    return ["train.py", "--config", CONFIG, *tiny_overrides(data, str(run_dir)), "data.names=null",
            "train.batch_size=4", f"train.iters={ITERS}", "train.warmup_iters=2", "train.checkpoint_every=1",
            "train.resume=auto", *extra]


def launch(args, log, *torchrun):
    """``python -m tools.launch TORCHRUN_ARGS train.py ...`` in a session of its own, output to ``log``."""
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "tools.launch", *torchrun, *args], cwd=REPO, stdout=out,
                                stderr=subprocess.STDOUT, env=ENV, start_new_session=True)


def finish(proc, log, timeout=600):
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"no exit within {timeout} s:\n{open(log).read()[-3000:]}")
    return code, open(log).read()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def workers(run_dir):
    """{(restart round, rank): pid} of the live training processes of ``run_dir`` (read from /proc)."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = dict(e.split(b"=", 1) for e in f.read().split(b"\0") if b"=" in e)
            with open(f"/proc/{pid}/stat") as f:
                zombie = f.read().rsplit(")", 1)[1].split()[0] == "Z"
        except OSError:
            continue
        if b"train.py" in cmd and f"output.dir={run_dir}".encode() in cmd and b"RANK" in env and not zombie:
            found[(int(env.get(b"TORCHELASTIC_RESTART_COUNT", b"0")), int(env[b"RANK"]))] = int(pid)
    return found


def wait_until(condition, what, proc, log, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        if proc.poll() is not None:
            pytest.fail(f"exited with {proc.returncode} before {what}:\n{open(log).read()[-3000:]}")
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail(f"no {what} within {timeout} s:\n{open(log).read()[-3000:]}")


def after_last_resume(run_dir, text):
    """``text`` is in train.log after its last "resumed from" line (or anywhere, before any resume)."""
    try:
        log = (run_dir / "train.log").read_text()
    except FileNotFoundError:
        return False
    return text in log.rsplit("resumed from", 1)[-1]


def weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def assert_same_weights(a_path, b_path):
    a, b = weights(a_path), weights(b_path)
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert different == [], f"{len(different)} tensors differ, e.g. {different[:3]}"


def snapshot(folder):
    """Every file under ``folder``: its bytes and modification time (what a refusal must leave as it was)."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reference(tiny_data, tmp_path_factory):
    """One node, 2 processes, uninterrupted: its run folder."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    log = run_dir.parent / "launch.log"
    code, out = finish(launch(train_args(tiny_data, run_dir), log, "--standalone", "--nproc-per-node", "2"), log)
    assert code == 0, out[-3000:]
    assert "student parameters identical on all 2 processes" in out
    return run_dir


def test_two_nodes_equal_one_node_with_as_many_processes(tiny_data, tmp_path, reference):
    run_dir = tmp_path / "run"
    node = ["--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
            "--rdzv-endpoint", f"127.0.0.1:{free_port()}", "--rdzv-id", "two-nodes"]
    procs = [launch(train_args(tiny_data, run_dir), tmp_path / f"node{i}.log", *node) for i in range(2)]
    for i, proc in enumerate(procs):
        code, out = finish(proc, tmp_path / f"node{i}.log")
        assert code == 0, out[-3000:]
    assert "2 process(es) on cpu" in (run_dir / "train.log").read_text()
    assert_same_weights(run_dir / "model" / "final.pth", reference / "model" / "final.pth")


@pytest.mark.parametrize("launcher", ["tools.launch", "torchrun"])
def test_elastic_restart_after_sigkill_of_a_worker_then_of_rank0_is_exact(tiny_data, tmp_path, reference, launcher):
    """``--max-restarts 2``: rank 1 SIGKILLed at iteration 3 (round 0), rank 0 at iteration 6 of round 1; each round
    resumes from last.pth and the run ends bitwise equal to the uninterrupted one. ``torchrun``: plain torchrun,
    which keeps its rendezvous store across rounds (util/distributed.py: restart_round_store); ``tools.launch``
    gives each round its own."""
    run_dir = tmp_path / "run"
    log = tmp_path / "launch.log"
    torchrun = ["--standalone", "--nproc-per-node", "2", "--max-restarts", "2"]
    if launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", *torchrun, *train_args(tiny_data, run_dir)]
        with open(log, "w") as out:
            proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=ENV,
                                    start_new_session=True)
    else:
        proc = launch(train_args(tiny_data, run_dir), log, *torchrun)
    for restart, rank, at in ((0, 1, 3), (1, 0, 6)):
        line, key, next_round = f"iter {at}/{ITERS}", (restart, rank), (restart + 1, 0)
        wait_until(lambda line=line: after_last_resume(run_dir, line), line, proc, log)
        pid = wait_until(lambda key=key: workers(run_dir).get(key), f"round {restart} rank {rank}", proc, log)
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda key=next_round: key in workers(run_dir), f"round {restart + 1}", proc, log)
    code, out = finish(proc, log)
    assert code == 0, out[-3000:]
    resumed = re.findall(r"resumed from .*last\.pth at iteration (\d+)/8", (run_dir / "train.log").read_text())
    # each from the checkpoint of the kill's iteration or the one before (the log line precedes the write)
    assert len(resumed) == 2 and 2 <= int(resumed[0]) < int(resumed[1]) and int(resumed[1]) >= 5, resumed
    assert_same_weights(run_dir / "model" / "final.pth", reference / "model" / "final.pth")


def test_a_changed_world_size_is_refused_before_the_first_step(tiny_data, reference):
    before = snapshot(reference)
    r = subprocess.run([sys.executable, *train_args(tiny_data, reference)], cwd=REPO, capture_output=True, text=True,
                       env=ENV, timeout=300)
    assert r.returncode == 2
    assert r.stderr == (f"error: {reference}/model/last.pth: was trained by 2 process(es), this run has 1; resume "
                        "with 2 (a resume never changes the world size: each process's batch, data order and random "
                        "state depend on it)\n")
    assert "iter " not in r.stdout and snapshot(reference) == before


def test_nodes_with_different_configs_are_refused_before_anything_is_written(tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    node = ["--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
            "--rdzv-endpoint", f"127.0.0.1:{free_port()}", "--rdzv-id", "mismatch"]
    procs = [launch(train_args(tiny_data, run_dir, f"train.crop_size={crop}"), tmp_path / f"node{crop}.log", *node)
             for crop in (65, 73)]
    outs = [finish(proc, tmp_path / f"node{crop}.log") for proc, crop in zip(procs, (65, 73))]
    for code, out in outs:
        assert code == 2, out[-3000:]
        found = re.search(r"error: \[rank (\d)\] config differs between processes: train\.crop_size is (\d+) on rank "
                          r"0, (\d+) on rank 1; start every node with the same config and overrides\n", out)
        assert found, out[-3000:]
        assert {found.group(2), found.group(3)} == {"65", "73"}
        assert "error: 1 worker(s) failed: rank " in out and "(exit 2)" in out
    assert not run_dir.exists()


def test_a_rendezvous_that_never_completes_is_one_line_within_its_timeout(tmp_path):
    endpoint = f"127.0.0.1:{free_port()}"
    start = time.time()
    r = subprocess.run([sys.executable, "-m", "tools.launch", "--nnodes", "2", "--nproc-per-node", "1",
                        "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", "alone",
                        "--rdzv-conf", "join_timeout=5", "train.py", "--config", CONFIG,
                        f"output.dir={tmp_path / 'run'}"], cwd=REPO, capture_output=True, text=True, env=ENV,
                       timeout=120)
    elapsed = time.time() - start
    assert r.returncode == 2
    assert r.stderr == (f"error: rendezvous at {endpoint} (--rdzv-id alone) did not complete within join_timeout=5 s: "
                        "not all of --nnodes 2 node(s) joined; start the same command on every node with the same "
                        "--rdzv-endpoint and --rdzv-id, or raise --rdzv-conf join_timeout=SECONDS\n")
    assert elapsed < 5 + 20  # the timeout plus the interpreter's start-up
    assert not (tmp_path / "run").exists()


def test_workers_stop_with_their_launcher_and_a_second_job_on_their_folder_is_refused(tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    log = tmp_path / "launch.log"
    args = train_args(tiny_data, run_dir, "train.iters=60", "train.checkpoint_every=100")
    proc = launch(args, log, "--standalone", "--nproc-per-node", "2")
    wait_until(lambda: after_last_resume(run_dir, "iter 2/60"), "iteration 2", proc, log)
    second = subprocess.run([sys.executable, "-m", "tools.launch", "--standalone", "--nproc-per-node", "2", *args],
                            cwd=REPO, capture_output=True, text=True, env=ENV, timeout=300)
    assert second.returncode == 2
    lock = run_dir / LOCK_NAME
    assert re.search(rf"error: \[rank [01]\] {re.escape(str(run_dir))}: output\.dir is in use by a training job "
                     rf"still running \(pid \d+ on [^ ]+ holds {re.escape(str(lock))}\); wait for it to stop or end "
                     r"it, then resume with train\.resume=auto\n", second.stderr), second.stderr[-3000:]
    assert "Traceback" not in second.stderr
    assert proc.poll() is None  # the first job trained on

    pids = workers(run_dir)
    assert sorted(pids) == [(0, 0), (0, 1)]
    os.kill(proc.pid, signal.SIGKILL)  # the launcher alone; its workers are in sessions of their own
    killed = time.time()
    while workers(run_dir):
        assert time.time() - killed < 40, f"workers {workers(run_dir)} still running"
        time.sleep(0.1)
    train_log = (run_dir / "train.log").read_text()
    stopped = re.search(r"stopped at iteration (\d+) \(signal SIGTERM\); checkpoint written", train_log)
    assert stopped, train_log[-2000:]
    assert torch.load(run_dir / "model" / "last.pth", weights_only=True)["iteration"] == int(stopped.group(1))
    assert len((run_dir / "git_commit.txt").read_text().splitlines()) == 1  # the refused job wrote nothing
    RunLock(str(run_dir)).acquire()  # the dead job's lock does not block
