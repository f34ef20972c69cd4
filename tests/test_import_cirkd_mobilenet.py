"""CIRKD's MobileNetV3 students (``model.backbone=mobilenetv3_*_cirkd``, ``tools.import_weights --format cirkd``):
files fabricated with CIRKD's module names and shapes (random weights, BN statistics of the input) import strictly
into DeepLabV3 / PSPNet on the ``_cirkd`` backbones and compute what CIRKD's network computes, on even sizes too,
where its "same" padding differs from torchvision's; no aux head is invented; a wrong file is one line naming it
and DST is not written; the backbone reads an ImageNet file in CIRKD's layout; without an aux head the aux terms
are refused by name.

The reference network below is written from winycg/CIRKD's code at dab64db (``models/base_models/mobilenetv3.py``:
``MobileNetV3(arch_type, outstride=8)`` and its dilation; ``irconv.py``: ``AdptivePaddingConv2d``,
``InvertedResidualV3``, ``SqueezeExcitationConv2d``; ``activation.py``: ``HardSwish``, ``HardSigmoid``;
``models/deeplabv3_mobilenetv3.py``, ``models/psp_mobile.py``), not from segkd's modules.
scripts/check_import_upstream.py --cirkd runs CIRKD's own code.
"""

import math
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from model.build import build_model, load_teacher, model_from_checkpoint
from model.distiller import Distiller
from model.inputs import CaffeInput
from model.mobilenetv3 import MobileNetV3Backbone, cirkd_key_map
from tests.import_refusals import assert_refused
from tests.test_import_cirkd import _same_image
from tools import import_weights as iw
from util.config import load_config
from util.errors import SegKDError

CLASSES = 5
# (kernel, mid, out, SE, activation, stride) of each block, CIRKD's arch_settings
SETTINGS = {
    "small": [(3, 16, 16, 1, "relu", 2), (3, 72, 24, 0, "relu", 2), (3, 88, 24, 0, "relu", 1),
              (5, 96, 40, 1, "hs", 2), (5, 240, 40, 1, "hs", 1), (5, 240, 40, 1, "hs", 1), (5, 120, 48, 1, "hs", 1),
              (5, 144, 48, 1, "hs", 1), (5, 288, 96, 1, "hs", 2), (5, 576, 96, 1, "hs", 1), (5, 576, 96, 1, "hs", 1)],
    "large": [(3, 16, 16, 0, "relu", 1), (3, 64, 24, 0, "relu", 2), (3, 72, 24, 0, "relu", 1),
              (5, 72, 40, 1, "relu", 2), (5, 120, 40, 1, "relu", 1), (5, 120, 40, 1, "relu", 1),
              (3, 240, 80, 0, "hs", 2), (3, 200, 80, 0, "hs", 1), (3, 184, 80, 0, "hs", 1), (3, 184, 80, 0, "hs", 1),
              (3, 480, 112, 1, "hs", 1), (3, 672, 112, 1, "hs", 1), (5, 672, 160, 1, "hs", 2),
              (5, 960, 160, 1, "hs", 1), (5, 960, 160, 1, "hs", 1)],
}
# outstride 8: (the block entering 1/16, the block entering 1/32), both set to stride 1
UNSTRIDED = {"small": (4, 9), "large": (7, 13)}


def _act(name):
    return {"relu": nn.ReLU(), "hs": HSwish()}[name]


class HSwish(nn.Module):
    def forward(self, x):
        return x * F.relu6(x + 3) / 6


class SamePad(nn.Conv2d):
    """AdptivePaddingConv2d: padding 0 in the conv, TensorFlow's "same" padding in forward."""

    def forward(self, x):
        (h, w), (kh, kw) = x.shape[-2:], self.weight.shape[-2:]
        (sh, sw), (dh, dw) = self.stride, self.dilation
        ph = max((math.ceil(h / sh) - 1) * sh + (kh - 1) * dh + 1 - h, 0)
        pw = max((math.ceil(w / sw) - 1) * sw + (kw - 1) * dw + 1 - w, 0)
        x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _conv_bn(conv, channels, act=None):
    seq = nn.Sequential()
    seq.add_module("conv", conv)
    seq.add_module("bn", nn.BatchNorm2d(channels))
    if act:
        seq.add_module("activation", _act(act))
    return seq


class SE(nn.Module):
    def __init__(self, channels):
        super().__init__()
        squeeze = max(8, int(channels // 4 + 4) // 8 * 8)
        squeeze += 8 if squeeze < 0.9 * (channels // 4) else 0
        self.conv1, self.conv2 = nn.Sequential(), nn.Sequential()
        self.conv1.add_module("conv", nn.Conv2d(channels, squeeze, 1))
        self.conv2.add_module("conv", nn.Conv2d(squeeze, channels, 1))

    def forward(self, x):
        gate = self.conv2(F.relu(self.conv1(F.adaptive_avg_pool2d(x, 1))))
        return x * ((gate + 3) / 6).clamp(0, 1)


class Block(nn.Module):
    """InvertedResidualV3: expand_conv (if mid != in), depthwise_conv (AdptivePaddingConv2d at stride 2), se,
    linear_conv; the residual at stride 1 with in == out."""

    def __init__(self, cin, k, mid, cout, se, act, stride):
        super().__init__()
        self.res = stride == 1 and cin == cout
        if mid != cin:
            self.expand_conv = _conv_bn(nn.Conv2d(cin, mid, 1, bias=False), mid, act)
        conv = (SamePad(mid, mid, k, 2, 0, groups=mid, bias=False) if stride == 2 else
                nn.Conv2d(mid, mid, k, 1, k // 2, groups=mid, bias=False))
        self.depthwise_conv = _conv_bn(conv, mid, act)
        if se:
            self.se = SE(mid)
        self.linear_conv = _conv_bn(nn.Conv2d(mid, cout, 1, bias=False), cout)

    def forward(self, x):
        out = self.expand_conv(x) if hasattr(self, "expand_conv") else x
        out = self.depthwise_conv(out)
        out = self.se(out) if hasattr(self, "se") else out
        out = self.linear_conv(out)
        return x + out if self.res else out


class CirkdMobileNetV3(nn.Module):
    """MobileNetV3(arch_type, outstride=8): layer0 (stem), layer1..N (blocks), layerN+1 (1x1 conv); the blocks
    entering 1/16 and 1/32 lose their stride, every block from the first of them on is dilated 2, from the second
    on 4 (a SamePad conv pads (k - 1) * d in total, split evenly, a plain one d * (k - 1) / 2 each side)."""

    def __init__(self, arch):
        super().__init__()
        self.n = len(SETTINGS[arch])
        self.layer0 = _conv_bn(SamePad(3, 16, 3, 2, 0, bias=False), 16, "hs")
        cin = 16
        for i, (k, mid, cout, se, act, stride) in enumerate(SETTINGS[arch], 1):
            setattr(self, f"layer{i}", Block(cin, k, mid, cout, se, act, stride))
            cin = cout
        last = 576 if arch == "small" else 960
        setattr(self, f"layer{self.n + 1}", _conv_bn(nn.Conv2d(cin, last, 1, bias=False), last, "hs"))
        first, second = UNSTRIDED[arch]
        for i in range(first, self.n + 1):
            conv = getattr(self, f"layer{i}").depthwise_conv.conv
            conv.stride, conv.dilation = (1, 1), (2, 2) if i < second else (4, 4)
            if not isinstance(conv, SamePad):
                conv.padding = ((conv.kernel_size[0] - 1) // 2 * conv.dilation[0],) * 2

    def forward(self, x):
        for i in range(self.n + 2):
            x = getattr(self, f"layer{i}")(x)
        return x


def _cbr(cin, cout, k=1, d=1):
    return [nn.Conv2d(cin, cout, k, padding=d * (k // 2), dilation=d, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class DeepLabHead(nn.Module):
    """deeplabv3_mobilenetv3.py: _ASPP (b0, b1..b3 .block, b4 .gap, project) and block, all 128 wide."""

    def __init__(self, cin, classes):
        super().__init__()
        self.aspp = nn.Module()
        self.aspp.b0 = nn.Sequential(*_cbr(cin, 128))
        for i, rate in enumerate((12, 24, 36), 1):
            branch = nn.Module()
            branch.block = nn.Sequential(*_cbr(cin, 128, 3, rate))
            setattr(self.aspp, f"b{i}", branch)
        self.aspp.b4 = nn.Module()
        self.aspp.b4.gap = nn.Sequential(nn.AdaptiveAvgPool2d(1), *_cbr(cin, 128))
        self.aspp.project = nn.Sequential(*_cbr(5 * 128, 128), nn.Dropout(0.5))
        self.block = nn.Sequential(*_cbr(128, 128, 3), nn.Dropout(0.1), nn.Conv2d(128, classes, 1))

    def forward(self, x):
        a = self.aspp
        pooled = F.interpolate(a.b4.gap(x), x.shape[2:], mode="bilinear", align_corners=True)
        x = a.project(torch.cat([a.b0(x), a.b1.block(x), a.b2.block(x), a.b3.block(x), pooled], 1))
        return self.block(x)


class PSPHead(nn.Module):
    """psp_mobile.py: _PyramidPooling (avgpool1..4 at 1/2/3/6, conv1..4 to C/4, concat with the input), block,
    classifier."""

    def __init__(self, cin, classes):
        super().__init__()
        self.psp = nn.Module()
        for i in range(1, 5):
            setattr(self.psp, f"conv{i}", nn.Sequential(*_cbr(cin, cin // 4)))
        self.block = nn.Sequential(*_cbr(2 * cin, 128, 3), nn.Dropout(0.1))
        self.classifier = nn.Conv2d(128, classes, 1)

    def forward(self, x):
        size = x.shape[2:]
        feats = [F.interpolate(getattr(self.psp, f"conv{i}")(F.adaptive_avg_pool2d(x, b)), size, mode="bilinear",
                               align_corners=True) for i, b in enumerate((1, 2, 3, 6), 1)]
        return self.classifier(self.block(torch.cat([x, *feats], 1)))


class CirkdMobileStudent(nn.Module):
    """``pretrained`` (the backbone) and ``head``; forward -> logits at 1/8, not upsampled; no auxlayer."""

    def __init__(self, head, arch, classes=CLASSES):
        super().__init__()
        self.pretrained = CirkdMobileNetV3(arch)
        c4 = 576 if arch == "small" else 960
        self.head = (DeepLabHead if head == "deeplabv3" else PSPHead)(c4, classes)

    def forward(self, x):
        return self.head(self.pretrained(x))


def _calibrated(net, batch):
    """Random BN affine and the BN statistics of ``batch`` (one pass in train mode): logits of order 1."""
    torch.manual_seed(0)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
        net.train()(batch)
    return net.eval()


@pytest.fixture(scope="module")
def students(tmp_path_factory):
    """{(head, arch): (reference network, its file as CIRKD's train_*.py saves it: model.state_dict())}."""
    folder = tmp_path_factory.mktemp("cirkd_mobile")
    out = {}
    for head in ("deeplabv3", "pspnet"):
        for arch in ("small", "large"):
            torch.manual_seed(1)
            net = _calibrated(CirkdMobileStudent(head, arch), _same_image(seed=1)[1])
            path = str(folder / f"kd_{head}_mobilenetv3_{arch}_citys_best_model.pth")
            torch.save(net.state_dict(), path)
            out[head, arch] = net, path
    return out


@pytest.mark.parametrize("head", ["deeplabv3", "pspnet"])
@pytest.mark.parametrize("arch", ["small", "large"])
def test_a_student_imports_strictly_and_computes_cirkds_logits(students, head, arch, tmp_path):
    net, src = students[head, arch]
    dst = str(tmp_path / "student.pth")
    ckpt = iw.import_weights(src, dst, "cirkd", classes=CLASSES)
    assert {k: ckpt[k] for k in ("arch", "backbone", "align_corners", "input")} == {
        "arch": head, "backbone": f"mobilenetv3_{arch}_cirkd", "align_corners": True, "input": "caffe"}
    model, saved = model_from_checkpoint(dst, CLASSES)  # what test.py does with test.checkpoint
    assert len(saved["model"]) == len(net.state_dict())  # every tensor has its place, none invented
    assert model.aux_head is None and "aux_feat" not in model.feature_channels
    assert isinstance(model.input_transform, CaffeInput)
    model.input_transform = nn.Identity()
    theirs = torch.randn(2, 3, 48, 64) * 60  # even sizes: the "same" padding pads after only
    with torch.no_grad():
        expected, got = net(theirs), model.eval()(theirs)
    assert set(got) == {"out"} and got["out"].shape == expected.shape == (2, CLASSES, 6, 8)
    assert (got["out"] - expected).abs().max().item() < 1e-5
    mine, theirs = _same_image()  # 41 x 49: odd sizes, through each loader
    with torch.no_grad():
        expected = F.interpolate(net(theirs), theirs.shape[2:], mode="bilinear", align_corners=True)
        model.input_transform = CaffeInput()
        got = F.interpolate(model(mine, aux=False)["out"], mine.shape[2:], mode="bilinear", align_corners=True)
    assert 0.1 < expected.abs().max().item() < 100 and (got - expected).abs().max().item() < 1e-4


def test_torchvisions_padding_and_bn_eps_would_not_give_cirkds_logits(students):
    """The reason for the _cirkd variants: CIRKD's weights in the torchvision-convention backbone give other
    features on an even-sized image."""
    net, _ = students["deeplabv3", "small"]
    theirs = {k.removeprefix("pretrained."): v for k, v in net.state_dict().items() if k.startswith("pretrained.")}
    x = torch.randn(1, 3, 64, 64) * 60
    with torch.no_grad():
        expected = net.pretrained(x)
        for variant, close in (("mobilenetv3_small_cirkd", True), ("mobilenetv3_small", False)):
            ours = MobileNetV3Backbone(variant).eval()
            key_map = cirkd_key_map(ours)
            ours.load_state_dict({key_map[k]: v for k, v in theirs.items()}, strict=True)
            diff = (ours(x)["layer4"] - expected).abs().max().item()
            assert (diff < 1e-5) == close, (variant, diff)


def test_imagenet_file_in_cirkds_layout_loads_into_the_cirkd_backbone(students, tmp_path):
    """CIRKD's --pretrained-base files (mmseg's layout, loaded by name): with or without a ``backbone.`` prefix."""
    net, _ = students["pspnet", "large"]
    theirs = {k.replace("pretrained.", "backbone."): v for k, v in net.state_dict().items()
              if k.startswith("pretrained.")}
    path = str(tmp_path / "mobilenet_v3_large-imagenet.pth")
    torch.save(theirs, path)
    ours = MobileNetV3Backbone("mobilenetv3_large_cirkd", pretrained=path).eval()
    x = torch.randn(1, 3, 32, 48) * 60
    with torch.no_grad():
        assert (ours(x)["layer4"] - net.pretrained(x)).abs().max().item() < 1e-5
    torch.save({k.removeprefix("backbone."): v for k, v in list(theirs.items())[1:]}, path)  # no prefix, a key short
    with pytest.raises(SegKDError, match=r"mobilenet_v3_large-imagenet\.pth: missing keys: features\.0\.0\.weight; "
                                         r".*or CIRKD's \(layer0\.\.layer16\) for model\.backbone$"):
        MobileNetV3Backbone("mobilenetv3_large_cirkd", pretrained=path)
    with pytest.raises(SegKDError, match=r"unexpected keys: layer0\.bn\.weight"):  # CIRKD's layout: _cirkd only
        MobileNetV3Backbone("mobilenetv3_large", pretrained=path)


# ---------------------------------------------------------------- every wrong file: one line, DST untouched
def _edited(students, tmp_path, edit):
    sd = dict(students["deeplabv3", "small"][0].state_dict())
    edit(sd)
    path = str(tmp_path / "edited.pth")
    torch.save(sd, path)
    return path


CASES = [
    (lambda sd: sd.update({"pretrained.layer13.conv.weight": torch.ones(1)}),
     r"a CIRKD MobileNetV3 ends at pretrained\.layer12 \(Small\) or layer16 \(Large\); this file ends at "
     r"pretrained\.layer13$"),
    (lambda sd: sd.update({"head.psp.conv1.0.weight": torch.ones(1)}),
     r"has head\.aspp\.\* \(deeplabv3_mobilenet_ssseg\) or head\.psp\.\* \(psp_mobile\); this file has both$"),
    (lambda sd: sd.pop("pretrained.layer4.se.conv2.conv.bias"),
     r"does not fit a cirkd DeepLabV3-MobileNetV3-Small \(CIRKD's\): missing keys: "
     r"backbone\.features\.4\.block\.2\.fc2\.bias$"),
    (lambda sd: sd.update({"auxlayer.block.0.weight": torch.ones(1)}),
     r"not a cirkd deeplabv3 checkpoint: keys no rule maps: auxlayer\.block\.0\.weight$"),
    (lambda sd: sd.update({"head.aspp.project.0.weight": torch.ones(128, 1280, 1, 1)}),
     r"shape mismatch \(file vs model\): aspp\.project\.0\.weight \(128, 1280, 1, 1\) vs \(128, 640, 1, 1\)$"),
]


@pytest.mark.parametrize("edit,message", CASES)
def test_a_wrong_file_is_one_line_naming_it(students, tmp_path, edit, message):
    src = _edited(students, tmp_path, edit)
    dst = str(tmp_path / "out" / "student.pth")
    assert_refused(src, dst, "cirkd", message)


def test_wrong_class_count_is_named(students, tmp_path):
    with pytest.raises(SegKDError, match=r"the classifier has 5 classes \(head\.4\.bias\), not --classes 19$"):
        iw.import_weights(students["pspnet", "small"][1], str(tmp_path / "t.pth"), "cirkd", classes=19)
    assert not os.path.exists(tmp_path / "t.pth")


# ---------------------------------------------------------------- without an aux head
def test_the_cli_names_the_network_and_no_teacher_depth(students, tmp_path, capsys):
    dst = str(tmp_path / "s.pth")
    assert iw.main(["--format", "cirkd", students["pspnet", "small"][1], dst]) == 0
    out = capsys.readouterr().out
    assert "a supervised PSPNet-MobileNetV3-Small (CIRKD's) (caffe input) with 5 classes" in out
    assert "teacher.layers" not in out
    teacher = load_teacher(load_config(None, [f"data.classes={CLASSES}", f"teacher.checkpoint={dst}"]))
    assert teacher.aux_head is None
    student = build_model(load_config(None, [f"data.classes={CLASSES}"]))
    with pytest.raises(SegKDError, match=r"^distill\.feat_loss=kl compares aux logits, but the teacher has no aux "
                                         r"head .*set distill\.feat_loss=none$"):
        Distiller(student, teacher, feat_loss="kl")
    cfg = load_config(None, [f"data.classes={CLASSES}", f"teacher.checkpoint={dst}", "distill.terms=[at]",
                             "distill.at.tensor=aux"])
    with pytest.raises(SegKDError, match=r"^distill\.at\.tensor='aux': the student or the teacher has no such"):
        Distiller.from_config(student, teacher, cfg)


def test_a_cirkd_student_trains_without_aux_and_refuses_an_aux_weight():
    cfg = load_config(None, [f"data.classes={CLASSES}", "model.backbone=mobilenetv3_small_cirkd", "train.aux_weight=0"])
    student = build_model(cfg).train()
    distiller = Distiller.from_config(student, None, cfg)
    total, terms = distiller(torch.randn(2, 3, 33, 33), torch.randint(0, CLASSES, (2, 33, 33)))
    total.backward()
    assert set(terms) == {"ce"} and student.head[0].weight.grad is not None
    with pytest.raises(SegKDError, match=r"^train\.aux_weight=0\.4: the network has no aux head .*set "
                                         r"train\.aux_weight=0$"):
        Distiller.from_config(student, None, load_config(None, [f"data.classes={CLASSES}"]))


def test_export_runs_the_imported_network_and_trainable_export_is_refused(students, tmp_path, capsys):
    from tools import export as export_cli

    dst = str(tmp_path / "s.pth")
    iw.import_weights(students["deeplabv3", "small"][1], dst, "cirkd")
    out = str(tmp_path / "s.pt")
    assert export_cli.main(["--checkpoint", dst, "--format", "torchscript", out, "--size", "48", "64"]) == 0
    from engine.export import InferenceNetwork

    traced, eager = torch.jit.load(out), InferenceNetwork(model_from_checkpoint(dst, None)[0]).eval()
    for size in ((49, 65), (64, 96)):  # odd and even, neither traced: the "same" padding follows the input's size
        x = torch.rand(1, 3, *size) * 255
        with torch.no_grad():
            assert (traced(x) - eager(x)).abs().max().item() < 1e-4
    bad = str(tmp_path / "t.pt")
    assert export_cli.main(["--checkpoint", dst, "--format", "torchscript", "--trainable", bad]) == 2
    err = capsys.readouterr().err
    assert "--trainable exports main and aux logits" in err and "has no aux head" in err and err.count("\n") == 1
    assert not os.path.exists(bad)
