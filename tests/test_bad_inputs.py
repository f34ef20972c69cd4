"""Every bad input to train.py: exit status 2, one line on stderr naming the culprit, no traceback, and
nothing written (output.dir absent, or unchanged when it existed). Plus safe loading: no code in a
checkpoint or a config is ever run.

The fast tier calls ``train.main`` in-process for every case (stdout and stderr captured, from the repository
root): the same code path as the command line without the ~3 s of imports a subprocess costs. The slow
tier runs a few cases and every checkpoint-role case as real ``train.py`` subprocesses (concurrently), which
also holds the promise that a bad input never prints a traceback.
"""

import ast
import contextlib
import hashlib
import io
import os
import pickle
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import REPO, TINY_CLASSES, run_cli, tiny_overrides
from util.checkpoint import load_checkpoint
from util.config import check_training, load_config, save_config
from util.distributed import DistInfo
from util.errors import SegKDError

BASELINE = "config/synthetic/pspnet18_baseline.yaml"
TEACHER = "config/synthetic/pspnet50_teacher.yaml"
KD = "config/synthetic/pspnet18_kd.yaml"
ENV = {"OMP_NUM_THREADS": "1"}


@dataclass
class Case:
    args: list  # train.py's arguments
    culprits: list  # each must appear in the error line
    run_dir: str  # must be left as it was (absent, or unchanged)
    absent: tuple = ()  # files a malicious payload would create


@dataclass
class Ctx:
    tiny: str  # the shared good dataset
    tmp: Path  # this case's own folder
    ckpts: dict  # trained checkpoints (slow cases only)

    def run(self, *extra, root=None, config=BASELINE):
        """Arguments for a baseline run into tmp/run on ``root`` (default: the good dataset)."""
        run_dir = str(self.tmp / "run")
        return ["--config", config, *tiny_overrides(root or self.tiny, run_dir), *extra], run_dir


FAST: dict[str, Callable[[Ctx], Case]] = {}
SLOW: dict[str, Callable[[Ctx], Case]] = {}


def case(registry, name):
    def register(fn):
        registry[name] = fn
        return fn
    return register


# ---------------------------------------------------------------- helpers
def snapshot(path):
    """Every entry under ``path`` with size, mtime and (small files) content hash; None if absent."""
    if not os.path.exists(path):
        return None
    out = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames:
            out[os.path.relpath(os.path.join(dirpath, name), path)] = "dir"
        for name in filenames:
            full = os.path.join(dirpath, name)
            st = os.stat(full)
            digest = hashlib.sha1(Path(full).read_bytes()).hexdigest() if st.st_size < 1 << 20 else ""
            out[os.path.relpath(full, path)] = (st.st_size, st.st_mtime_ns, digest)
    return out


def pair_root(tmp: Path, size=(80, 80), label_size=None, label_value=None, lines=None) -> str:
    """A two-sample dataset (one batch of 2: both samples are in the first batch); ``label_size`` and
    ``label_value`` spoil the second sample's label."""
    root = tmp / "data"
    (root / "img").mkdir(parents=True)
    (root / "lbl").mkdir()
    (root / "list").mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(root / "img" / f"{name}.jpg")
        h, w = (label_size if label_size and name == "b" else size)[::-1]
        label = rng.integers(0, TINY_CLASSES, (h, w), dtype=np.uint8)
        if label_value is not None and name == "b":
            label[0, 0] = label_value
        Image.fromarray(label, mode="L").save(root / "lbl" / f"{name}.png")
    text = "img/a.jpg lbl/a.png\nimg/b.jpg lbl/b.png\n" if lines is None else lines
    (root / "list" / "train.txt").write_text(text)
    return str(root)


class Evil:
    """Unpickling it calls open(marker, 'w'): it creates a file if a loader runs pickled code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


# ---------------------------------------------------------------- config
@case(FAST, "unknown_key")
def _(ctx):
    args, run_dir = ctx.run("train.epoch=2")
    return Case(args, ["train.epoch", "did you mean train.epochs"], run_dir)


@case(FAST, "wrong_type")
def _(ctx):
    args, run_dir = ctx.run("train.epochs=two")
    return Case(args, ["train.epochs", "'two'"], run_dir)


@case(FAST, "missing_config")
def _(ctx):
    args, run_dir = ctx.run(config=str(ctx.tmp / "nope.yaml"))
    return Case(args, [str(ctx.tmp / "nope.yaml"), "not found"], run_dir)


@case(FAST, "yaml_that_runs_code")
def _(ctx):
    marker, cfg = str(ctx.tmp / "pwned"), ctx.tmp / "evil.yaml"
    cfg.write_text(f"train:\n  epochs: !!python/object/apply:builtins.open ['{marker}', 'w']\n")
    args, run_dir = ctx.run(config=str(cfg))
    return Case(args, [str(cfg)], run_dir, absent=(marker,))


# ---------------------------------------------------------------- data
@case(FAST, "missing_root")
def _(ctx):
    args, run_dir = ctx.run(root=str(ctx.tmp / "no_data"))
    return Case(args, [str(ctx.tmp / "no_data")], run_dir)


@case(FAST, "missing_list")
def _(ctx):
    args, run_dir = ctx.run("data.train_list=list/nope.txt")
    return Case(args, ["list/nope.txt", "not found"], run_dir)


@case(FAST, "missing_image")
def _(ctx):
    root = pair_root(ctx.tmp, lines="img/a.jpg lbl/a.png\nimg/zz.jpg lbl/b.png\n")
    args, run_dir = ctx.run("data.train_list=list/train.txt", root=root)
    return Case(args, ["train.txt:2", "zz.jpg"], run_dir)


@case(FAST, "missing_label")
def _(ctx):
    root = pair_root(ctx.tmp, lines="img/a.jpg lbl/zz.png\nimg/b.jpg lbl/b.png\n")
    args, run_dir = ctx.run("data.train_list=list/train.txt", root=root)
    return Case(args, ["train.txt:1", "zz.png"], run_dir)


@case(FAST, "empty_list")
def _(ctx):
    root = pair_root(ctx.tmp, lines="\n")
    args, run_dir = ctx.run("data.train_list=list/train.txt", root=root)
    return Case(args, ["train.txt", "no samples"], run_dir)


@case(FAST, "unreadable_image")
def _(ctx):
    root = pair_root(ctx.tmp)
    Path(root, "img", "b.jpg").write_bytes(os.urandom(3000))
    args, run_dir = ctx.run("data.train_list=list/train.txt", root=root)
    return Case(args, [os.path.join(root, "img", "b.jpg")], run_dir)


@case(FAST, "truncated_image")
def _(ctx):
    root = pair_root(ctx.tmp)
    path = Path(root, "img", "a.jpg")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    args, run_dir = ctx.run("data.train_list=list/train.txt", root=root)
    return Case(args, [str(path), "truncated"], run_dir)


@case(FAST, "label_out_of_range")
def _(ctx):
    root = pair_root(ctx.tmp, label_value=9)
    args, run_dir = ctx.run("data.train_list=list/train.txt", root=root)
    return Case(args, [os.path.join(root, "lbl", "b.png"), "[9]"], run_dir)


@case(FAST, "image_label_sizes_differ")
def _(ctx):
    root = pair_root(ctx.tmp, label_size=(72, 80))
    args, run_dir = ctx.run("data.train_list=list/train.txt", root=root)
    return Case(args, ["img/b.jpg", "lbl/b.png", "80x80", "72x80"], run_dir)


# ---------------------------------------------------------------- files that are not checkpoints
@case(FAST, "teacher_random_bytes")
def _(ctx):
    path = ctx.tmp / "random.pth"
    path.write_bytes(os.urandom(4096))
    args, run_dir = ctx.run(f"teacher.checkpoint={path}")
    return Case(args, [str(path), "not a readable PyTorch checkpoint"], run_dir)


@case(FAST, "teacher_text_file")
def _(ctx):
    path = ctx.tmp / "notes.pth"
    path.write_text("these are not weights\n")
    args, run_dir = ctx.run(f"teacher.checkpoint={path}")
    return Case(args, [str(path), "not a readable PyTorch checkpoint"], run_dir)


@case(FAST, "teacher_torchvision_state_dict")
def _(ctx):
    import torchvision

    path = ctx.tmp / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    args, run_dir = ctx.run(f"teacher.checkpoint={path}")
    return Case(args, [str(path), "not a segkd checkpoint"], run_dir)


@case(FAST, "teacher_malicious_pickle")
def _(ctx):
    marker, path = str(ctx.tmp / "pwned"), ctx.tmp / "evil.pth"
    torch.save({"model": Evil(marker)}, path)
    args, run_dir = ctx.run(f"teacher.checkpoint={path}")
    return Case(args, [str(path), "refused by the safe loader", "io.open"], run_dir, absent=(marker,))


@case(FAST, "resume_text_file")
def _(ctx):
    path = ctx.tmp / "last.pth"
    path.write_text("not a checkpoint\n")
    args, run_dir = ctx.run(f"train.resume={path}")
    return Case(args, [str(path), "not a readable PyTorch checkpoint"], run_dir)


# ---------------------------------------------------------------- sizes
@case(FAST, "crop_too_small")
def _(ctx):
    args, run_dir = ctx.run("train.crop_size=16")
    return Case(args, ["train.crop_size=16"], run_dir)


@case(FAST, "batch_of_one")
def _(ctx):
    args, run_dir = ctx.run("train.batch_size=1")
    return Case(args, ["train.batch_size=1", "BatchNorm"], run_dir)


@case(FAST, "batch_larger_than_data")
def _(ctx):
    args, run_dir = ctx.run("train.batch_size=14")
    return Case(args, ["train_aug.txt", "train.batch_size=14"], run_dir)


# ---------------------------------------------------------------- output.dir
def existing_run(ctx, *overrides):
    """A run directory as train.py leaves it (config.yaml, a log), made without training."""
    args, run_dir = ctx.run(*overrides)
    os.makedirs(os.path.join(run_dir, "model"))
    save_config(load_config(os.path.join(REPO, BASELINE), args[2:]), os.path.join(run_dir, "config.yaml"))
    Path(run_dir, "train.log").write_text("[00:00:00] an earlier run\n")
    return run_dir


@case(FAST, "dir_holds_another_experiment")
def _(ctx):
    existing_run(ctx, "train.iters=5")
    args, run_dir = ctx.run("train.iters=6", "train.resume=auto")
    return Case(args, [run_dir, "different experiment", "train.iters"], run_dir)


@case(FAST, "dir_holds_other_files")
def _(ctx):
    args, run_dir = ctx.run()
    os.makedirs(run_dir)
    Path(run_dir, "notes.txt").write_text("mine\n")
    return Case(args, [run_dir, "notes.txt"], run_dir)


def resumable_run(ctx, total_iters, optimizer=None):
    """A baseline run of one 6-iteration epoch stopped at iteration 1, as train.py leaves it (config.yaml and
    model/last.pth, the trainer's own snapshot of the run's student and optimizer), made without training. The
    checkpoint says it was trained for ``total_iters``; ``optimizer`` (student -> optimizer) replaces the run's."""
    from engine.setup import build_optimizer
    from engine.state import Checkpoints
    from model.build import build_model, checkpoint_meta

    run_dir = existing_run(ctx, "train.epochs=1")
    args, _ = ctx.run("train.epochs=1", "train.resume=auto")
    cfg = load_config(os.path.join(REPO, BASELINE), args[2:])
    student = build_model(cfg)
    opt = optimizer(student) if optimizer else build_optimizer(student, cfg)
    info = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    checkpoints = Checkpoints(cfg, info, checkpoint_meta(cfg.model, cfg, "supervised"))
    state = checkpoints.snapshot(student, opt, torch.amp.GradScaler("cpu", enabled=False), 1, 0, total_iters)
    checkpoints.write("last.pth", state)
    return args, run_dir, os.path.join(run_dir, "model", "last.pth")


@case(FAST, "resume_trained_for_other_iterations")
def _(ctx):
    """The same config, but the train list has changed length since the checkpoint: its poly schedule no longer
    fits (16 images made 8 iterations an epoch, the 12 now 6)."""
    args, run_dir, last = resumable_run(ctx, total_iters=8)
    return Case(args, [last, "was trained for 8 iterations, this run has 6"], run_dir)


@case(FAST, "resume_optimizer_does_not_fit")
def _(ctx):
    """A last.pth whose optimizer has one parameter group (this run's has two: backbone and heads at 10x)."""
    args, run_dir, last = resumable_run(ctx, total_iters=6,
                                        optimizer=lambda student: torch.optim.SGD(student.parameters(), lr=0.01))
    return Case(args, [last, "optimizer state does not fit this run", "parameter groups"], run_dir)


# ---------------------------------------------------------------- trained checkpoints in the wrong place
@case(SLOW, "teacher_of_another_depth")
def _(ctx):
    args, run_dir = ctx.run(f"teacher.checkpoint={ctx.ckpts['teacher']}", "teacher.layers=101")
    return Case(args, [ctx.ckpts["teacher"], "PSPNet-R50", "teacher.layers=101"], run_dir)


@case(SLOW, "teacher_of_another_class_count")
def _(ctx):
    args, run_dir = ctx.run(f"teacher.checkpoint={ctx.ckpts['teacher']}", "data.classes=5")
    return Case(args, [ctx.ckpts["teacher"], "4 classes", "data.classes=5"], run_dir)


@case(SLOW, "student_as_teacher")
def _(ctx):
    args, run_dir = ctx.run(f"teacher.checkpoint={ctx.ckpts['student']}")
    return Case(args, [ctx.ckpts["student"], "distill", "not a supervised teacher"], run_dir)


@case(SLOW, "teacher_as_resume")
def _(ctx):
    args, run_dir = ctx.run(f"train.resume={ctx.ckpts['teacher']}", "train.iters=2")
    return Case(args, [ctx.ckpts["teacher"]], run_dir)


@case(SLOW, "student_as_resume_of_supervised_run")
def _(ctx):
    args, run_dir = ctx.run(f"train.resume={ctx.ckpts['student']}", "train.iters=2")
    return Case(args, [ctx.ckpts["student"], "distill PSPNet-R18", "supervised PSPNet-R18"], run_dir)


@case(SLOW, "resume_path_with_another_lr")
def _(ctx):
    """train.resume=PATH into a new output.dir: the optimizer state would keep the old lr, so refuse."""
    args, run_dir = ctx.run(f"train.resume={ctx.ckpts['student']}", "train.iters=2", "train.base_lr=0.05",
                            f"teacher.checkpoint={ctx.ckpts['teacher']}", config=KD)
    return Case(args, [ctx.ckpts["student"], "another config", "train.base_lr: 0.01 there, 0.05 now"], run_dir)


# ---------------------------------------------------------------- running and checking
def run_in_process(args):
    """``train.main(args)`` as the command line would run it: from the repository root, output captured."""
    import train

    out, err, cwd = io.StringIO(), io.StringIO(), os.getcwd()
    os.chdir(REPO)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = train.main(list(args))
    finally:
        os.chdir(cwd)
    return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def run_all(registry, tiny, tmp_root: Path, ckpts, in_process=False, names=None):
    prepared = {}
    for name, build in registry.items():
        if names is not None and name not in names:
            continue
        tmp = tmp_root / name
        tmp.mkdir()
        prepared[name] = build(Ctx(tiny, tmp, ckpts))
    before = {name: snapshot(c.run_dir) for name, c in prepared.items()}
    if in_process:  # one after the other: train.main owns process-wide state (cwd, streams, signals)
        return {name: (c, before[name], run_in_process(c.args)) for name, c in prepared.items()}
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 2)) as pool:
        futures = {name: pool.submit(run_cli, "train.py", *c.args, env=ENV, timeout=300)
                   for name, c in prepared.items()}
        return {name: (prepared[name], before[name], f.result()) for name, f in futures.items()}


def check(c: Case, before, r):
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for culprit in c.culprits:
        assert culprit in lines[0], culprit
    assert snapshot(c.run_dir) == before, "the failed run wrote into output.dir"
    for path in c.absent:
        assert not os.path.exists(path), f"{path}: a payload ran"


# The cases also run as real subprocesses in the slow tier (a traceback would show there).
SUBPROCESS_CASES = ("unknown_key", "yaml_that_runs_code", "resume_text_file", "crop_too_small")


@pytest.fixture(scope="module")
def fast_results(tiny_data, tmp_path_factory):
    return run_all(FAST, tiny_data, tmp_path_factory.mktemp("bad_fast"), {}, in_process=True)


@pytest.fixture(scope="module")
def subprocess_results(tiny_data, tmp_path_factory):
    return run_all(FAST, tiny_data, tmp_path_factory.mktemp("bad_sub"), {}, names=SUBPROCESS_CASES)


@pytest.fixture(scope="module")
def ckpts(tiny_data, tmp_path_factory):
    """A supervised R50 teacher and an R18 student distilled from it, 2 iterations each at crop 65 (in this
    process: a subprocess would add its imports, ~6 s, to each)."""
    tmp = tmp_path_factory.mktemp("ckpts")
    teacher, student = str(tmp / "teacher"), str(tmp / "student")
    r = run_in_process(["--config", TEACHER, *tiny_overrides(tiny_data, teacher), "train.iters=2"])
    assert r.returncode == 0, r.stderr
    t_ckpt = os.path.join(teacher, "model", "final.pth")
    r = run_in_process(["--config", KD, *tiny_overrides(tiny_data, student), "train.iters=2",
                        f"teacher.checkpoint={t_ckpt}"])
    assert r.returncode == 0, r.stderr
    return {"teacher": t_ckpt, "student": os.path.join(student, "model", "last.pth")}


@pytest.fixture(scope="module")
def slow_results(tiny_data, ckpts, tmp_path_factory):
    """In this process, as the fast cases (each stops before training; the subprocess cases above show a
    refusal is one line on a real stderr too)."""
    return run_all(SLOW, tiny_data, tmp_path_factory.mktemp("bad_slow"), ckpts, in_process=True)


@pytest.mark.parametrize("name", list(FAST))
def test_bad_input(name, fast_results):
    check(*fast_results[name])


@pytest.mark.slow
@pytest.mark.parametrize("name", SUBPROCESS_CASES)
def test_bad_input_as_a_subprocess(name, subprocess_results):
    check(*subprocess_results[name])


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SLOW))
def test_bad_checkpoint_role(name, slow_results):
    check(*slow_results[name])


@pytest.mark.slow
def test_resume_path_into_a_new_folder_with_the_same_config(tiny_data, ckpts, tmp_path):
    """The same training; how it is evaluated (test.*, as scripts/table.sh's TEST_EXTRA) may differ, as the run
    folder's own check (engine/rundir.py) allows."""
    run_dir = str(tmp_path / "moved")
    r = run_in_process(["--config", KD, *tiny_overrides(tiny_data, run_dir), "train.iters=2",
                        f"teacher.checkpoint={ckpts['teacher']}", f"train.resume={ckpts['student']}",
                        "test.batch_size=4", "test.flip=true"])
    assert r.returncode == 0, r.stderr
    with open(os.path.join(run_dir, "train.log"), encoding="utf-8") as f:
        log = f.read()
    line = next(line for line in log.splitlines() if "resume: evaluated with other test.* keys than before (" in line)
    assert "test.batch_size: 1 there, 4 now" in line and "test.flip: False there, True now" in line
    assert os.path.isfile(os.path.join(run_dir, "model", "final.pth"))


def test_batch_size_the_processes_cannot_take():
    cfg = load_config(os.path.join(REPO, BASELINE), ["output.dir=runs/x", "train.batch_size=3"])
    two = DistInfo(rank=0, local_rank=0, world_size=2, device=torch.device("cpu"))
    with pytest.raises(SegKDError, match=r"train.batch_size=3 is not divisible by the 2 processes"):
        check_training(cfg, two.world_size, False, "cpu")
    cfg = load_config(os.path.join(REPO, BASELINE), ["output.dir=runs/x", "train.batch_size=2"])
    with pytest.raises(SegKDError, match=r"train.batch_size=2 gives 1 image per process"):
        check_training(cfg, two.world_size, False, "cpu")


def test_a_missing_teacher_stops_the_run_before_the_student_is_built(tiny_data, tmp_path, monkeypatch):
    """A mistyped teacher.checkpoint is the run's first error: not after the student's ImageNet weights (a download
    where there is no cache) and the loader's workers; nothing is written."""
    import engine.setup

    built = []
    monkeypatch.setattr(engine.setup, "build_model", lambda *a, **k: built.append(a) or pytest.fail("built"))
    monkeypatch.setattr(engine.setup, "build_train_loader", lambda *a, **k: built.append(a) or pytest.fail("loader"))
    run_dir, missing = str(tmp_path / "run"), str(tmp_path / "runs" / "t" / "final.pth")
    r = run_in_process(["--config", KD, *tiny_overrides(tiny_data, run_dir), f"teacher.checkpoint={missing}"])
    assert r.returncode == 2 and r.stderr == f"error: {missing}: teacher.checkpoint not found\n"
    assert built == [] and not os.path.exists(run_dir)


# ---------------------------------------------------------------- safe loading
def test_malicious_checkpoint_is_refused(tmp_path):
    for fmt in ("zip", "raw_pickle"):
        marker, path = tmp_path / f"pwned_{fmt}", tmp_path / f"evil_{fmt}.pth"
        if fmt == "zip":
            torch.save({"model": Evil(str(marker))}, path)
        else:
            path.write_bytes(pickle.dumps({"model": Evil(str(marker))}, protocol=2))
        with pytest.raises(SegKDError, match=r"not a readable PyTorch checkpoint \(refused by the safe loader"):
            load_checkpoint(str(path))
        assert not marker.exists()
    # the payload is live: an unsafe load does run it (so the refusal above is what protects)
    live = tmp_path / "live"
    torch.save({"model": Evil(str(live))}, tmp_path / "live.pth")
    torch.load(tmp_path / "live.pth", weights_only=False)
    assert live.exists()


UNSAFE_CALLS = {("yaml", "unsafe_load"), ("yaml", "full_load"), ("yaml", "unsafe_load_all"),
                ("yaml", "full_load_all"), ("pickle", "load"), ("pickle", "loads"), ("torch.hub", "load"),
                ("marshal", "loads"), ("dill", "load"), ("dill", "loads")}


def _dotted(node) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _kw(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def unsafe_loads(source: str) -> list:
    """(line, reason) of each call that could run code from a file: torch.load without
    weights_only=True, yaml.load without a safe loader, pickle/marshal loads, eval/exec."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        owner, _, attr = name.rpartition(".")
        weights_only = _kw(node, "weights_only")
        if name in ("torch.load", "torch.hub.load_state_dict_from_url") and not (
                isinstance(weights_only, ast.Constant) and weights_only.value is True):
            found.append((node.lineno, f"{name} without weights_only=True"))
        elif name in ("yaml.load", "yaml.load_all"):
            loader = _kw(node, "Loader") or (node.args[1] if len(node.args) > 1 else None)
            if _dotted(loader) not in ("yaml.SafeLoader", "yaml.CSafeLoader"):
                found.append((node.lineno, f"{name} without yaml.SafeLoader"))
        elif (owner, attr) in UNSAFE_CALLS or name in ("eval", "exec"):
            found.append((node.lineno, name))
        elif name in ("np.load", "numpy.load"):
            allow = _kw(node, "allow_pickle")
            if isinstance(allow, ast.Constant) and allow.value:
                found.append((node.lineno, f"{name} with allow_pickle=True"))
    return found


def test_unsafe_loads_are_detected():
    bad = ("torch.load(p)\ntorch.load(p, weights_only=False)\nyaml.load(f)\nyaml.load(f, Loader=yaml.Loader)\n"
           "yaml.unsafe_load(f)\npickle.loads(b)\neval(s)\nnp.load(p, allow_pickle=True)\n")
    assert [line for line, _ in unsafe_loads(bad)] == list(range(1, 9))
    good = "torch.load(p, map_location='cpu', weights_only=True)\nyaml.safe_load(f)\nyaml.load(f, yaml.SafeLoader)\n"
    assert unsafe_loads(good) == []


def test_repo_loads_nothing_unsafely():
    problems = []
    for dirpath, dirnames, filenames in os.walk(REPO):
        rel = os.path.relpath(dirpath, REPO)
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and not (rel == "." and d in ("tests", "runs"))]
        for name in filenames:
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                source = Path(path).read_text(encoding="utf-8")
                problems += [f"{os.path.relpath(path, REPO)}:{line}: {why}" for line, why in unsafe_loads(source)]
    assert problems == []


def test_pair_root_is_a_valid_dataset(tmp_path):
    """The bad-data cases are built by spoiling this dataset: unspoilt, it must load."""
    from data.dataset import SegDataset

    root = pair_root(tmp_path)
    ds = SegDataset(root, "list/train.txt", TINY_CLASSES)
    assert len(ds) == 2 and ds[1][0].shape == (3, 80, 80) and int(ds[1][1].max()) < TINY_CLASSES
    shutil.rmtree(root)


@pytest.mark.parametrize("refusal", ["Unsupported class io.open",  # torch 2.3, the floor
                                     "Unsupported global: GLOBAL io.open was not an allowed global by default"])
def test_the_refused_global_is_named_in_both_wordings(tmp_path, monkeypatch, refusal):
    path = tmp_path / "evil.pth"
    path.write_bytes(b"PK")

    def refuse(*args, **kwargs):
        raise pickle.UnpicklingError("Weights only load failed. Re-running `torch.load` with `weights_only` set to "
                                     f"`False` will likely succeed ... WeightsUnpickler error: {refusal}")

    monkeypatch.setattr(torch, "load", refuse)
    with pytest.raises(SegKDError, match=r"weights_only=True: it would import io\.open\)$"):
        load_checkpoint(str(path))
