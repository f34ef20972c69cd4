"""The fast tier (``make test-fast``, ``-m "not slow"``) skips exactly the tests that start a process or train:
tests/conftest.py runs every other test under ``forbid_slow_work``, which refuses both. Checked here without
starting anything: each refusal comes before the process or the step exists."""

import multiprocessing
import multiprocessing.process
import os
import shutil
import subprocess
import sys

import pytest
import torch
from torch.utils.data import DataLoader

from engine.trainer import Trainer
from tests.conftest import NotMarkedSlow, _unless_slow, forbid_slow_work

# taken at collection, outside any test phase: the real methods
REAL = {"popen": subprocess.Popen._execute_child, "start": multiprocessing.process.BaseProcess.start,
        "fork": os.fork, "step": Trainer.step}


def current():
    return {"popen": subprocess.Popen._execute_child, "start": multiprocessing.process.BaseProcess.start,
            "fork": os.fork, "step": Trainer.step}


def test_a_test_outside_the_slow_tier_runs_guarded():
    assert all(current()[k] is not REAL[k] for k in REAL)


@pytest.mark.slow
def test_a_slow_test_runs_unguarded():
    assert all(current()[k] is REAL[k] for k in REAL)


def test_every_way_of_starting_work_is_refused_before_it_starts(tmp_path):
    marker = tmp_path / "ran"
    with forbid_slow_work("t") as tried:
        with pytest.raises(NotMarkedSlow, match=r"^t starts a subprocess: mark it @pytest.mark.slow"):
            subprocess.run([sys.executable, "-c", f"open({str(marker)!r}, 'w')"])
        with pytest.raises(NotMarkedSlow, match="starts a multiprocessing process"):
            multiprocessing.get_context("spawn").Process(target=os.getpid).start()
        with pytest.raises(NotMarkedSlow, match="starts a multiprocessing process"):
            next(iter(DataLoader(torch.arange(2), num_workers=1)))
        with pytest.raises(NotMarkedSlow, match="forks"):
            os.fork()
        with pytest.raises(NotMarkedSlow, match="runs a training step"):
            Trainer.step(None, torch.zeros(1), torch.zeros(1))
    assert tried == ["starts a subprocess", "starts a multiprocessing process", "starts a multiprocessing process",
                     "forks", "runs a training step"]
    assert not marker.exists()  # the child never ran
    assert all(current()[k] is not REAL[k] for k in REAL)  # this test's own guard is back in place
    with forbid_slow_work("t") as tried:
        assert [int(x) for x in DataLoader(torch.arange(2), num_workers=0)] == [0, 1]  # in-process: allowed
    assert tried == []


class Item:
    """What _unless_slow reads of a pytest item."""

    def __init__(self, slow):
        self.nodeid, self.slow = "tests/x.py::t", slow

    def get_closest_marker(self, name):
        return object() if self.slow and name == "slow" else None


def drive(item, phase):
    """Run ``phase`` as the test phase ``_unless_slow(item)`` wraps (the conftest hooks' generator)."""
    gen = _unless_slow(item)
    next(gen)
    phase()
    try:
        gen.send("result")
    except StopIteration as done:
        return done.value
    raise AssertionError("the wrapper yields once")


def swallowed():
    try:
        subprocess.run([sys.executable, "-c", "pass"])
    except Exception:
        pass  # code under test that catches everything still does not hide the attempt


def test_an_attempt_caught_by_the_code_under_test_still_fails_the_test():
    with pytest.raises(NotMarkedSlow, match=r"^tests/x.py::t starts a subprocess"):
        drive(Item(slow=False), swallowed)
    assert drive(Item(slow=False), lambda: None) == "result"


def test_slow_items_are_not_wrapped_and_others_are():
    outer = current()  # this (unmarked) test's own guard

    def unwrapped():
        assert current() == outer

    def wrapped():
        assert all(current()[k] is not outer[k] for k in outer)

    assert drive(Item(slow=True), unwrapped) == "result"
    assert drive(Item(slow=False), wrapped) == "result"


def test_a_long_test_must_be_slow_too():
    """make test skips `long`, make test-fast skips `slow`: a long test that is not slow would run in the fast
    tier."""
    from types import SimpleNamespace

    item = SimpleNamespace(nodeid="t", get_closest_marker=lambda name: object() if name == "long" else None)
    with pytest.raises(NotMarkedSlow, match="marked long but not slow"):
        next(_unless_slow(item))


def test_make_test_and_test_long_split_the_suite_by_the_long_marker():
    with open(os.path.join(os.path.dirname(os.path.dirname(__file__)), "Makefile")) as f:
        text = f.read()
    assert '-m "not long"' in text.split("\ntest:")[1].split("\n\n")[0]
    assert "-m long" in text.split("\ntest-long:")[1].split("\n\n")[0]


@pytest.mark.skipif(shutil.which("fc-list") is None, reason="no fontconfig on this machine")
def test_matplotlib_may_list_the_fonts_when_it_has_no_font_cache():
    """A fresh machine has no ~/.cache/matplotlib: the first figure runs fc-list to find the fonts. That is the
    library's setup, so the guard lets it through (the fast tier failed on a new VM without it), and only it."""
    from matplotlib import font_manager

    font_manager._get_fontconfig_fonts.cache_clear()  # as if no process had asked yet: fc-list runs
    with forbid_slow_work("t") as tried:
        fonts = font_manager.findSystemFonts()
        with pytest.raises(NotMarkedSlow, match="starts a subprocess"):
            subprocess.run(["sh", "-c", "fc-list"])
    assert fonts and tried == ["starts a subprocess"]
