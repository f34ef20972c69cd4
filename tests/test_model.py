"""Dilated ResNet backbones and PSPNet: shapes at output stride 8, dilations, param groups, backward."""

import pytest
import torch
from torch import nn

from model.backbone import ResNetBackbone
from model.pspnet import PSPNet, build_pspnet
from util.errors import SegKDError

DEPTHS = (18, 34, 50, 101)


def stride8_size(n: int) -> int:
    """Spatial size after the stem (conv7x7/2 pad 3, maxpool3x3/2 pad 1) and layer2's stride-2 conv."""
    n = (n + 2 * 3 - 7) // 2 + 1
    n = (n + 2 * 1 - 3) // 2 + 1
    return (n + 2 * 1 - 3) // 2 + 1


@pytest.fixture(scope="module", params=DEPTHS)
def backbone(request) -> ResNetBackbone:
    torch.manual_seed(0)
    return ResNetBackbone(request.param).eval()


@pytest.mark.parametrize("size", [32, 65])
def test_backbone_feature_shapes(backbone, size):
    with torch.no_grad():
        feats = backbone(torch.randn(2, 3, size, size))
    assert set(feats) == {"layer3", "layer4"}
    s = stride8_size(size)
    for name, f in feats.items():
        assert f.shape == (2, backbone.channels[name], s, s), name


def test_channels_by_depth():
    assert ResNetBackbone(18).channels == {"layer1": 64, "layer2": 128, "layer3": 256, "layer4": 512}
    assert ResNetBackbone(50).channels == {"layer1": 256, "layer2": 512, "layer3": 1024, "layer4": 2048}


@pytest.mark.parametrize("depth", DEPTHS)
def test_every_block_dilated_like_semseg(depth):
    """semseg's convention at every depth: each block of layer3 (the first included) has its 3x3 convs at
    dilation 2 and of layer4 at 4, padding = dilation, and no conv of either layer has a stride."""
    net = ResNetBackbone(depth)
    threes_per_block = 1 if depth >= 50 else 2
    for layer_name, dilation in (("layer3", 2), ("layer4", 4)):
        for i, block in enumerate(getattr(net, layer_name)):
            where = f"{layer_name}[{i}]"
            convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
            assert all(c.stride == (1, 1) for c in convs), where
            three = [c for c in convs if c.kernel_size == (3, 3)]
            assert len(three) == threes_per_block, where
            assert all(c.dilation == (dilation, dilation) and c.padding == (dilation, dilation) for c in three), where
            ones = [c for c in convs if c.kernel_size == (1, 1)]
            assert all(c.dilation == (1, 1) and c.padding == (0, 0) for c in ones), where
    for layer_name in ("layer1", "layer2"):  # untouched: stride 2 stays in layer2's first block
        assert all(m.dilation == (1, 1) for m in getattr(net, layer_name).modules() if isinstance(m, nn.Conv2d))
    assert net.layer2[0].conv2.stride == (2, 2) if depth >= 50 else net.layer2[0].conv1.stride == (2, 2)


@pytest.mark.parametrize("bad", [0, 17, 152, "50"])
def test_bad_layers_raises(bad):
    with pytest.raises(SegKDError, match=r"model\.layers") as err:
        ResNetBackbone(bad)
    assert str(err.value).endswith(f"got {bad!r}")
    with pytest.raises(SegKDError, match=r"model\.layers"):
        build_pspnet(bad, classes=3)


@pytest.mark.parametrize("classes", [1, 0, -3])
def test_bad_classes_raises(classes):
    with pytest.raises(SegKDError, match=r"data\.classes") as err:
        build_pspnet(18, classes=classes)
    assert str(err.value).endswith(f"got {classes}")


def test_pspnet_shapes_r18_equal_r50():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 65, 65)
    shapes = {}
    for depth in (18, 50):
        model = build_pspnet(depth, classes=5).eval()
        with torch.no_grad():
            out = model(x)
        assert set(out) == {"out", "aux"}
        s = stride8_size(65)
        assert out["out"].shape == (2, 5, s, s)
        assert out["aux"].shape == (2, 5, s, s)
        shapes[depth] = (out["out"].shape, out["aux"].shape)
    assert shapes[18] == shapes[50]


def test_param_groups_partition():
    model = build_pspnet(18, classes=4)
    backbone, new = model.param_groups()
    ids_b, ids_n = {id(p) for p in backbone}, {id(p) for p in new}
    assert len(ids_b) == len(backbone) and len(ids_n) == len(new)
    assert not ids_b & ids_n
    assert ids_b | ids_n == {id(p) for p in model.parameters()}
    assert ids_b == {id(p) for p in model.backbone.parameters()}
    for sub in (model.ppm, model.head, model.aux_head):
        assert {id(p) for p in sub.parameters()} <= ids_n


def test_backward_reaches_head_and_backbone():
    torch.manual_seed(0)
    model = build_pspnet(18, classes=3).train()
    out = model(torch.randn(2, 3, 32, 32))
    (out["out"].square().mean() + out["aux"].square().mean()).backward()
    for name, module in (
        ("head", model.head[0]),
        ("aux_head", model.aux_head[0]),
        ("stem", model.backbone.conv1),
    ):
        assert module.weight.grad is not None and module.weight.grad.abs().sum() > 0, name


class TinyBackbone(nn.Module):
    """Any module with ``channels`` and a layer3/layer4 dict can be injected."""

    channels = {"layer3": 8, "layer4": 16}

    def __init__(self):
        super().__init__()
        self.c3 = nn.Conv2d(3, 8, 3, stride=8, padding=1)
        self.c4 = nn.Conv2d(8, 16, 1)

    def forward(self, x):
        c3 = self.c3(x)
        return {"layer3": c3, "layer4": self.c4(c3)}


def test_injected_backbone_and_eval_returns_aux():
    model = PSPNet(TinyBackbone(), classes=2, bins=(1, 2)).eval()
    assert model.ppm.out_channels == 32
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out["out"].shape == (2, 2, 4, 4) and out["aux"].shape == (2, 2, 4, 4)


def test_aux_false_skips_the_aux_head_and_keeps_the_main_logits():
    torch.manual_seed(0)
    net = build_pspnet(18, classes=4).eval()
    calls = []
    net.aux_head.register_forward_hook(lambda *a: calls.append(1))
    x = torch.randn(1, 3, 65, 65)
    with torch.no_grad():
        full, main = net(x), net(x, aux=False)
    assert set(main) == {"out"} and len(calls) == 1  # only the default call ran the aux head
    assert torch.equal(main["out"], full["out"])


def test_params_and_gflops_count_the_inference_network_only():
    from torch.utils.flop_counter import FlopCounterMode

    from engine.flops import count_params, gflops

    net = build_pspnet(18, classes=21)
    aux = sum(p.numel() for p in net.aux_head.parameters())
    total = sum(p.numel() for p in net.parameters())
    assert aux > 0 and count_params(net) == total - aux
    assert count_params(nn.Linear(3, 2)) == 8  # any other module: all its parameters

    def counted(module, x, **kw):
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            module(x, **kw)
        return counter.get_total_flops()

    with torch.device("meta"):
        meta = build_pspnet(18, classes=21).eval()
        x = torch.empty(1, 3, 65, 65)
        layer3 = torch.empty(1, 256, 9, 9)
    with_aux, aux_only = counted(meta, x), counted(meta.aux_head, layer3)
    assert aux_only > 0
    assert gflops(18, 21, 65) * 1e9 == pytest.approx(with_aux - aux_only, rel=1e-9)
