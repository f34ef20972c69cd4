"""Recipe keys for from-scratch training: train.optimizer, train.warmup_iters, model.zero_init_residual."""

from types import SimpleNamespace

import pytest
import torch

from engine.setup import build_optimizer
from engine.trainer import Trainer
from model.pspnet import build_pspnet
from tests.conftest import run_cli, tiny_overrides
from util.checkpoint import load_checkpoint
from util.config import load_config
from util.errors import SegKDError

CONFIG = "config/synthetic/pspnet18_baseline.yaml"


@pytest.mark.parametrize("layers, last_bn", [(18, "bn2"), (50, "bn3")])
def test_zero_init_residual_zeros_the_last_bn_of_every_block(layers, last_bn):
    zero = build_pspnet(layers, 3, zero_init_residual=True).backbone
    plain = build_pspnet(layers, 3).backbone
    for name in ("layer1", "layer2", "layer3", "layer4"):
        for block_zero, block_plain in zip(getattr(zero, name), getattr(plain, name)):
            assert torch.count_nonzero(getattr(block_zero, last_bn).weight) == 0
            assert torch.count_nonzero(getattr(block_plain, last_bn).weight) > 0


def test_zero_init_residual_from_config():
    from model.build import build_model

    cfg = load_config(CONFIG, ["data.classes=3", "model.zero_init_residual=true"])
    assert torch.count_nonzero(build_model(cfg).backbone.layer4[1].bn2.weight) == 0


@pytest.mark.parametrize("name, kind", [("sgd", torch.optim.SGD), ("adamw", torch.optim.AdamW)])
def test_optimizer_choice_keeps_the_two_learning_rates(name, kind):
    cfg = load_config(CONFIG, ["data.classes=3", f"train.optimizer={name}", "train.base_lr=0.002",
                               "train.head_lr_mult=5", "train.weight_decay=0.01"])
    opt = build_optimizer(build_pspnet(18, 3), cfg)
    assert type(opt) is kind
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.002, 0.01])
    assert [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.01]


def test_unknown_optimizer_names_the_key():
    with pytest.raises(SegKDError, match="train.optimizer"):
        load_config(CONFIG, ["train.optimizer=adam"])


def _lr_at(iteration, warmup, total=100, power=0.9):
    group = {"initial_lr": 0.01, "lr": None}
    fake = SimpleNamespace(iteration=iteration, total_iters=total, optimizer=SimpleNamespace(param_groups=[group]),
                           cfg=SimpleNamespace(train=SimpleNamespace(power=power, warmup_iters=warmup)))
    return Trainer.set_lr(fake)


def test_warmup_then_poly():
    poly = [0.01 * (1 - i / 100) ** 0.9 for i in range(100)]
    assert _lr_at(0, 0) == pytest.approx(poly[0])
    assert _lr_at(0, 10) == pytest.approx(poly[0] * 1 / 10)
    assert _lr_at(4, 10) == pytest.approx(poly[4] * 5 / 10)
    assert _lr_at(9, 10) == pytest.approx(poly[9])  # the last warmup step reaches the poly value
    assert _lr_at(50, 10) == pytest.approx(poly[50])


def test_negative_warmup_is_refused():
    with pytest.raises(SegKDError, match="command line: train.warmup_iters=-1: must be 0"):
        load_config(CONFIG, ["train.warmup_iters=-1", "data.root=x", "output.dir=y"])


@pytest.mark.slow
def test_both_groups_follow_warmup_and_poly_across_a_resume(tiny_data, tmp_path):
    """The learning rates stored with the optimizer (backbone and heads) at the stop and after the resumed
    run: each group's own base times the same warmup x poly factor of the iteration that set it."""
    run = str(tmp_path / "run")
    args = ["train.py", "--config", CONFIG, *tiny_overrides(tiny_data, run), "train.iters=6", "train.warmup_iters=2",
            "train.base_lr=0.004", "train.head_lr_mult=5", "train.optimizer=adamw"]
    assert run_cli(*args, "train.stop_after=3").returncode == 3
    stopped = load_checkpoint(f"{run}/model/last.pth")
    r = run_cli(*args, "train.resume=auto")
    assert r.returncode == 0, r.stderr
    final = load_checkpoint(f"{run}/model/last.pth")  # the finished run's resumable state (final.pth: weights only)

    def factor(i):  # set by set_lr() before the update of iteration i (0-based)
        return (1 - i / 6) ** 0.9 * (min(i + 1, 2) / 2)

    assert stopped["iteration"] == 3 and final["iteration"] == 6
    for ckpt, last_step in ((stopped, 2), (final, 5)):
        lrs = [g["lr"] for g in ckpt["optimizer"]["param_groups"]]
        assert lrs == pytest.approx([0.004 * factor(last_step), 0.02 * factor(last_step)], rel=1e-6)
