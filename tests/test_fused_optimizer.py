"""train.fused_optimizer: torch's fused SGD / AdamW step, off by default (the loop, whose arithmetic the committed
tables were trained in)."""

import copy

import pytest
import torch

from engine.setup import build_optimizer
from model.build import build_model
from util.config import load_config
from util.errors import SegKDError

CFG = "config/synthetic_cpu/pspnet18_baseline.yaml"


def _student(overrides):
    cfg = load_config(CFG, ["data.classes=4", "model.pretrained=false", *overrides])
    torch.manual_seed(0)
    return build_model(cfg), cfg


def _steps(net, opt, n, seed=1):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n):
        opt.zero_grad()
        x = torch.randn(2, 3, 33, 33, generator=gen)
        out = net(x)
        (out["out"].square().mean() + out["aux"].square().mean()).backward()
        opt.step()


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_fused_step_is_torchs_fused_kernel_close_to_the_loop(optimizer):
    """Off: torch's default (no fused flag, the loop on CPU); on: fused=True. Three steps of each from the same
    weights agree to float rounding; AdamW's not bitwise (another arithmetic: why the key is off by default; SGD's
    matched the loop bitwise on the CPUs seen, which the test does not require)."""
    loop_net, cfg = _student([f"train.optimizer={optimizer}"])
    fused_net = copy.deepcopy(loop_net)
    loop = build_optimizer(loop_net, cfg)
    fused = build_optimizer(fused_net, load_config(CFG, ["data.classes=4", f"train.optimizer={optimizer}",
                                                         "train.fused_optimizer=true"]))
    assert not loop.defaults.get("fused") and fused.defaults["fused"] is True
    assert [g["lr"] for g in fused.param_groups] == [g["lr"] for g in loop.param_groups]
    loop_net.eval(), fused_net.eval()  # no dropout or running statistics: only the step differs
    _steps(loop_net, loop, 3)
    _steps(fused_net, fused, 3)
    moved = [(a - b).abs().max().item() for a, b in zip(loop_net.parameters(), fused_net.parameters())]
    start, _ = _student([f"train.optimizer={optimizer}"])
    step = max((a - b).abs().max().item() for a, b in zip(start.parameters(), loop_net.parameters()))
    assert step > 1e-4 and max(moved) < 1e-3 * step
    if optimizer == "adamw":
        assert max(moved) > 0


def test_fused_state_resumes_to_the_uninterrupted_run():
    """A fused AdamW's state_dict (what checkpoints keep) loaded into a new fused optimizer continues exactly."""
    net, cfg = _student(["train.optimizer=adamw", "train.fused_optimizer=true"])
    net.eval()
    other = copy.deepcopy(net)
    opt = build_optimizer(net, cfg)
    _steps(net, opt, 2)
    resumed_net = copy.deepcopy(net)
    resumed = build_optimizer(resumed_net, cfg)
    resumed.load_state_dict(copy.deepcopy(opt.state_dict()))
    _steps(net, opt, 1, seed=7)
    _steps(resumed_net, resumed, 1, seed=7)
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), resumed_net.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(net.parameters(), other.parameters()))


def test_a_non_boolean_value_is_a_one_line_error():
    with pytest.raises(SegKDError, match="train.fused_optimizer"):
        load_config(CFG, ["train.fused_optimizer=3"])


@pytest.mark.parametrize("optimizer,name", [("adamw", "AdamW"), ("sgd", "SGD")])
def test_a_torch_without_the_fused_kernel_is_a_one_line_error_naming_the_key(monkeypatch, optimizer, name):
    """torch releases before CPU fused kernels raise a RuntimeError at construction; the run stops with one line
    naming the key and its way out. Off (the default) never reaches that path."""
    real = getattr(torch.optim, name)

    class OldTorch(real):
        def __init__(self, *args, fused=None, **kwargs):
            if fused:
                raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of "
                                   "supported devices: ['cuda', 'xpu', 'privateuseone'].\nmore")
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(torch.optim, name, OldTorch)
    net, cfg = _student([f"train.optimizer={optimizer}", "train.fused_optimizer=true"])
    with pytest.raises(SegKDError) as info:
        build_optimizer(net, cfg)
    line = str(info.value)
    assert "\n" not in line and line.startswith("train.fused_optimizer=true: torch ")
    assert f"no fused {optimizer} step for cpu parameters" in line and "supported devices" in line
    assert line.endswith("set train.fused_optimizer=false")
    assert isinstance(build_optimizer(net, load_config(CFG, ["data.classes=4", f"train.optimizer={optimizer}"])),
                      OldTorch)
