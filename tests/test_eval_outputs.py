"""What test.py writes into metrics.json, in-process on a fabricated checkpoint (random R18 weights, the tiny
dataset, no loader processes): the GFLOPs of what evaluation computes."""

import importlib.util
import json
import os

import pytest
import torch

from engine.flops import gflops
from model.pspnet import build_pspnet
from tests.conftest import REPO, TINY_CLASSES, tiny_overrides
from util.checkpoint import save_checkpoint
from util.config import load_config
from util.distributed import DistInfo

# test.py is not importable as "test" (the standard library owns that name): load it from its path.
_spec = importlib.util.spec_from_file_location("segkd_test_cli", os.path.join(REPO, "test.py"))
segkd_test = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(segkd_test)

CONFIG = os.path.join(REPO, "config/synthetic/pspnet18_baseline.yaml")
CPU = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))


def fake_checkpoint(path, layers=18):
    """A checkpoint as train.py writes it (format, mode, depth, classes, weights, iteration, config), untrained."""
    torch.manual_seed(0)
    model = build_pspnet(layers, TINY_CLASSES)
    cfg = load_config(CONFIG, [f"data.classes={TINY_CLASSES}", f"model.layers={layers}"])
    save_checkpoint({"format": "segkd", "mode": "supervised", "layers": layers, "classes": TINY_CLASSES,
                     "model": model.state_dict(), "iteration": 7, "config": cfg.to_dict()}, str(path))
    return str(path)


def evaluate(tiny_data, run_dir, *extra):
    """test.py's run() with the tiny overrides, no loader processes and no prediction PNGs; its metrics."""
    cfg = load_config(CONFIG, [*tiny_overrides(tiny_data, str(run_dir)), "test.workers=0",
                               "test.save_predictions=false", *extra])
    with torch.inference_mode():
        return segkd_test.run(cfg, CPU)


def test_gflops_are_those_of_the_test_window_not_the_training_crop(tiny_data, tmp_path):
    """Training at 97, evaluating with 65 windows: metrics.json counts the 65 window (no aux head)."""
    run_dir = tmp_path / "run"
    fake_checkpoint(run_dir / "model" / "final.pth")
    metrics = evaluate(tiny_data, run_dir, "train.crop_size=97", "test.crop_size=65")
    assert metrics["gflops_crop_size"] == 65 == metrics["protocol"]["crop_size"]
    assert metrics["gflops"] == pytest.approx(gflops(18, TINY_CLASSES, 65))
    assert metrics["gflops"] < gflops(18, TINY_CLASSES, 97) * 0.6  # (65/97)^2 = 0.45: not the training crop
    with open(run_dir / "eval" / "ss" / "metrics.json", encoding="utf-8") as f:
        written = json.load(f)
    assert (written["gflops"], written["gflops_crop_size"]) == (metrics["gflops"], 65)
