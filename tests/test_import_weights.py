"""tools.import_weights: a checkpoint of each format, fabricated with that project's module names, shapes,
wrapper and prefix (random weights, non-trivial BN statistics), imports key for key and then computes what the
project's own network computes (logits within 1e-4 in eval mode); every way a file can be wrong is one line
naming it, and DST is then not written.

The reference networks below are written from each project's model code (hszhao/semseg ``model/pspnet.py`` and
``model/resnet.py``; mmsegmentation ``ResNetV1c``, ``PSPHead``, ``FCNHead``, ``ConvModule``; torchvision's own
``deeplabv3_resnet50``): their module names and their forward pass, with torchvision's ResNet blocks, which
all three share.
"""

import os

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from model.backbone import ResNetBackbone
from model.build import load_teacher, model_from_checkpoint
from tests.import_refusals import assert_refused
from tools import import_weights as iw
from util.config import load_config
from util.errors import SegKDError

CLASSES = 5


def _random_bn_stats(net: nn.Module) -> nn.Module:
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)
    return net.eval()


def _conv3x3_bn_relu(cin, cout, stride=1):
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def _resnet_layers(block, counts, inplanes):
    """torchvision's layer1..layer4 with layer1 taking ``inplanes`` channels (semseg's deep base: 128)."""
    net = torchvision.models.resnet.ResNet(block, counts)
    net.inplanes = inplanes
    net.layer1 = net._make_layer(block, 64, counts[0])
    return net


# ---------------------------------------------------------------- hszhao/semseg's PSPNet
class SemsegPPM(nn.Module):
    def __init__(self, cin, reduced, bins=(1, 2, 3, 6)):
        super().__init__()
        self.features = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), nn.Conv2d(cin, reduced, 1, bias=False), nn.BatchNorm2d(reduced),
                          nn.ReLU(inplace=True)) for b in bins)

    def forward(self, x):
        return torch.cat([x] + [F.interpolate(f(x), x.shape[2:], mode="bilinear", align_corners=True)
                                for f in self.features], 1)


def _semseg_head(cin, mid, classes):
    return nn.Sequential(*_conv3x3_bn_relu(cin, mid), nn.Dropout2d(0.1), nn.Conv2d(mid, classes, 1))


class SemsegPSPNet(nn.Module):
    """semseg's PSPNet(layers=50, zoom_factor=8): deep base ResNet (conv3x3 64/64/128 grouped as layer0 with
    the maxpool), layer3's conv2 at dilation 2 and layer4's at 4 (every block), downsample stride 1."""

    def __init__(self, counts=(3, 4, 6, 3), classes=CLASSES):
        super().__init__()
        r = _resnet_layers(Bottleneck, list(counts), 128)
        self.layer0 = nn.Sequential(*_conv3x3_bn_relu(3, 64, 2), *_conv3x3_bn_relu(64, 64), *_conv3x3_bn_relu(64, 128),
                                    nn.MaxPool2d(3, 2, 1))
        self.layer1, self.layer2, self.layer3, self.layer4 = r.layer1, r.layer2, r.layer3, r.layer4
        for layer, d in ((self.layer3, 2), (self.layer4, 4)):
            for n, m in layer.named_modules():
                if "conv2" in n:
                    m.dilation, m.padding, m.stride = (d, d), (d, d), (1, 1)
                elif "downsample.0" in n:
                    m.stride = (1, 1)
        self.ppm = SemsegPPM(2048, 512)
        self.cls = _semseg_head(4096, 512, classes)
        self.aux = _semseg_head(1024, 256, classes)

    def forward(self, x):
        h, w = (x.shape[2] - 1) // 8 * 8 + 1, (x.shape[3] - 1) // 8 * 8 + 1
        x = self.cls(self.ppm(self.layer4(self.layer3(self.layer2(self.layer1(self.layer0(x)))))))
        return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=True)


# ---------------------------------------------------------------- mmsegmentation's pspnet_r50-d8
class ConvModule(nn.Module):
    """mmcv's ConvModule with a BN norm: ``conv`` (no bias), ``bn``, ReLU."""

    def __init__(self, cin, cout, k, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class MMSegBackbone(nn.Module):
    """ResNetV1c(depth=50, dilations=(1, 1, 2, 4), strides=(1, 2, 1, 1), contract_dilation=True): the stem of
    three 3x3 convs 32/32/64, torchvision's blocks (style pytorch) with the first block of a dilated layer at
    half its dilation, which is torchvision's replace_stride_with_dilation."""

    def __init__(self, block=Bottleneck, counts=(3, 4, 6, 3)):
        super().__init__()
        r = torchvision.models.resnet.ResNet(block, list(counts), replace_stride_with_dilation=[False, True, True])
        self.stem = nn.Sequential(*_conv3x3_bn_relu(3, 32, 2), *_conv3x3_bn_relu(32, 32), *_conv3x3_bn_relu(32, 64))
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1, self.layer2, self.layer3, self.layer4 = r.layer1, r.layer2, r.layer3, r.layer4

    def forward(self, x):
        c2 = self.layer2(self.layer1(self.maxpool(self.stem(x))))
        c3 = self.layer3(c2)
        return c3, self.layer4(c3)


class PSPHead(nn.Module):
    def __init__(self, cin=2048, channels=512, classes=CLASSES, scales=(1, 2, 3, 6)):
        super().__init__()
        self.psp_modules = nn.ModuleList(nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvModule(cin, channels, 1))
                                         for s in scales)
        self.bottleneck = ConvModule(cin + len(scales) * channels, channels, 3, padding=1)
        self.dropout = nn.Dropout2d(0.1)
        self.conv_seg = nn.Conv2d(channels, classes, 1)

    def forward(self, x):
        outs = [x] + [F.interpolate(m(x), x.shape[2:], mode="bilinear", align_corners=False) for m in self.psp_modules]
        return self.conv_seg(self.dropout(self.bottleneck(torch.cat(outs, 1))))


class FCNHead(nn.Module):
    def __init__(self, cin=1024, channels=256, classes=CLASSES):
        super().__init__()
        self.convs = nn.Sequential(ConvModule(cin, channels, 3, padding=1))
        self.dropout = nn.Dropout2d(0.1)
        self.conv_seg = nn.Conv2d(channels, classes, 1)


class MMSegPSPNet(nn.Module):
    """EncoderDecoder: the decode head's logits resized to the input with align_corners=False."""

    def __init__(self, classes=CLASSES):
        super().__init__()
        self.backbone = MMSegBackbone()
        self.decode_head = PSPHead(classes=classes)
        self.auxiliary_head = FCNHead(classes=classes)

    def forward(self, x):
        out = self.decode_head(self.backbone(x)[1])
        return F.interpolate(out, x.shape[2:], mode="bilinear", align_corners=False)


def _torchvision_deeplabv3(classes=CLASSES):
    from torchvision.models.segmentation import deeplabv3_resnet50

    return deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=classes, aux_loss=True)


def _reference(fmt):
    torch.manual_seed(0)
    if fmt == "semseg":
        return _random_bn_stats(SemsegPSPNet())
    if fmt == "mmseg":
        return _random_bn_stats(MMSegPSPNet())
    return _random_bn_stats(_torchvision_deeplabv3())


def _published(fmt, net):
    """The file as each project writes it."""
    sd = net.state_dict()
    if fmt == "semseg":  # tool/train.py under DDP
        return {"epoch": 50, "state_dict": {f"module.{k}": v for k, v in sd.items()},
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.01, "momentum": 0.9, "params": [0, 1]}]}}
    if fmt == "mmseg":
        return {"meta": {"mmseg_version": "0.5.0+b2724da", "config": "model = dict(...)", "epoch": 20000,
                         "CLASSES": ("background", "aeroplane")}, "state_dict": dict(sd)}
    return dict(sd)  # torchvision publishes the raw state dict


def _ours(model, x):
    with torch.no_grad():
        out = model.eval()(x, aux=False)["out"]
    return F.interpolate(out, x.shape[2:], mode="bilinear", align_corners=model.align_corners)


FORMATS = ("semseg", "mmseg", "torchvision")
EXPECTED_ARCH = {"semseg": ("pspnet", "semseg", "semseg", True), "mmseg": ("pspnet", "mmseg", "contract", False),
                 "torchvision": ("deeplabv3", "torchvision", "contract", False)}


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """{format: (reference network, path of its published-layout file)}, built once."""
    folder = tmp_path_factory.mktemp("published")
    out = {}
    for fmt in FORMATS:
        net = _reference(fmt)
        path = str(folder / f"{fmt}.pth")
        torch.save(_published(fmt, net), path)
        out[fmt] = (net, path)
    return out


@pytest.mark.parametrize("fmt", FORMATS)
def test_import_computes_what_the_source_network_computes(published, tmp_path, fmt):
    net, src = published[fmt]
    dst = str(tmp_path / "teacher.pth")
    ckpt = iw.import_weights(src, dst, fmt, classes=CLASSES)
    assert (ckpt["arch"], ckpt["stem"], ckpt["dilation"], ckpt["align_corners"]) == EXPECTED_ARCH[fmt]
    assert (ckpt["layers"], ckpt["classes"], ckpt["mode"]) == (50, CLASSES, "supervised")
    assert ckpt["imported"]["format"] == fmt and len(ckpt["imported"]["sha256"]) == 64
    model, saved = model_from_checkpoint(dst, CLASSES)  # what test.py does with test.checkpoint
    own = {k: v for k, v in net.state_dict().items()}
    assert len(saved["model"]) == len(own)  # every tensor of the file has its place, none invented
    x = torch.randn(2, 3, 33, 41)  # semseg's (H - 1) % 8 == 0 holds for 33 and 41
    with torch.no_grad():
        expected = net(x) if fmt != "torchvision" else net(x)["out"]
    got = _ours(model, x)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() < 1e-4


def test_imported_file_is_a_teacher_and_the_cli_says_what_it_wrote(published, tmp_path, capsys):
    """(test.py's loader is the numerical test's model_from_checkpoint.)"""
    dst, fmt = str(tmp_path / "t.pth"), "mmseg"
    assert iw.main(["--format", fmt, published[fmt][1], dst, "--classes", str(CLASSES)]) == 0
    out = capsys.readouterr().out
    assert "PSPNet-R50 (mmseg stem, contract dilation, align_corners false) with 5 classes" in out
    assert "teacher.layers=50" in out
    cfg = load_config(None, [f"data.classes={CLASSES}", f"teacher.checkpoint={dst}",
                             "teacher.layers=50"])
    teacher = load_teacher(cfg)
    assert type(teacher).__name__ == "PSPNet" and teacher.align_corners is False
    with pytest.raises(SegKDError, match="teacher.layers=101"):
        load_teacher(load_config(None, [f"data.classes={CLASSES}", f"teacher.checkpoint={dst}", "teacher.layers=101"]))


def test_torchvision_references_wrapper_and_semseg_without_prefix(published, tmp_path):
    """torchvision's references/segmentation/train.py saves {'model': ...}; a semseg file saved without DDP
    has no ``module.`` prefix: both import the same tensors."""
    net, _ = published["torchvision"]
    src = str(tmp_path / "ref.pth")
    torch.save({"model": net.state_dict(), "optimizer": {}, "epoch": 29, "args": {"lr": 0.02}}, src)
    a, _ = iw.convert(src, "torchvision")
    b, _ = iw.convert(published["torchvision"][1], "torchvision")
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    net, _ = published["semseg"]
    src = str(tmp_path / "plain.pth")
    torch.save({"state_dict": net.state_dict()}, src)
    assert iw.convert(src, "semseg")[0]["layers"] == 50


# ---------------------------------------------------------------- every wrong file: one line, DST untouched
def _edited(published, tmp_path, fmt, edit):
    net, _ = published[fmt]
    obj = _published(fmt, net)
    sd = obj["state_dict"] if fmt != "torchvision" else obj
    edit(sd)
    path = str(tmp_path / "edited.pth")
    torch.save(obj, path)
    return path


def _rename(old, new):
    def edit(sd):
        sd[new] = sd.pop(old)
    return edit


CASES = [
    ("semseg", _rename("module.ppm.features.0.1.weight", "module.ppm.feature.0.1.weight"),
     r"keys no rule maps: ppm\.feature\.0\.1\.weight"),
    ("semseg", lambda sd: sd.pop("module.aux.4.bias"), r"missing keys: aux_head\.4\.bias"),
    ("mmseg", lambda sd: sd.update({"decode_head.conv_seg.scale": torch.ones(1)}),
     r"keys no rule maps: decode_head\.conv_seg\.scale"),
    ("mmseg", lambda sd: sd.pop("backbone.stem.3.weight"), r"missing keys: backbone\.conv2\.weight"),
    ("mmseg", lambda sd: sd.update({"backbone.stem.1.weight": torch.ones(33)}),
     r"shape mismatch \(file vs model\): backbone\.bn1\.weight \(33,\) vs \(32,\)"),
    ("mmseg", lambda sd: sd.update({"decode_head.aspp_modules.0.conv.weight": torch.ones(1)}), r"ASPPHead"),
    ("torchvision", _rename("aux_classifier.4.weight", "aux_classifier.5.weight"),
     r"keys no rule maps: aux_classifier\.5\.weight"),
    ("torchvision", lambda sd: [sd.pop(k) for k in list(sd) if k.startswith("backbone.layer3.5.")],
     r"5 Bottlenecks in layer3 is none of ResNet"),
]


@pytest.mark.parametrize("fmt,edit,message", CASES)
def test_bad_file_is_one_line_naming_it_and_dst_is_not_written(published, tmp_path, fmt, edit, message):
    src = _edited(published, tmp_path, fmt, edit)
    dst = str(tmp_path / "out" / "teacher.pth")
    assert_refused(src, dst, fmt, message)


def test_wrong_class_count_is_named(published, tmp_path):
    dst = str(tmp_path / "t.pth")
    with pytest.raises(SegKDError, match=r"has 5 classes \(head\.4\.bias\), not --classes 21"):
        iw.import_weights(published["mmseg"][1], dst, "mmseg", classes=21)
    assert not os.path.exists(dst)


def test_wrong_format_is_refused(published, tmp_path):
    """semseg's file read as mmseg's: no rule of mmseg's maps its keys."""
    dst = str(tmp_path / "t.pth")
    message = r"not a mmseg pspnet checkpoint: keys no rule maps: module\.layer0\.0\.weight"
    with pytest.raises(SegKDError, match=message):
        iw.import_weights(published["semseg"][1], dst, "mmseg")
    assert not os.path.exists(dst)


@pytest.mark.parametrize("content,message", [
    (b"not a checkpoint\n", "not a readable PyTorch checkpoint"),
    (None, "not a semseg checkpoint: entries that are not tensors: epoch"),
])
def test_non_checkpoint_files(tmp_path, content, message):
    src = str(tmp_path / "src.pth")
    if content is None:
        torch.save({"epoch": 3, "lr": 0.1}, src)  # a dict, but of no tensors and under no wrapper
    else:
        with open(src, "wb") as f:
            f.write(content)
    dst = str(tmp_path / "t.pth")
    with pytest.raises(SegKDError, match=message):
        iw.import_weights(src, dst, "semseg")
    assert not os.path.exists(dst)
    with pytest.raises(SegKDError, match="file not found"):
        iw.import_weights(str(tmp_path / "absent.pth"), dst, "semseg")


def test_existing_dst_is_never_overwritten(published, tmp_path):
    dst = tmp_path / "t.pth"
    dst.write_bytes(b"an earlier import")
    assert iw.main(["--format", "semseg", published["semseg"][1], str(dst)]) == 2
    assert dst.read_bytes() == b"an earlier import"


def test_resnet18_and_101_depths_are_read_off_the_file(tmp_path):
    """mmseg publishes pspnet_r18-d8 and r101-d8, semseg PSPNet101: the depth comes from layer3's blocks."""
    from model.build import build_network

    for depth, arch in ((18, iw.FORMATS["mmseg"].arch), (101, iw.FORMATS["semseg"].arch)):
        with torch.device("meta"):
            sd = build_network(arch, depth, CLASSES).state_dict()
        assert iw.infer_shape(sd, "f", iw.FORMATS["mmseg"]) == (depth, CLASSES)


# ---------------------------------------------------------------- semseg's ImageNet initialisation
class SemsegResNet(nn.Module):
    """semseg's model/resnet.py ResNet(deep_base=True): conv1/bn1/conv2/bn2/conv3/bn3 then layer1..4 and fc;
    its ``initmodel/resnet50_v2.pth`` is this state dict."""

    def __init__(self, block=Bottleneck, counts=(3, 4, 6, 3)):
        super().__init__()
        r = _resnet_layers(block, list(counts), 128)
        (self.conv1, self.bn1, _), (self.conv2, self.bn2, _), (self.conv3, self.bn3, _) = (
            _conv3x3_bn_relu(3, 64, 2), _conv3x3_bn_relu(64, 64), _conv3x3_bn_relu(64, 128))
        self.layer1, self.layer2, self.layer3, self.layer4 = r.layer1, r.layer2, r.layer3, r.layer4
        self.fc = nn.Linear(512 * block.expansion, 1000)


def test_pretrained_path_takes_semsegs_deep_base_resnet(tmp_path):
    torch.manual_seed(1)
    ref = _random_bn_stats(SemsegResNet())
    path = str(tmp_path / "resnet50_v2.pth")
    torch.save(ref.state_dict(), path)
    ours = ResNetBackbone(50, pretrained=path, stem="semseg").eval()
    ref_sd = {k: v for k, v in ref.state_dict().items() if not k.startswith("fc.")}
    assert ours.state_dict().keys() == ref_sd.keys()
    assert all(torch.equal(ours.state_dict()[k], v) for k, v in ref_sd.items())


def test_pretrained_path_for_a_deep_stem_refuses_a_torchvision_file(tmp_path):
    path = str(tmp_path / "tv.pth")
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(SegKDError, match=r"tv\.pth: (missing|unexpected) keys"):
        ResNetBackbone(18, pretrained=path, stem="semseg")


def test_semseg_r18_basic_blocks_are_not_in_semseg_but_build(tmp_path):
    """semseg's resnet18 deep base (BasicBlock, layer1 taking 128 with a downsample) loads too."""
    torch.manual_seed(2)
    ref = SemsegResNet(BasicBlock, (2, 2, 2, 2))
    path = str(tmp_path / "resnet18_v2.pth")
    torch.save(ref.state_dict(), path)
    ours = ResNetBackbone(18, pretrained=path, stem="semseg")
    assert torch.equal(ours.layer1[0].downsample[0].weight, ref.layer1[0].downsample[0].weight)
