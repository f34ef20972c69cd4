"""tests/fast_init.py: the fast tier's initial weights are seeded, of Kaiming's scale and distinct per tensor; the
slow tier gets torch's own initialisers."""

import math

import pytest
import torch
import torchvision
from torch.nn import init

from tests import fast_init
from tests.conftest import FAST_INIT


def _resnet(seed):
    torch.manual_seed(seed)
    return torchvision.models.resnet50(num_classes=5).state_dict()


def test_fast_tests_draw_from_the_pool_with_the_seed():
    if not FAST_INIT:
        pytest.skip("SEGKD_TEST_FAST_INIT=0: the fast tests have torch's own initialisers")
    assert getattr(init.kaiming_normal_, "plain", None) is not None  # conftest applied it to this (fast) test
    a, b, c = _resnet(0), _resnet(0), _resnet(1)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    convs = [k for k in a if k.endswith("conv2.weight")]
    assert all(not torch.equal(a[k], c[k]) for k in convs)  # another seed, other weights
    first = a["layer1.0.conv2.weight"].flatten()
    assert all(not torch.equal(first, a[k].flatten()) for k in convs[1:] if a[k].shape == a[convs[0]].shape)


@pytest.mark.parametrize("draw,mode,fan_axis", [("kaiming_normal_", "fan_out", 0), ("kaiming_uniform_", "fan_in", 1)])
def test_the_scale_is_kaimings(draw, mode, fan_axis):
    w = torch.empty(256, 128, 3, 3)
    with fast_init.patched():
        getattr(init, draw)(w, mode=mode, nonlinearity="relu")
    fan = w.shape[fan_axis] * 9
    assert abs(w.std().item() - math.sqrt(2.0 / fan)) < 0.02 * math.sqrt(2.0 / fan)
    assert abs(w.mean().item()) < 0.01 * math.sqrt(2.0 / fan)


def test_an_own_generator_or_a_tensor_larger_than_the_pool_uses_torchs_draw():
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    w, v = torch.empty(8, 8), torch.empty(8, 8)
    plain = init.kaiming_normal_
    with fast_init.patched():
        init.kaiming_normal_(w, generator=g1)
        big = torch.empty(fast_init.POOL_SIZE + 1)[None]  # (1, n): fan_in n
        torch.manual_seed(0)
        init.kaiming_normal_(big)
    plain(v, generator=g2)
    assert torch.equal(w, v)
    assert torch.isfinite(big).all() and 0.5 < big.std().item() * math.sqrt(big.shape[1] / 2) < 2.0


@pytest.mark.slow  # a slow test, so that it runs where the slow tier runs; it starts nothing
def test_slow_tests_get_torchs_own_initialisers():
    assert not hasattr(init.kaiming_normal_, "plain") and not hasattr(init.kaiming_uniform_, "plain")
    torch.manual_seed(0)
    w = torch.empty(64, 64)
    init.kaiming_uniform_(w, a=math.sqrt(5))
    assert w.abs().max().item() <= 1 / math.sqrt(64)  # the uniform's bound: the pool's normals pass it (0.24 at seed 0)
