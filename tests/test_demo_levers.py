"""What makes `make demo` faster without changing what it measures: evaluation of several images at once
(``test.batch_size``, the same protocol up to float rounding) and train.py evaluating its own final checkpoint in
the same process (``test.after_training``, the metrics.json test.py writes, bitwise)."""

import contextlib
import io
import json
import os

import numpy as np
import pytest
import torch
from torch import nn

from engine.evaluate import evaluate, protocol
from engine.inference import predict_probs, predict_probs_batch
from engine.rundir import check_run_dir
from tests.conftest import REPO, TINY_CLASSES, run_cli, tiny_overrides
from util.config import check_training, load_config, save_config
from util.distributed import DistInfo
from util.errors import SegKDError

CLASSES = 5
CROP = 65
BASELINE = os.path.join(REPO, "config/synthetic/pspnet18_baseline.yaml")
CPU = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))


class CountingNet(nn.Module):
    """A convolution at half resolution that records the batch and size of every forward."""

    def __init__(self, classes: int = CLASSES):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, classes, 5, stride=2, padding=2)
        self.forwards: list[tuple[int, ...]] = []

    def forward(self, x, aux=True):
        self.forwards.append(tuple(x.shape))
        return {"out": self.conv(x)}


def images(*sizes):
    rng = np.random.default_rng(0)
    return [rng.uniform(0, 255, (*size, 3)).astype(np.float32) for size in sizes]


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("scales", [[1.0], [0.75, 1.25]])
@pytest.mark.parametrize("mode", ["slide", "whole"])
def test_images_together_give_the_probabilities_of_one_at_a_time(flip, scales, mode):
    """Slide: windows of images of any size (smaller than the crop, several windows) go through together;
    whole: the images of one resized shape."""
    model = CountingNet().eval()
    batch = images((30, 40), (110, 150), (40, 30), (30, 40), (64, 64))
    alone = [predict_probs(model, im, CLASSES, 96, CROP, scales, flip, 2 / 3, CPU.device, mode) for im in batch]
    model.forwards.clear()
    together = predict_probs_batch(model, batch, CLASSES, 96, CROP, scales, flip, 2 / 3, CPU.device, mode, batch=8)
    for a, b in zip(alone, together):
        assert a.shape == b.shape
        torch.testing.assert_close(b, a, atol=1e-5, rtol=0)
    if mode == "slide":  # every window of every image at a scale in one forward (up to 8 * 8 windows)
        assert len(model.forwards) == len(scales) * (2 if flip else 1)
    else:  # the resized shapes: (72, 96) twice, (96, 72), (96, 96), (70, 96) at 1.0; each its own forward
        shapes = {f[2:] for f in model.forwards}
        assert len(model.forwards) == len(shapes) * (2 if flip else 1) and len(shapes) == 4 * len(scales)


def test_forwards_hold_at_most_eight_windows_per_image_of_the_batch():
    model = CountingNet().eval()
    batch = images(*[(64, 64)] * 20)  # one window each
    predict_probs_batch(model, batch, CLASSES, 64, CROP, [1.0], False, 2 / 3, CPU.device, batch=2)
    assert [f[0] for f in model.forwards] == [16, 4]
    model.forwards.clear()
    predict_probs(model, images((200, 200))[0], CLASSES, 200, CROP, [1.0], False, 2 / 3, CPU.device)
    assert [f[0] for f in model.forwards] == [8, 8, 8, 1]  # 5 x 5 windows of one image: semseg's chunks of 8


def test_evaluate_groups_test_batch_size_images(tiny_data, tmp_path):
    """test.batch_size=3 over the 4 val images: forwards of 3 images' windows, then 1's; the matrix of one at a
    time (this model's logits are far from ties); the protocol in metrics.json says batch_size only when not 1."""
    model = CountingNet(TINY_CLASSES).eval()
    matrices, forwards = [], []
    for b in (1, 3):
        cfg = load_config(BASELINE, [*tiny_overrides(tiny_data, str(tmp_path)), "test.workers=0",
                                     f"test.batch_size={b}"])
        model.forwards.clear()
        matrices.append(evaluate(model, cfg, CPU, cfg.data.val_list, progress=False).mat.clone())
        forwards.append([f[0] for f in model.forwards])
        assert ("batch_size" in protocol(cfg)) == (b != 1)
    assert forwards == [[4, 4, 4, 4], [12, 4]]  # 4 windows an image (base 80, crop 65)
    assert matrices[0].sum() > 0 and torch.equal(matrices[0], matrices[1])


@pytest.mark.parametrize("value", ["0", "-2", "1.5", "true"])
def test_a_bad_test_batch_size_is_one_line(value):
    with pytest.raises(SegKDError, match="test.batch_size"):
        load_config(BASELINE, [f"test.batch_size={value}"])


def test_after_training_refuses_another_checkpoint(tmp_path):
    cfg = load_config(BASELINE, [f"output.dir={tmp_path}", "data.root=/x", "test.after_training=true",
                                 f"test.checkpoint={tmp_path / 'other.pth'}"])
    with pytest.raises(SegKDError, match="test.after_training evaluates this run's final checkpoint"):
        check_training(cfg, 1, False, "cpu")


def test_a_resume_may_change_how_the_run_is_evaluated(tmp_path):
    """An interrupted run resumed with other test.* keys (the table script's test.after_training) is the same
    experiment; a training key still is not."""
    run = tmp_path / "run"
    run.mkdir()
    save_config(load_config(BASELINE, [f"output.dir={run}"]), str(run / "config.yaml"))
    check_run_dir(load_config(BASELINE, [f"output.dir={run}", "train.resume=auto", "test.after_training=true",
                                         f"test.out_dir={run / 'eval' / 'ss'}", "test.batch_size=8"]))
    with pytest.raises(SegKDError, match="holds a different experiment"):
        check_run_dir(load_config(BASELINE, [f"output.dir={run}", "train.resume=auto", "train.base_lr=0.5"]))


def test_after_training_refuses_existing_scores_before_training(tiny_data, tmp_path):
    """A metrics.json already where the scores would go stops train.py before anything is built or written."""
    import train

    scores = tmp_path / "scores"
    scores.mkdir()
    (scores / "metrics.json").write_text("{}")
    out, err, cwd = io.StringIO(), io.StringIO(), os.getcwd()
    os.chdir(REPO)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = train.main(["--config", BASELINE, *tiny_overrides(tiny_data, str(tmp_path / "run")),
                               "test.after_training=true", f"test.out_dir={scores}"])
    finally:
        os.chdir(cwd)
    assert code == 2 and err.getvalue().startswith(f"error: {scores / 'metrics.json'}: already exists")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # trains, and starts test.py
def test_after_training_writes_what_test_py_writes(tiny_data, tmp_path):
    """train.py with test.after_training and test.py on the same final.pth: the same metrics.json, bitwise (the
    checkpoint's path relative to either eval folder is the same)."""
    run = tmp_path / "run"
    common = [*tiny_overrides(tiny_data, str(run)), "train.iters=2", "test.batch_size=2"]
    r = run_cli("train.py", "--config", BASELINE, *common, "test.after_training=true", env={"OMP_NUM_THREADS": "2"})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "mIoU" in r.stdout and (run / "eval" / "ss" / "metrics.json").is_file()
    r = run_cli("test.py", "--config", BASELINE, *common, f"test.out_dir={run / 'eval' / 'again'}",
                env={"OMP_NUM_THREADS": "2"})
    assert r.returncode == 0, r.stdout + r.stderr
    with open(run / "eval" / "ss" / "metrics.json", encoding="utf-8") as f:
        in_process = json.load(f)
    with open(run / "eval" / "again" / "metrics.json", encoding="utf-8") as f:
        separate = json.load(f)
    assert in_process["protocol"]["batch_size"] == 2 and in_process["images"] == 4
    assert in_process == separate
    assert sorted(os.listdir(run / "eval" / "ss" / "gray")) == sorted(os.listdir(run / "eval" / "again" / "gray"))
    assert TINY_CLASSES == in_process["classes"]
