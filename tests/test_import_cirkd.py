"""tools.import_weights --format cirkd: CIRKD's DeepLabV3 files, fabricated with its module names and shapes
(random weights, non-trivial BN statistics, tiny class count), import strictly, load as a teacher and compute
what CIRKD's network computes on the same image; a file of another format, class count or architecture is one
line naming it, and DST is then not written.

The reference network below is written from winycg/CIRKD's model code (``models/deeplabv3.py``: ``_DeepLabHead``,
``_ASPP``, ``_AsppPooling``, ``_FCNHead``; ``models/segbase.py``; ``models/base_models/resnetv1b.py``:
``ResNetV1b(deep_stem=True)``, ``BasicBlockV1b`` / ``BottleneckV1b`` with ``previous_dilation``) and its loaders
(``dataset/*.py``: BGR minus the Caffe mean). scripts/check_import_upstream.py --cirkd runs CIRKD's own code.
"""

import os
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from data.transforms import normalize
from model.build import ARCH_DEFAULTS, build_model, build_network, load_teacher, model_from_checkpoint
from model.inputs import CAFFE_MEAN_BGR, CaffeInput
from tests.import_refusals import assert_refused
from tools import import_weights as iw
from util.config import load_config
from util.errors import SegKDError

CLASSES = 5
CIRKD_ARCH = {"arch": "deeplabv3", "stem": "semseg", "dilation": "cirkd", "align_corners": True, "head": "cirkd",
              "input": "caffe"}


def _cbr(cin, cout, k=3, stride=1, d=1):
    return [nn.Conv2d(cin, cout, k, stride, d * (k // 2), dilation=d, bias=False), nn.BatchNorm2d(cout),
            nn.ReLU(True)]


class BasicV1b(nn.Module):
    """conv1 at ``d1`` (the block's dilation), conv2 at ``d2`` (CIRKD's previous_dilation)."""

    expansion = 1

    def __init__(self, cin, planes, stride, d1, d2, downsample):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, d1, d1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, d2, d2, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class BottleneckV1b(nn.Module):
    """The stride and the dilation on conv2 (``d1``); ``d2`` unused, as in CIRKD's."""

    expansion = 4

    def __init__(self, cin, planes, stride, d1, d2, downsample):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, planes, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, d1, d1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = nn.Conv2d(planes, planes * 4, 1, bias=False), nn.BatchNorm2d(planes * 4)
        self.downsample = downsample

    def forward(self, x):
        out = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        return F.relu(self.bn3(self.conv3(out)) + (x if self.downsample is None else self.downsample(x)))


class ResNetV1s(nn.Module):
    """resnet*_v1s(dilated=True): deep stem 64/64/128 (conv1..bn3, relu1..3), maxpool, layer1..4; layer3's
    first block at (1, 2), the others at 2; layer4's first at (2, 4), the others at 4."""

    def __init__(self, block, counts):
        super().__init__()
        (self.conv1, self.bn1, _), (self.conv2, self.bn2, _), (self.conv3, self.bn3, _) = (
            _cbr(3, 64, stride=2), _cbr(64, 64), _cbr(64, 128))
        self.inplanes = 128
        self.layer1 = self._layer(block, 64, counts[0], 1, 1)
        self.layer2 = self._layer(block, 128, counts[1], 2, 1)
        self.layer3 = self._layer(block, 256, counts[2], 1, 2)
        self.layer4 = self._layer(block, 512, counts[3], 1, 4)

    def _layer(self, block, planes, n, stride, dilation):
        out = planes * block.expansion
        down = None
        if stride != 1 or self.inplanes != out:
            down = nn.Sequential(nn.Conv2d(self.inplanes, out, 1, stride, bias=False), nn.BatchNorm2d(out))
        first = 1 if dilation in (1, 2) else 2
        blocks = [block(self.inplanes, planes, stride, first, dilation, down)]
        self.inplanes = out
        blocks += [block(out, planes, 1, dilation, dilation, None) for _ in range(1, n)]
        return nn.Sequential(*blocks)


class ASPPConv(nn.Module):
    def __init__(self, cin, cout, rate):
        super().__init__()
        self.block = nn.Sequential(*_cbr(cin, cout, 3, d=rate))


class ASPPPooling(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.gap = nn.Sequential(nn.AdaptiveAvgPool2d(1), *_cbr(cin, cout, 1))

    def forward(self, x):
        return F.interpolate(self.gap(x), x.shape[2:], mode="bilinear", align_corners=True)


class CirkdASPP(nn.Module):
    def __init__(self, cin, cout=512):
        super().__init__()
        self.b0 = nn.Sequential(*_cbr(cin, cout, 1))
        self.b1, self.b2, self.b3 = (ASPPConv(cin, cout, r) for r in (12, 24, 36))
        self.b4 = ASPPPooling(cin, cout)
        self.project = nn.Sequential(*_cbr(5 * cout, cout, 1), nn.Dropout(0.5))

    def forward(self, x):
        feats = [self.b0(x), self.b1.block(x), self.b2.block(x), self.b3.block(x), self.b4(x)]
        return self.project(torch.cat(feats, 1))


class CirkdHead(nn.Module):
    def __init__(self, cin, classes):
        super().__init__()
        self.aspp = CirkdASPP(cin)
        self.block = nn.Sequential(*_cbr(512, 512), nn.Dropout(0.1), nn.Conv2d(512, classes, 1))


class CirkdDeepLabV3(nn.Module):
    """DeepLabV3(nclass, backbone='resnet18'|'resnet101', aux=True): ``pretrained``, ``head``, ``auxlayer``;
    forward -> [out, aux, feature] at 1/8, not upsampled."""

    def __init__(self, depth=18, classes=CLASSES):
        super().__init__()
        block, counts = (BasicV1b, (2, 2, 2, 2)) if depth == 18 else (BottleneckV1b, (3, 4, 23, 3))
        self.pretrained = ResNetV1s(block, counts)
        c4 = 512 * block.expansion
        self.head = CirkdHead(c4, classes)
        self.auxlayer = nn.Module()
        self.auxlayer.block = nn.Sequential(*_cbr(c4 // 2, c4 // 8), nn.Dropout(0.1), nn.Conv2d(c4 // 8, classes, 1))

    def forward(self, x):
        p = self.pretrained
        x = F.relu(p.bn3(p.conv3(F.relu(p.bn2(p.conv2(F.relu(p.bn1(p.conv1(x)))))))))
        c3 = p.layer3(p.layer2(p.layer1(F.max_pool2d(x, 3, 2, 1))))
        return self.head.block(self.head.aspp(p.layer4(c3))), self.auxlayer.block(c3)


def _same_image(seed=0):
    """Two random images as each loader gives them: segkd's (RGB, ImageNet mean/std) and CIRKD's (cv2's BGR
    minus the Caffe mean on the 0..255 scale, float64 then float32, its dataset/*.py)."""
    rgb = np.random.default_rng(seed).integers(0, 256, (2, 41, 49, 3), dtype=np.uint8)
    theirs = np.stack([(im[..., ::-1].astype(np.float32) - np.array(CAFFE_MEAN_BGR)).transpose(2, 0, 1)
                       for im in rgb]).astype(np.float32)
    return normalize(torch.from_numpy(rgb).permute(0, 3, 1, 2)), torch.from_numpy(theirs)


def _calibrated(net, batch):
    """Random BN affine (each residual block's last one small) and BN statistics of ``batch`` (one pass in
    train mode), so that the logits on CIRKD's 0..255 inputs are of order 1."""
    torch.manual_seed(0)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
        for layer in (net.pretrained.layer1, net.pretrained.layer2, net.pretrained.layer3, net.pretrained.layer4):
            for block in layer:
                block.bn2.weight.uniform_(0.05, 0.2)
        net.train()(batch)
    return net.eval()


@pytest.fixture(scope="module")
def r18(tmp_path_factory):
    """(reference network, its file as CIRKD's train_*.py saves it: model.state_dict(), no wrapper, no prefix)."""
    net = _calibrated(CirkdDeepLabV3(18), _same_image(seed=1)[1])
    path = str(tmp_path_factory.mktemp("cirkd") / "kd_deeplabv3_resnet18_citys_best_model.pth")
    torch.save(net.state_dict(), path)
    return net, path


def test_r18_student_imports_strictly_and_computes_cirkds_logits(r18, tmp_path):
    net, src = r18
    dst = str(tmp_path / "student.pth")
    ckpt = iw.import_weights(src, dst, "cirkd", classes=CLASSES)
    assert {k: ckpt[k] for k in CIRKD_ARCH} == CIRKD_ARCH
    assert (ckpt["layers"], ckpt["classes"], ckpt["mode"]) == (18, CLASSES, "supervised")
    model, saved = model_from_checkpoint(dst, CLASSES)  # what test.py does with test.checkpoint
    assert len(saved["model"]) == len(net.state_dict())  # every tensor has its place, none invented
    assert isinstance(model.input_transform, CaffeInput)
    theirs = torch.randn(2, 3, 41, 49) * 60  # the network alone, on a CIRKD-scale input: the same function
    model.input_transform = nn.Identity()
    with torch.no_grad():
        out, aux = net(theirs)
        got = model.eval()(theirs)
    assert got["out"].shape == out.shape == (2, CLASSES, 6, 7) and got["aux"].shape == aux.shape
    assert (got["out"] - out).abs().max().item() < 1e-5 and (got["aux"] - aux).abs().max().item() < 1e-5


def test_the_same_image_through_each_loader_gives_the_same_logits(r18, tmp_path):
    net, src = r18
    dst = str(tmp_path / "student.pth")
    iw.import_weights(src, dst, "cirkd", classes=CLASSES)
    model, _ = model_from_checkpoint(dst, CLASSES)
    mine, theirs = _same_image()
    assert (model.input_transform(mine) - theirs).abs().max().item() < 5e-5  # 0..255 scale, float32 rounding
    with torch.no_grad():
        expected = F.interpolate(net(theirs)[0], theirs.shape[2:], mode="bilinear", align_corners=True)
        got = model.eval()(mine, aux=False)["out"]
    got = F.interpolate(got, mine.shape[2:], mode="bilinear", align_corners=model.align_corners)
    assert 0.1 < expected.abs().max().item() < 100
    assert (got - expected).abs().max().item() < 1e-4


def test_imported_file_is_a_teacher_and_the_cli_says_what_it_wrote(r18, tmp_path, capsys):
    dst = str(tmp_path / "t.pth")
    assert iw.main(["--format", "cirkd", r18[1], dst, "--classes", str(CLASSES)]) == 0
    out = capsys.readouterr().out
    assert ("DeepLabV3-R18 (semseg stem, cirkd dilation, cirkd head, caffe input) with 5 classes" in out
            and "teacher.layers=18" in out)
    teacher = load_teacher(load_config(None, [f"data.classes={CLASSES}", f"teacher.checkpoint={dst}",
                                              "teacher.layers=18"]))
    assert type(teacher).__name__ == "DeepLabV3" and isinstance(teacher.input_transform, CaffeInput)
    assert teacher.feature_channels["out_feat"] == 512 and teacher.feature_channels["aux_feat"] == 64


def test_r101_teacher_layout_maps_key_for_key_and_shape_for_shape():
    """CIRKD's DeepLabV3-R101 (Bottleneck, 23 blocks in layer3), on the meta device: too large to run here
    (scripts/check_import_upstream.py --cirkd compares its logits with CIRKD's own code)."""
    with torch.device("meta"):
        theirs = CirkdDeepLabV3(101, classes=19).state_dict()
        ours = build_network(CIRKD_ARCH, 101, 19).state_dict()
    mapped = iw.map_keys(theirs, iw.FORMATS["cirkd"], "f")
    assert iw.infer_shape(mapped, "f", iw.FORMATS["cirkd"]) == (101, 19)
    assert set(mapped) == set(ours) and len(mapped) == len(theirs)
    assert all(mapped[k].shape == ours[k].shape for k in ours)
    assert ours["aspp.project.0.weight"].shape == (512, 2560, 1, 1) and ours["aux_head.0.weight"].shape[0] == 256


# ---------------------------------------------------------------- every wrong file: one line, DST untouched
def _file(tmp_path, r18, edit):
    sd = dict(r18[0].state_dict())
    edited = edit(sd)
    sd = edited if isinstance(edited, dict) else sd  # an edit returns a new top level, or changes sd in place
    path = str(tmp_path / "edited.pth")
    torch.save(sd, path)
    return path


def _vanilla(sd):
    """resnet18_vanilla (ResNetV1b without deep stem): a 7x7 conv1, no conv2/conv3."""
    for k in [k for k in sd if k.startswith(("pretrained.conv2.", "pretrained.bn2.", "pretrained.conv3.",
                                              "pretrained.bn3."))]:
        del sd[k]
    sd["pretrained.conv1.weight"] = torch.zeros(64, 3, 7, 7)


CASES = [
    (lambda sd: sd.update({"head.psp.conv1.conv.0.weight": torch.ones(1)}), r"CIRKD's ResNet PSPNet \(head\.psp"),
    (lambda sd: sd.update({"pretrained.conv1.conv.weight": torch.ones(1)}),
     r"a CIRKD MobileNetV2 / MobileViT student .* MobileNetV3 DeepLabV3 / PSPNet students only"),
    (lambda sd: sd.update({"pretrained.layer0.conv.weight": torch.ones(1)}),
     r"a CIRKD MobileNetV3 ends at pretrained\.layer12 \(Small\) or layer16 \(Large\); this file ends at "
     r"pretrained\.layer4$"),
    (lambda sd: sd.update({"head.fpn_in.0.0.weight": torch.ones(1)}), r"CIRKD's UPerNet"),
    (_vanilla, r"missing keys: backbone\.conv2\.weight.*shape mismatch \(file vs model\): backbone\.conv1\.weight "
               r"\(64, 3, 7, 7\) vs \(64, 3, 3, 3\)"),
    (lambda sd: sd.pop("auxlayer.block.4.bias"), r"missing keys: aux_head\.4\.bias"),
    (lambda sd: sd.update({"head.aspp.b5.block.0.weight": torch.ones(1)}),
     r"not a cirkd deeplabv3 checkpoint: keys no rule maps: head\.aspp\.b5\.block\.0\.weight"),
    (lambda sd: {"state_dict": sd, "epoch": 3}, r"not a cirkd checkpoint: entries that are not tensors: state_dict"),
    (lambda sd: sd.update({"head.aspp.project.0.weight": torch.ones(256, 1280, 1, 1)}),
     r"shape mismatch \(file vs model\): aspp\.project\.0\.weight \(256, 1280, 1, 1\) vs \(512, 2560, 1, 1\)"),
]


@pytest.mark.parametrize("edit,message", CASES)
def test_a_wrong_architecture_is_one_line_naming_the_file(r18, tmp_path, edit, message):
    src = _file(tmp_path, r18, edit)
    dst = str(tmp_path / "out" / "teacher.pth")
    assert_refused(src, dst, "cirkd", message)


def test_wrong_class_count_and_wrong_format_are_named(r18, tmp_path):
    dst = str(tmp_path / "t.pth")
    with pytest.raises(SegKDError, match=r"^.*kd_deeplabv3_resnet18_citys_best_model\.pth: the classifier has 5 "
                                         r"classes \(head\.4\.bias\), not --classes 19$"):
        iw.import_weights(r18[1], dst, "cirkd", classes=19)
    with pytest.raises(SegKDError, match=r"not a torchvision deeplabv3 checkpoint: keys no rule maps: "
                                         r"pretrained\.conv1\.weight"):
        iw.import_weights(r18[1], dst, "torchvision")
    from torchvision.models.segmentation import deeplabv3_resnet50

    tv = str(tmp_path / "tv.pth")
    torch.save(deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=CLASSES, aux_loss=True)
               .state_dict(), tv)
    with pytest.raises(SegKDError, match=r"tv\.pth: not a cirkd deeplabv3 checkpoint: keys no rule maps: "
                                         r"backbone\.conv1\.weight"):
        iw.import_weights(tv, dst, "cirkd")
    assert not os.path.exists(dst)


def test_existing_dst_is_never_overwritten(r18, tmp_path):
    dst = tmp_path / "t.pth"
    dst.write_bytes(b"an earlier import")
    assert iw.main(["--format", "cirkd", r18[1], str(dst)]) == 2
    assert dst.read_bytes() == b"an earlier import"


# ---------------------------------------------------------------- the architecture keys it needs
def test_cirkd_dilation_differs_from_contract_only_in_a_first_basic_blocks_conv2():
    def dilations(layers, dilation):
        net = build_network({**ARCH_DEFAULTS, "dilation": dilation}, layers, CLASSES)
        return {n: m.dilation for n, m in net.backbone.named_modules() if isinstance(m, nn.Conv2d)}

    contract, cirkd = dilations(18, "contract"), dilations(18, "cirkd")
    assert {n for n in cirkd if cirkd[n] != contract[n]} == {"layer3.0.conv2", "layer4.0.conv2"}
    assert (cirkd["layer3.0.conv1"], cirkd["layer3.0.conv2"], cirkd["layer4.0.conv1"], cirkd["layer4.0.conv2"]) == (
        (1, 1), (2, 2), (2, 2), (4, 4))
    with torch.device("meta"):
        assert dilations(50, "cirkd") == dilations(50, "contract")


def test_head_and_input_keys_train_and_are_checked():
    cfg = load_config(None, ["data.classes=4", "model.arch=deeplabv3", "model.stem=semseg", "model.dilation=cirkd",
                             "model.head=cirkd", "model.input=caffe"])
    model = build_model(cfg).train()
    out = model(torch.randn(2, 3, 33, 33))
    (out["out"].sum() + out["aux"].sum()).backward()
    assert model.head[0].weight.grad is not None and model.aux_head[0].out_channels == 64
    assert not any("input_transform" in k for k in model.state_dict())  # a fixed conversion, not a weight
    with pytest.raises(SegKDError, match=r"^model\.head=cirkd is CIRKD's DeepLabV3 head: it needs "
                                         r"model\.arch=deeplabv3, got pspnet$"):
        build_model(load_config(None, ["model.head=cirkd"]))
    with pytest.raises(SegKDError, match=r"model\.input must be one of imagenet, caffe, got 'bgr'"):
        load_config(None, ["model.input=bgr"])
    default = build_model(load_config(None, ["data.classes=4"]))
    assert isinstance(default.input_transform, nn.Identity)


# ---------------------------------------------------------------- end to end: a student distils from it
@pytest.mark.slow
def test_a_segkd_student_distils_from_an_imported_cirkd_teacher(tiny_data, tmp_path):
    """A DeepLabV3-R18 in CIRKD's format (4 classes) imported, then 2 iterations of a PSPNet-R18 student with KD,
    CWD on the aux logits and FitNets (out_feat 512 -> 512), and test.py with the imported file itself."""
    from tests.conftest import TINY_CLASSES, run_cli, tiny_overrides

    torch.manual_seed(0)
    src, teacher = str(tmp_path / "kd_deeplabv3_resnet18_x.pth"), str(tmp_path / "teacher.pth")
    torch.save(CirkdDeepLabV3(18, TINY_CLASSES).state_dict(), src)
    r = run_cli("-m", "tools.import_weights", "--format", "cirkd", src, teacher, "--classes", str(TINY_CLASSES))
    assert r.returncode == 0, r.stderr
    run_dir = tmp_path / "run"
    r = run_cli("train.py", "--config", "config/synthetic/pspnet18_kd.yaml", *tiny_overrides(tiny_data, str(run_dir)),
                "train.iters=2", f"teacher.checkpoint={teacher}", "teacher.layers=18", "distill.feat_loss=cwd",
                "distill.terms=fitnet", env={"OMP_NUM_THREADS": "1"}, timeout=300)
    assert r.returncode == 0, r.stderr
    assert re.search(r"kd \d+\.\d+ .*feat \d+\.\d+ .*fitnet \d+\.\d+", r.stdout), r.stdout[-2000:]
    r = run_cli("test.py", "--config", "config/synthetic/pspnet18_kd.yaml", *tiny_overrides(tiny_data, str(run_dir)),
                f"test.checkpoint={teacher}", env={"OMP_NUM_THREADS": "1"}, timeout=300)
    assert r.returncode == 0, r.stderr
    assert os.path.exists(tmp_path / "eval" / "ss" / "metrics.json")
