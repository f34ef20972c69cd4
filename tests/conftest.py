"""Shared fixtures: a tiny generated dataset in VOC's layout and helpers to run the CLIs."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CLASSES = 4


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
