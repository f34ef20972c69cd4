"""Where test.py writes and what metrics.json says, in-process on a fabricated checkpoint (random R18 weights,
the tiny dataset, no loader processes): another run's checkpoint is evaluated into that run, metrics.json names
the checkpoint (scripts/make_table.py refuses it in another run's folder), GFLOPs of what evaluation computes."""

import importlib.util
import json
import os
import sys

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
    """test.py's run() with the tiny overrides on the first val image, one window (long side 64 < crop 65), no
    loader processes and no prediction PNGs; its metrics."""
    with open(os.path.join(tiny_data, "list", "val.txt"), encoding="utf-8") as f:
        first = f.readline()
    one = os.path.join(os.path.dirname(str(run_dir)), "one_image.txt")
    os.makedirs(os.path.dirname(one), exist_ok=True)
    with open(one, "w", encoding="utf-8") as f:
        f.write(first)
    cfg = load_config(CONFIG, [*tiny_overrides(tiny_data, str(run_dir)), "test.base_size=64", f"test.list={one}",
                               "test.workers=0", "test.save_predictions=false", *extra])
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


def make_table_main(args, capsys):
    """scripts/make_table.py's main() (loaded from its path once, as tests/test_make_table.py does)."""
    if "make_table" not in sys.modules:
        spec = importlib.util.spec_from_file_location("make_table", os.path.join(REPO, "scripts", "make_table.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules["make_table"] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    capsys.readouterr()  # what came before (test.py's table) is not make_table's
    code = sys.modules["make_table"].main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def paths(run_dir, *extra):
    cfg = load_config(CONFIG, [f"output.dir={run_dir}", *extra])
    ckpt, out_dir = segkd_test.resolve_paths(cfg)
    return ckpt, os.path.normpath(out_dir)


def test_output_folder_follows_the_checkpoint(tmp_path):
    mine, other = tmp_path / "mine", tmp_path / "other"
    for path in (mine / "model" / "final.pth", other / "model" / "final.pth", tmp_path / "weights" / "r18.pth"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    # the config's own checkpoint: its output.dir, whether implied or named
    assert paths(mine) == (str(mine / "model" / "final.pth"), str(mine / "eval" / "ss"))
    assert paths(mine, f"test.checkpoint={mine / 'model' / 'final.pth'}")[1] == str(mine / "eval" / "ss")
    # another run's checkpoint: that run's eval folder, never this config's
    assert paths(mine, f"test.checkpoint={other / 'model' / 'final.pth'}", "test.flip=true") == \
        (str(other / "model" / "final.pth"), str(other / "eval" / "ss_flip"))
    # a checkpoint outside any model/ folder: beside it
    assert paths(mine, f"test.checkpoint={tmp_path / 'weights' / 'r18.pth'}", "test.scales=[0.5,1]")[1] == \
        str(tmp_path / "weights" / "eval" / "ms")
    # test.out_dir always wins
    assert paths(mine, f"test.checkpoint={other / 'model' / 'final.pth'}", f"test.out_dir={tmp_path / 'x'}")[1] == \
        str(tmp_path / "x")


def test_another_runs_checkpoint_is_scored_in_that_run_and_refused_elsewhere(tiny_data, tmp_path, capsys):
    """``test.py --config X test.checkpoint=OTHER/model/final.pth`` leaves X's run directory alone; forced into
    X's eval folder with test.out_dir, its metrics.json names OTHER's checkpoint and make_table refuses the row."""
    mine, other = tmp_path / "runs" / "mine", tmp_path / "runs" / "other"
    ckpt = fake_checkpoint(other / "model" / "final.pth")
    metrics = evaluate(tiny_data, mine, f"test.checkpoint={ckpt}")
    assert not mine.exists()  # nothing of OTHER's scores in this config's run directory
    with open(other / "eval" / "ss" / "metrics.json", encoding="utf-8") as f:
        written = json.load(f)
    assert written["checkpoint"] == ckpt == metrics["checkpoint"]
    assert written["checkpoint_relative"] == os.path.join("..", "..", "model", "final.pth")
    code, out, _ = make_table_main([other], capsys)
    assert code == 0 and "| other (supervised R18) |" in out

    forced = mine / "eval" / "ss"
    evaluate(tiny_data, mine, f"test.checkpoint={ckpt}", f"test.out_dir={forced}")
    code, out, err = make_table_main([tmp_path / "runs"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and out == "" and len(lines) == 1
    assert lines[0].startswith(f"error: {forced / 'metrics.json'}: the scores of {ckpt}, a checkpoint outside")
