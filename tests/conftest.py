"""Shared fixtures: a tiny generated dataset in VOC's layout and helpers to run the CLIs. And the fast tier's
promise, enforced: a test that starts a process or trains must be marked ``slow`` (see :func:`forbid_slow_work`)."""

import contextlib
import multiprocessing.process
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CLASSES = 4
# What a `make test` session needs free where pytest keeps its temporary folders: the R18/R50 checkpoints of the
# slow tests (when each final.pth still held the optimizer state too) peaked at 4.9 GB there (`du` every 5 s, AMD VM,
# 2026-12-02) with tmp_path_retention_policy = "failed" (pyproject.toml), against 15 GB left behind by a session
# without it; 8 GB leaves room for a failing test's kept folders. SEGKD_TEST_MIN_FREE_GB=0 turns the check off.
MIN_FREE_GB = float(os.environ.get("SEGKD_TEST_MIN_FREE_GB", "8"))
# The tests outside the slow tier draw initial weights from a pool (tests/fast_init.py); 0 gives them torch's own.
FAST_INIT = os.environ.get("SEGKD_TEST_FAST_INIT", "1") != "0"


def pytest_sessionstart(session):
    """Stop before the first test, in one line, when the temporary folder's disk cannot hold the session: a full
    disk makes dozens of tests error at once and can leave one hanging, which says nothing about the code."""
    if hasattr(session.config, "workerinput"):  # an xdist worker: the controller has checked
        return
    basetemp = session.config.getoption("basetemp", None) or tempfile.gettempdir()
    where = basetemp if os.path.isdir(basetemp) else os.path.dirname(os.path.abspath(basetemp))
    free_gb = shutil.disk_usage(where).free / 1e9
    if MIN_FREE_GB > 0 and free_gb < MIN_FREE_GB:
        pytest.exit(f"{where}: {free_gb:.1f} GB free, the test session needs about {MIN_FREE_GB:g} GB for its "
                    "checkpoints; free space, point TMPDIR (or --basetemp) elsewhere, or set "
                    "SEGKD_TEST_MIN_FREE_GB", returncode=3)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """12 train / 4 val images, 4 classes, generated once per test session."""
    from tools.synthetic import generate

    root = str(tmp_path_factory.mktemp("tiny") / "synthetic")
    generate(root, train=12, val=4, classes=TINY_CLASSES, seed=0, workers=1)
    return root


def tiny_overrides(root: str, run_dir: str) -> list:
    """A few seconds per iteration on a CPU: 65-pixel crops, batch 2, no workers."""
    return [f"data.root={root}", f"data.classes={TINY_CLASSES}", "train.batch_size=2", "train.crop_size=65",
            "train.workers=0", "train.log_every=1", "test.base_size=80", "test.crop_size=65",
            f"output.dir={run_dir}"]


def run_cli(*args, env=None, timeout=600):
    """Run a repo script or module with this interpreter; returns the CompletedProcess."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, env=full_env,
                          timeout=timeout)


# ---------------------------------------------------------------- what `make test-fast` skips
FONT_PROBES = {"fc-list"}  # what matplotlib.font_manager runs when it has no font cache yet


class NotMarkedSlow(Exception):
    """A test outside the slow tier started a process or a training step."""


@contextlib.contextmanager
def forbid_slow_work(test: str):
    """Inside, starting a process (``subprocess``, hence ``torchrun`` and any script; ``multiprocessing``: pools,
    ``spawn``, DataLoader workers; ``os.fork``) or a training step (``engine.trainer.Trainer.step``, also through
    ``train.main`` in-process) raises :class:`NotMarkedSlow` naming ``test``. Yields the list of what was tried,
    so a caller can fail a test that caught the exception."""
    from engine.trainer import Trainer

    tried: list = []

    def refuse(what):
        def stop(*args, **kwargs):
            tried.append(what)
            raise NotMarkedSlow(f"{test} {what}: mark it @pytest.mark.slow (make test-fast must skip it)")
        return stop

    start_child = subprocess.Popen._execute_child
    refuse_child = refuse("starts a subprocess")

    def execute_child(popen, args, *rest, **kwargs):
        # matplotlib's first figure on a machine lists the fonts with fontconfig's fc-list, once, and caches them
        # (~/.cache/matplotlib): the library's setup, not the test's work
        first = args[0] if isinstance(args, (list, tuple)) and args else args
        if os.path.basename(str(first)) in FONT_PROBES:
            return start_child(popen, args, *rest, **kwargs)
        return refuse_child(popen, args, *rest, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(subprocess.Popen, "_execute_child", execute_child)
        mp.setattr(multiprocessing.process.BaseProcess, "start", refuse("starts a multiprocessing process"))
        mp.setattr(os, "fork", refuse("forks"))
        mp.setattr(Trainer, "step", refuse("runs a training step"))
        yield tried


def _unless_slow(item):
    """Run a test phase under :func:`forbid_slow_work` and with the pool's initial weights
    (:func:`tests.fast_init.patched`) unless the test is marked slow. A ``long`` test must be
    ``slow`` too (make test-fast skips every test that starts a process or trains)."""
    if item.get_closest_marker("long") is not None and item.get_closest_marker("slow") is None:
        raise NotMarkedSlow(f"{item.nodeid}: marked long but not slow; mark it @pytest.mark.slow too")
    if item.get_closest_marker("slow") is not None:
        return (yield)
    from tests import fast_init  # here, not at the top: the xdist controller, which runs no test, never imports torch

    with forbid_slow_work(item.nodeid) as tried, (fast_init.patched() if FAST_INIT else contextlib.nullcontext()):
        result = yield
    if tried:  # raised, then caught by the code under test: still the test's doing
        raise NotMarkedSlow(f"{item.nodeid} {tried[0]}: mark it @pytest.mark.slow (make test-fast must skip it)")
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    return (yield from _unless_slow(item))  # fixtures too: a fixture that trains makes its tests slow


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    return (yield from _unless_slow(item))
