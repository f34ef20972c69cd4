"""Fault injection: SIGKILL and SIGTERM mid-run then train.resume=auto (bitwise identical to an
uninterrupted run on the CPU, for the supervised SGD baseline and a distilled AdamW run), a non-finite loss, a
full disk, a crash in the middle of a checkpoint write."""

import errno
import json
import math
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from engine.preemption import release_workers, shield_workers, worker_error_line
from engine.rundir import RunLog
from model.pspnet import build_pspnet
from tests.conftest import REPO, TINY_CLASSES, tiny_overrides
from tests.conftest import run_cli as _run_cli
from util import checkpoint as ckpt_module
from util.checkpoint import load_checkpoint, save_checkpoint
from util.config import load_config
from util.errors import SegKDError

BASELINE = "config/synthetic/pspnet18_baseline.yaml"
ENV = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}  # make test: 1 per worker
ITERS = 12  # two epochs of 6 on the tiny dataset


def run_cli(*args):
    return _run_cli(*args, env=ENV, timeout=300)


def train_args(root, run_dir, *extra):
    return ["train.py", "--config", BASELINE, *tiny_overrides(root, str(run_dir)), f"train.iters={ITERS}",
            "train.checkpoint_every=2", *extra]


def start(args, tmp_path, name):
    """Start train.py in its own session (so a signal can go to its whole process group, like Ctrl-C)."""
    out, err = open(tmp_path / f"{name}.out", "w"), open(tmp_path / f"{name}.err", "w")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **ENV}
    proc = subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=out, stderr=err, env=env,
                            start_new_session=True)
    return proc, tmp_path / f"{name}.out", tmp_path / f"{name}.err"


def wait_for(path, text, proc, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if text in path.read_text():
            return
        assert proc.poll() is None, f"exited with {proc.returncode} before '{text}':\n{path.read_text()}"
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"no '{text}' within {timeout} s")


def weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def assert_same_weights(a_path, b_path):
    a, b = weights(a_path), weights(b_path)
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert different == [], f"{len(different)} tensors differ, e.g. {different[:3]}"


@pytest.fixture(scope="module")
def reference(tiny_data, tmp_path_factory):
    """The uninterrupted run's final weights."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    r = run_cli(*train_args(tiny_data, run_dir))
    assert r.returncode == 0, r.stderr
    return str(run_dir / "model" / "final.pth")


# ---------------------------------------------------------------- whole runs
@pytest.mark.slow
def test_sigkill_then_resume_is_exact(tiny_data, tmp_path, reference):
    run_dir = tmp_path / "run"
    args = train_args(tiny_data, run_dir)
    proc, out, _ = start(args, tmp_path, "killed")
    wait_for(out, "iter 5/", proc)  # the checkpoint of iteration 4 is written
    proc.kill()
    proc.wait()
    logged = max(int(n) for n in re.findall(r"iter (\d+)/", out.read_text()))
    last = run_dir / "model" / "last.pth"
    saved = torch.load(last, weights_only=True)["iteration"]
    assert 4 <= saved <= logged and logged - saved <= 2  # at most train.checkpoint_every lost
    (run_dir / "model" / "last.pth.tmp").write_bytes(b"half a checkpoint")  # a write the kill cut short
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"kind": "train", "iter')  # and half a line

    r = run_cli(*args, "train.resume=auto")
    assert r.returncode == 0, r.stderr
    assert f"resumed from {last} at iteration {saved}/{ITERS}" in r.stdout
    assert not (run_dir / "model" / "last.pth.tmp").exists()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert {"kind": "resume", "iteration": saved} in rows and rows[-1]["iteration"] == ITERS
    assert_same_weights(run_dir / "model" / "final.pth", reference)


@pytest.mark.slow
def test_sigterm_to_the_process_group_checkpoints_and_resumes_exactly(tiny_data, tmp_path, reference):
    run_dir = tmp_path / "run"
    args = train_args(tiny_data, run_dir)
    proc, out, err = start([*args, "train.workers=1"], tmp_path, "terminated")  # its worker gets it too
    wait_for(out, "iter 3/", proc)
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    assert "Traceback" not in err.read_text()
    stopped = re.search(r"stopped at iteration (\d+) \(signal SIGTERM\); checkpoint written. Resume with the same "
                        r"command plus train.resume=auto", out.read_text())
    assert stopped, out.read_text()
    assert torch.load(run_dir / "model" / "last.pth", weights_only=True)["iteration"] == int(stopped.group(1))
    assert not (run_dir / "model" / "final.pth").exists()

    r = run_cli(*args, "train.resume=auto")
    assert r.returncode == 0, r.stderr
    assert_same_weights(run_dir / "model" / "final.pth", reference)


@pytest.mark.slow
def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    r = run_cli(*train_args(tiny_data, run_dir, "train.checkpoint_every=1", "train.base_lr=1.0e+30"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    found = re.fullmatch(r"error: iteration (\d+): loss term '(ce|aux|loss)' is (nan|inf|-inf); stopping, "
                         r"the last good checkpoint, .*last\.pth \(iteration (\d+)\), is kept\n", r.stderr)
    assert found, r.stderr
    step, kept = int(found.group(1)), int(found.group(4))
    assert kept == step - 1
    last = torch.load(run_dir / "model" / "last.pth", weights_only=True)
    assert last["iteration"] == kept and all(torch.isfinite(v).all() for v in last["model"].values())
    assert not (run_dir / "model" / "final.pth").exists()
    assert f"error: iteration {step}: loss term" in (run_dir / "train.log").read_text()


@pytest.mark.slow
def test_resume_at_the_end_of_a_partial_epoch(tiny_data, tmp_path):
    """3 iterations of a 6-iteration epoch, stopped at the last one: the resume must not take a 4th step."""
    run_dir = tmp_path / "run"
    args = ["train.py", "--config", BASELINE, *tiny_overrides(tiny_data, str(run_dir)), "train.iters=3"]
    r = run_cli(*args, "train.stop_after=3")
    assert r.returncode == 3, r.stderr
    r = run_cli(*args, "train.resume=auto")
    assert r.returncode == 0, r.stderr
    final = torch.load(run_dir / "model" / "final.pth", weights_only=True)
    assert final["iteration"] == 3 and "iter 4" not in r.stdout
    assert_same_weights(run_dir / "model" / "final.pth", run_dir / "model" / "last.pth")


@pytest.mark.slow
def test_final_pth_is_the_network_and_last_pth_the_resume(tiny_data, tmp_path):
    """A finished run's final.pth is what test.py, teacher.checkpoint and export read (meta, weights, config,
    iteration) without what only a resume reads, which last.pth keeps: resuming from final.pth is a one-line error
    that points at last.pth, and nothing in the run is rewritten by it."""
    from engine.state import RESUME_KEYS, RESUME_ONLY

    run_dir = tmp_path / "run"
    args = ["train.py", "--config", BASELINE, *tiny_overrides(tiny_data, str(run_dir)), "train.iters=2"]
    assert run_cli(*args).returncode == 0
    final_path, last_path = run_dir / "model" / "final.pth", run_dir / "model" / "last.pth"
    final, last = load_checkpoint(str(final_path)), load_checkpoint(str(last_path))
    assert not set(final) & set(RESUME_ONLY) and set(RESUME_KEYS) <= set(last)
    assert {k: v for k, v in last.items() if k not in RESUME_ONLY and k != "model"} == \
        {k: v for k, v in final.items() if k != "model"}  # the same meta, config, epoch and iteration
    assert_same_weights(final_path, last_path)
    optimizer_bytes = sum(t.numel() * t.element_size() for s in last["optimizer"]["state"].values()
                          for t in s.values() if torch.is_tensor(t))
    assert optimizer_bytes > 0 and final_path.stat().st_size < last_path.stat().st_size - 0.9 * optimizer_bytes
    before = {p.name: p.read_bytes() for p in (final_path, last_path)}
    r = run_cli(*args, f"train.resume={final_path}")
    assert r.returncode != 0
    assert (f"{final_path}: not a segkd last.pth (missing optimizer, scaler, scheduler, rng) - cannot resume from "
            "it; a final.pth holds the network only: resume from the run's model/last.pth") in r.stderr
    assert {p.name: p.read_bytes() for p in (final_path, last_path)} == before


@pytest.mark.slow
def test_distilled_adamw_run_resumes_exactly(tiny_data, tmp_path):
    """The CPU benchmark's recipe (AdamW, linear warmup, zero-initialised residual BNs; KD and aux KL from a
    frozen teacher, R18 here to keep it short) on 4 images (2 iterations an epoch), stopped inside the warmup of
    the first epoch and resumed across the epoch's end: the student and the AdamW state (moments, step counts,
    learning rates) of last.pth are bitwise the uninterrupted run's (final.pth: the weights, also equal)."""
    from tests.test_bad_inputs import run_in_process

    teacher = str(tmp_path / "teacher.pth")
    torch.manual_seed(1)
    save_checkpoint({"format": "segkd", "mode": "supervised", "layers": 18, "classes": TINY_CLASSES,
                     "model": build_pspnet(18, TINY_CLASSES).state_dict()}, teacher)
    train_list = tmp_path / "train4.txt"
    with open(os.path.join(tiny_data, "list", "train_aug.txt")) as f:
        train_list.write_text("".join(f.readlines()[:4]))

    def args(run_dir, *extra):
        return ["--config", "config/synthetic_cpu/pspnet18_kd_aux_kl.yaml", *tiny_overrides(tiny_data, str(run_dir)),
                f"data.train_list={train_list}", "data.names=null", "teacher.layers=18",
                f"teacher.checkpoint={teacher}", "train.crop_size=33", "train.iters=3", "train.warmup_iters=2", *extra]

    r = run_in_process(args(tmp_path / "straight"))
    assert r.returncode == 0, r.stderr
    assert run_in_process(args(tmp_path / "resumed", "train.stop_after=1")).returncode == 3
    r = run_in_process(args(tmp_path / "resumed", "train.resume=auto"))
    assert r.returncode == 0, r.stderr
    assert "resumed from" in r.stdout and "at iteration 1/3" in r.stdout and "epoch 2/2 iter 3/3" in r.stdout
    a, b = (load_checkpoint(str(tmp_path / name / "model" / "last.pth")) for name in ("straight", "resumed"))
    assert a["mode"] == "distill" and a["config"]["train"]["optimizer"] == "adamw" and a["iteration"] == 3
    assert_same_weights(tmp_path / "straight" / "model" / "final.pth", tmp_path / "resumed" / "model" / "final.pth")
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys() and {"exp_avg", "exp_avg_sq", "step"} <= set(sa[0])
    assert [(i, k) for i in sa for k in sa[i] if not torch.equal(sa[i][k], sb[i][k])] == []
    assert float(sa[0]["step"]) == 3


# ---------------------------------------------------------------- checkpoint writes
def small_state(value):
    return {"format": "segkd", "model": {"w": torch.full((4,), float(value))}, "iteration": value}


@pytest.mark.parametrize("how", ["dev_full", "enospc"])
def test_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch, how):
    path = str(tmp_path / "model" / "last.pth")
    save_checkpoint(small_state(1), path)
    if how == "dev_full":  # a real ENOSPC from the kernel, through torch.save's own writes
        if not os.path.exists("/dev/full"):
            pytest.skip("no /dev/full")
        real_open = open
        monkeypatch.setattr(ckpt_module, "open", lambda p, mode: real_open("/dev/full", mode), raising=False)
    else:
        def no_space(*args, **kwargs):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(torch, "save", no_space)
    with pytest.raises(SegKDError, match=r"last\.pth: could not write checkpoint \(No space left on device\); "
                                         r"the previous checkpoint is intact"):
        save_checkpoint(small_state(2) | {"model": {"w": torch.zeros(1 << 20)}}, path)
    assert load_checkpoint(path)["iteration"] == 1
    assert sorted(os.listdir(tmp_path / "model")) == ["last.pth"]


def test_crash_in_the_middle_of_a_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = str(tmp_path / "last.pth")
    save_checkpoint(small_state(1), path)

    def dies_halfway(obj, f):
        f.write(b"PK\x03\x04 half of a zip")
        raise KeyboardInterrupt  # as abrupt as it gets in-process

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(small_state(2), path)
    assert load_checkpoint(path)["iteration"] == 1
    assert os.listdir(tmp_path) == ["last.pth"]


def test_a_stale_tmp_is_replaced_never_written_through(tmp_path):
    path = tmp_path / "last.pth"
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    os.symlink(victim, f"{path}.tmp")
    save_checkpoint(small_state(3), str(path))
    assert victim.read_text() == "keep me" and not os.path.lexists(f"{path}.tmp")
    (tmp_path / "last.pth.tmp").write_bytes(b"garbage from a killed write")
    save_checkpoint(small_state(4), str(path))
    assert load_checkpoint(str(path))["iteration"] == 4 and not os.path.exists(f"{path}.tmp")


# ---------------------------------------------------------------- data loader workers
class _Samples(Dataset):
    """Sample 1 is bad; sample 0 sends SIGTERM to the worker reading it (as a process-group signal would)."""

    def __len__(self):
        return 2

    def __getitem__(self, i):
        if i == 1:
            raise SegKDError("/data/img/b.jpg: cannot read image (truncated)")
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)  # a default SIGTERM would kill the worker here
        return torch.zeros(1)


@pytest.mark.slow  # a DataLoader worker process
def test_worker_error_is_one_line():
    loader = DataLoader(_Samples(), batch_size=None, sampler=[1], num_workers=1)
    shield_workers(loader)
    it = iter(loader)
    with pytest.raises(SegKDError) as caught:
        next(it)
    assert any(w.is_alive() for w in it._workers)  # left alone, the iterator's shutdown waits 5 s per join
    release_workers(it)
    assert not any(w.is_alive() for w in it._workers)
    assert "Traceback" in str(caught.value)  # DataLoader's re-raise carries the worker's traceback...
    assert worker_error_line(caught.value) == "/data/img/b.jpg: cannot read image (truncated)"  # ...we cut it
    assert worker_error_line(SegKDError("plain: message")) == "plain: message"


@pytest.mark.slow  # a DataLoader worker process
def test_shielded_workers_survive_a_group_sigterm():
    loader = DataLoader(_Samples(), batch_size=None, sampler=[0, 0], num_workers=1)
    shield_workers(loader)
    shield_workers(loader)  # idempotent
    assert [float(x) for x in loader] == [0.0, 0.0]


# ---------------------------------------------------------------- run directory
def test_runlog_writes_nothing_before_its_first_message_and_repairs_a_cut_line(tmp_path, monkeypatch):
    from engine import rundir

    monkeypatch.setattr(rundir, "git_commit", lambda: "c0ffee (stub)")  # no git subprocess: a fast test
    cfg = load_config(os.path.join(REPO, BASELINE), [f"output.dir={tmp_path / 'run'}"])
    log = RunLog(str(tmp_path / "run"), cfg)
    log.error("a check failed before the run started")
    log.close()
    assert not (tmp_path / "run").exists()

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text('{"kind": "train", "iteration": 1}\n{"kind": "tra')
    log = RunLog(str(tmp_path / "run"), cfg)
    log.scalars(2, {"loss": math.pi})
    log.error("stopped")
    log.close()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [row["iteration"] for row in rows] == [1, 2]
    assert "error: stopped" in (tmp_path / "run" / "train.log").read_text()
    assert (tmp_path / "run" / "config.yaml").exists()
    assert " c0ffee (stub) " in (tmp_path / "run" / "git_commit.txt").read_text()


EXIT_SCRIPT = """
import sys
sys.path.insert(0, {repo!r})
from torch.utils.data import DataLoader, Dataset
from util.errors import SegKDError
from engine.preemption import shield_workers

class Bad(Dataset):
    def __len__(self):
        return 1

    def __getitem__(self, i):
        raise SegKDError("bad sample")

loader = DataLoader(Bad(), batch_size=None, sampler=[0], num_workers=1)
shield_workers(loader)
it = iter(loader)
try:
    next(it)
except SegKDError as e:
    kept = e  # the traceback keeps the iterator and its SIGTERM-proof worker alive until exit
print("exiting", flush=True)
"""


@pytest.mark.slow  # a subprocess
def test_shielded_workers_do_not_hang_interpreter_exit(tmp_path):
    script = tmp_path / "exit.py"
    script.write_text(EXIT_SCRIPT.format(repo=REPO))
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "exiting" in r.stdout
    assert "Traceback" not in r.stderr


@pytest.mark.slow  # trains (in-process train.main)
def test_nonfinite_loss_found_at_a_later_flush_names_its_own_iteration(tiny_data, tmp_path):
    """Loss terms reach the host every train.log_every iterations (and before each checkpoint): a term that
    went non-finite in between is still reported at the iteration it happened, and nothing is written."""
    from tests.test_bad_inputs import run_in_process

    found = {}
    for name, extra in (("every", ["train.checkpoint_every=1"]),
                        ("window", ["train.checkpoint_every=100", "train.log_every=5"])):
        run_dir = tmp_path / name
        r = run_in_process(train_args(tiny_data, run_dir, "train.base_lr=1.0e+30", *extra)[1:])
        assert r.returncode == 2, r.stderr
        found[name] = re.search(r"error: iteration (\d+): loss term '\w+' is (nan|inf|-inf); stopping, (.*)", r.stderr)
        assert found[name], r.stderr
    step = int(found["every"].group(1))
    assert step < 5 and int(found["window"].group(1)) == step  # found at the flush of iteration 5
    assert found["window"].group(3) == "no checkpoint was written yet"
    assert not (tmp_path / "window" / "model" / "last.pth").exists()
