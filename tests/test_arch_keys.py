"""The architecture keys model.arch / model.stem / model.dilation / model.align_corners: the defaults build the
network segkd always built (same state-dict keys and shapes, the same logits for a seed); every stem x dilation
x architecture runs at output stride 8; the deep stems and the contract dilation have the layout their
projects publish; a checkpoint records the keys and rebuilds from them, and one written before the keys
existed loads as the defaults; a DeepLabV3 teacher distils a PSPNet student; the training losses place the
logits on the label with the student's align_corners."""

import itertools

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from engine.inference import window_probs
from model.backbone import ResNetBackbone
from model.build import build_model, checkpoint_meta, describe_checkpoint, load_teacher, model_from_checkpoint
from model.deeplabv3 import ASPP, DeepLabV3, build_deeplabv3
from model.distiller import Distiller
from model.pspnet import PPM, PSPNet, build_pspnet
from util.checkpoint import save_checkpoint
from util.config import load_config
from util.errors import SegKDError

STEMS = ("torchvision", "semseg", "mmseg")
DILATIONS = ("semseg", "contract")
ARCHS = ("pspnet", "deeplabv3")


def cfg_with(*overrides):
    return load_config(None, ["data.classes=4", *overrides])


def stride8_size(n: int) -> int:
    """Both stems (7x7/2 pad 3, or 3x3/2 pad 1) and the maxpool and layer2's conv (3x3/2 pad 1) give
    (n - 1) // 2 + 1 each: 32 -> 4, 65 -> 9."""
    for _ in range(3):
        n = (n - 1) // 2 + 1
    return n


# ---------------------------------------------------------------- the defaults change nothing
def _bn_keys(prefix: str, channels: int) -> list[tuple[str, tuple]]:
    return [(f"{prefix}.{k}", (channels,)) for k in ("weight", "bias", "running_mean", "running_var")] + [
        (f"{prefix}.num_batches_tracked", ())]


def test_default_pspnet_is_torchvision_resnet18_plus_the_heads():
    """build_pspnet(18, 5): torchvision's resnet18 state dict without fc under ``backbone.``, then the PPM
    (four 1x1 convs 512 -> 128 + BN), the head (3x3 conv 1024 -> 512, BN, 1x1 conv to 5) and the aux head
    (3x3 conv 256 -> 256, BN, 1x1 conv to 5), in this order."""
    expected = [(f"backbone.{k}", tuple(v.shape)) for k, v in torchvision.models.resnet18().state_dict().items()
                if not k.startswith("fc.")]
    for i in range(4):
        expected += [(f"ppm.branches.{i}.1.weight", (128, 512, 1, 1)), *_bn_keys(f"ppm.branches.{i}.2", 128)]
    for name, cin, mid in (("head", 1024, 512), ("aux_head", 256, 256)):
        expected += [(f"{name}.0.weight", (mid, cin, 3, 3)), *_bn_keys(f"{name}.1", mid),
                     (f"{name}.4.weight", (5, mid, 1, 1)), (f"{name}.4.bias", (5,))]
    got = [(k, tuple(v.shape)) for k, v in build_pspnet(18, 5).state_dict().items()]
    assert got == expected


def test_defaults_are_the_old_network():
    cfg = cfg_with()
    assert (cfg.model.arch, cfg.model.stem, cfg.model.dilation, cfg.model.align_corners) == (
        "pspnet", "torchvision", "semseg", True)
    torch.manual_seed(3)
    new = build_model(cfg).eval()
    torch.manual_seed(3)
    old = build_pspnet(18, 4).eval()  # the call build_model made before the keys existed
    assert type(new) is PSPNet and new.align_corners is True
    assert list(new.state_dict()) == list(old.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(new.state_dict().values(), old.state_dict().values()))
    x = torch.randn(2, 3, 33, 33)
    with torch.no_grad():
        a, b = new(x), old(x)
    assert torch.equal(a["out"], b["out"]) and torch.equal(a["aux"], b["aux"])


# ---------------------------------------------------------------- every variant at output stride 8
# The layouts of published checkpoints (semseg's PSPNet, mmseg's pspnet_r50-d8, a torchvision-style DeepLabV3)
# run in the fast tier at R50; the other R50 rows take about 1 s each even on the meta device.
PUBLISHED = {("pspnet", "semseg", "semseg"), ("pspnet", "mmseg", "contract"), ("deeplabv3", "torchvision", "semseg")}
VARIANTS = [pytest.param(a, s, d, depth, marks=[pytest.mark.slow] if depth == 50 and (a, s, d) not in PUBLISHED else [])
            for a, s, d, depth in itertools.product(ARCHS, STEMS, DILATIONS, (18, 50))]


@pytest.mark.parametrize("arch,stem,dilation,depth", VARIANTS)
def test_shapes_at_output_stride_8(arch, stem, dilation, depth):
    """On the meta device (shapes without arithmetic): logits, aux logits and the named features."""
    cfg = cfg_with(f"model.arch={arch}", f"model.stem={stem}", f"model.dilation={dilation}", f"model.layers={depth}")
    with torch.device("meta"):
        model = build_model(cfg)
        for size in (32, 65):
            out = model(torch.empty(2, 3, size, size), features=("layer1", "layer4", "out_feat", "aux_feat"))
            s = stride8_size(size)
            ch = model.feature_channels
            assert out["out"].shape == out["aux"].shape == (2, 4, s, s)
            assert out["out_feat"].shape == (2, ch["out_feat"], s, s)
            assert out["aux_feat"].shape == (2, 256, s, s)
            assert out["layer4"].shape == (2, ch["layer4"], s, s)
            assert out["layer1"].shape == (2, ch["layer1"], (size - 1) // 4 + 1, (size - 1) // 4 + 1)
    assert ch["out_feat"] == (512 if arch == "pspnet" else 256)


@pytest.mark.parametrize("arch,stem,dilation,depth,size", [("deeplabv3", "semseg", "contract", 18, 65),
                                                           ("pspnet", "mmseg", "contract", 50, 32)])
def test_real_forward_and_backward(arch, stem, dilation, depth, size):
    torch.manual_seed(0)
    build = build_pspnet if arch == "pspnet" else build_deeplabv3
    model = build(depth, 3, stem=stem, dilation=dilation, align_corners=False).train()
    out = model(torch.randn(2, 3, size, size))
    s = stride8_size(size)
    assert out["out"].shape == out["aux"].shape == (2, 3, s, s)
    (out["out"].square().mean() + out["aux"].square().mean()).backward()
    for name in ("conv1", "conv2", "conv3"):
        grad = getattr(model.backbone, name).weight.grad
        assert grad is not None and grad.abs().sum() > 0, name


# ---------------------------------------------------------------- the deep stems and the dilations
def test_semseg_stem_layout():
    net = ResNetBackbone(50, stem="semseg")
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert list(shapes)[:18] == [k for c in ("1", "2", "3") for k in
                                 [f"conv{c}.weight", *(f"bn{c}.{s}" for s in ("weight", "bias", "running_mean",
                                                                              "running_var", "num_batches_tracked"))]]
    assert shapes["conv1.weight"] == (64, 3, 3, 3) and shapes["conv2.weight"] == (64, 64, 3, 3)
    assert shapes["conv3.weight"] == (128, 64, 3, 3) and shapes["bn3.weight"] == (128,)
    assert net.conv1.stride == (2, 2) and net.conv2.stride == net.conv3.stride == (1, 1)
    assert all(c.padding == (1, 1) for c in (net.conv1, net.conv2, net.conv3))
    assert shapes["layer1.0.conv1.weight"] == (64, 128, 1, 1)
    assert shapes["layer1.0.downsample.0.weight"] == (256, 128, 1, 1)
    assert net.maxpool.kernel_size == 3 and net.maxpool.stride == 2 and net.maxpool.padding == 1


def test_semseg_stem_r18_gains_a_layer1_downsample():
    """semseg's _make_layer adds a downsample wherever the input channels differ: 128 -> 64 in layer1.0."""
    shapes = {k: tuple(v.shape) for k, v in ResNetBackbone(18, stem="semseg").state_dict().items()}
    assert shapes["layer1.0.conv1.weight"] == (64, 128, 3, 3)
    assert shapes["layer1.0.downsample.0.weight"] == (64, 128, 1, 1) and shapes["layer1.0.downsample.1.weight"] == (64,)
    assert "layer1.1.downsample.0.weight" not in shapes


def test_mmseg_stem_layout():
    net = ResNetBackbone(50, stem="mmseg")
    assert tuple(net.conv1.weight.shape) == (32, 3, 3, 3) and tuple(net.conv2.weight.shape) == (32, 32, 3, 3)
    assert tuple(net.conv3.weight.shape) == (64, 32, 3, 3)
    reference = torchvision.models.resnet50().state_dict()  # layer1 onwards exactly torchvision's
    layers = {k: tuple(v.shape) for k, v in net.state_dict().items() if k.startswith("layer")}
    assert layers == {k: tuple(v.shape) for k, v in reference.items() if k.startswith("layer")}


def _dilations(layer: nn.Sequential) -> list[int]:
    per_block = []
    for block in layer:
        convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
        assert all(c.stride == (1, 1) for c in convs)
        threes = {(c.dilation, c.padding) for c in convs if c.kernel_size == (3, 3)}
        assert len(threes) == 1
        (d, _), p = threes.pop()
        assert p == (d, d)
        assert all(c.dilation == (1, 1) for c in convs if c.kernel_size == (1, 1))
        per_block.append(d)
    return per_block


@pytest.mark.parametrize("depth", (18, 50))
def test_dilation_conventions_per_block(depth):
    blocks = {18: (2, 2), 50: (6, 3)}[depth]
    contract = ResNetBackbone(depth, dilation="contract")
    assert _dilations(contract.layer3) == [1] + [2] * (blocks[0] - 1)
    assert _dilations(contract.layer4) == [2] + [4] * (blocks[1] - 1)
    semseg = ResNetBackbone(depth)
    assert _dilations(semseg.layer3) == [2] * blocks[0] and _dilations(semseg.layer4) == [4] * blocks[1]


def test_contract_matches_torchvision_replace_stride_with_dilation():
    ours = ResNetBackbone(50, dilation="contract")
    theirs = torchvision.models.resnet50(replace_stride_with_dilation=[False, True, True])
    for name in ("layer3", "layer4"):
        a = [(m.stride, m.dilation, m.padding) for m in getattr(ours, name).modules() if isinstance(m, nn.Conv2d)]
        b = [(m.stride, m.dilation, m.padding) for m in getattr(theirs, name).modules() if isinstance(m, nn.Conv2d)]
        assert a == b, name


def test_deep_stem_refuses_torchvisions_imagenet_weights():
    with pytest.raises(SegKDError, match=r"model\.stem=torchvision") as err:
        ResNetBackbone(18, pretrained=True, stem="mmseg")
    assert "\n" not in str(err.value)
    with pytest.raises(SegKDError, match=r"model\.stem"):
        build_model(cfg_with("model.stem=semseg", "model.pretrained=true"))


@pytest.mark.parametrize("key,value", [("model.stem", "resnet"), ("model.dilation", "torchvision"),
                                       ("model.arch", "fcn"), ("model.align_corners", "maybe")])
def test_bad_values_refused_naming_the_key(key, value):
    with pytest.raises(SegKDError, match=key.replace(".", r"\.")):
        cfg_with(f"{key}={value}")


# ---------------------------------------------------------------- align_corners
def test_align_corners_false_changes_the_ppm_output():
    torch.manual_seed(0)
    ppm = PPM(8).eval()
    x = torch.randn(2, 8, 9, 9)
    with torch.no_grad():
        true = ppm(x)
        ppm.align_corners = False
        false = ppm(x)
    assert true.shape == false.shape == (2, 16, 9, 9)
    assert torch.equal(true[:, :8], false[:, :8])  # the input, concatenated as it is
    assert torch.allclose(true[:, 8:10], false[:, 8:10])  # the 1x1 bin is constant either way
    assert not torch.allclose(true[:, 10:], false[:, 10:])
    assert build_pspnet(18, 3, align_corners=False).ppm.align_corners is False


class FixedLogits(nn.Module):
    """A 'model' whose logits are a fixed 1 x 2 x 3 x 3 map, with or without an align_corners attribute."""

    def __init__(self, align_corners=None):
        super().__init__()
        self.logits = torch.arange(18.0).reshape(1, 2, 3, 3) / 4
        if align_corners is not None:
            self.align_corners = align_corners

    def forward(self, x, aux=True):
        return {"out": self.logits.expand(x.shape[0], -1, -1, -1)}


@pytest.mark.parametrize("setting,used", [(None, True), (True, True), (False, False)])
def test_evaluation_zooms_with_the_models_align_corners(setting, used):
    probs = window_probs(FixedLogits(setting), torch.zeros(1, 3, 17, 17), flip=False)
    expected = F.softmax(F.interpolate(FixedLogits().logits, size=(17, 17), mode="bilinear", align_corners=used), 1)
    assert torch.allclose(probs, expected, atol=1e-6)


# ---------------------------------------------------------------- checkpoints record the keys
def _save(tmp_path, cfg, model, mode="supervised", **extra):
    path = str(tmp_path / "model.pth")
    save_checkpoint({**checkpoint_meta(cfg.model, cfg, mode), **extra, "model": model.state_dict()}, path)
    return path


@pytest.mark.parametrize("arch,cls,name", [("pspnet", PSPNet, "PSPNet"), ("deeplabv3", DeepLabV3, "DeepLabV3")])
def test_checkpoint_round_trip_rebuilds_the_architecture(tmp_path, arch, cls, name):
    cfg = cfg_with(f"model.arch={arch}", "model.stem=semseg", "model.dilation=contract",
                   "model.align_corners=false", "model.layers=18")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    path = _save(tmp_path, cfg, model)
    rebuilt, ckpt = model_from_checkpoint(path, 4)
    assert (ckpt["arch"], ckpt["stem"], ckpt["dilation"], ckpt["align_corners"]) == (arch, "semseg", "contract", False)
    assert type(rebuilt) is cls and rebuilt.align_corners is False and rebuilt.backbone.stem == "semseg"
    assert describe_checkpoint(ckpt) == (f"a supervised {name}-R18 (semseg stem, contract dilation, "
                                         "align_corners false) with 4 classes")
    x = torch.randn(2, 3, 33, 33)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x)["out"], model(x)["out"])


def test_checkpoint_without_the_keys_loads_as_the_defaults(tmp_path):
    """A checkpoint written before the keys existed: format, mode, layers, classes and the model only."""
    torch.manual_seed(0)
    model = build_pspnet(18, 4).eval()
    path = str(tmp_path / "old.pth")
    save_checkpoint({"format": "segkd", "mode": "supervised", "layers": 18, "classes": 4,
                     "model": model.state_dict()}, path)
    rebuilt, ckpt = model_from_checkpoint(path, 4)
    assert type(rebuilt) is PSPNet and rebuilt.align_corners is True and rebuilt.backbone.stem == "torchvision"
    assert _dilations(rebuilt.backbone.layer3) == [2, 2]
    assert describe_checkpoint(ckpt) == "a supervised PSPNet-R18 with 4 classes"


@pytest.mark.parametrize("key,value", [("stem", "resnet"), ("arch", "fcn"), ("align_corners", "false"),
                                       ("dilation", True)])
def test_checkpoint_with_a_bad_arch_key_refused(tmp_path, key, value):
    cfg = cfg_with()
    path = _save(tmp_path, cfg, build_pspnet(18, 4), **{key: value})
    with pytest.raises(SegKDError, match=rf"model\.pth: checkpoint has unknown architecture keys {key}="):
        model_from_checkpoint(path, 4)


def test_teacher_architecture_comes_from_its_checkpoint(tmp_path):
    tcfg = cfg_with("model.layers=18", "model.stem=mmseg", "model.align_corners=false")
    path = _save(tmp_path, tcfg, build_model(tcfg))
    teacher = load_teacher(cfg_with(f"teacher.checkpoint={path}", "teacher.layers=18"))
    assert teacher.backbone.stem == "mmseg" and teacher.align_corners is False


# ---------------------------------------------------------------- DeepLabV3
def test_aspp_layout():
    aspp = ASPP(64)
    dilated = [b[0] for b in aspp.branches[1:4]]
    assert [c.dilation for c in dilated] == [(12, 12), (24, 24), (36, 36)]
    assert [c.padding for c in dilated] == [(12, 12), (24, 24), (36, 36)]
    assert isinstance(aspp.branches[4][0], nn.AdaptiveAvgPool2d) and aspp.branches[0][0].kernel_size == (1, 1)
    assert aspp.project[0].in_channels == 5 * 256 and aspp.out_channels == 256


def test_deeplabv3_out_feat_is_the_classifiers_input():
    torch.manual_seed(0)
    model = build_deeplabv3(18, 4).eval()
    x = torch.randn(2, 3, 33, 33)
    with torch.no_grad():
        feats = model(x, features=("out_feat",))
        assert torch.equal(feats["out"], model(x)["out"])
        assert torch.equal(feats["out_feat"], model.head[:3](model.aspp(model.backbone(x)["layer4"])))
    assert feats["out_feat"].shape == (2, 256, 5, 5) and model.feature_channels["out_feat"] == 256


def test_deeplabv3_parameter_groups():
    model = build_deeplabv3(18, 4)
    backbone, new = model.param_groups()
    assert {id(p) for p in backbone} == {id(p) for p in model.backbone.parameters()}
    for sub in (model.aspp, model.head, model.aux_head):
        assert {id(p) for p in sub.parameters()} <= {id(p) for p in new}
    assert len(backbone) + len(new) == len(list(model.parameters()))
    aux = {id(p) for p in model.aux_head.parameters()}
    assert {id(p) for p in model.inference_parameters()} == {id(p) for p in model.parameters()} - aux


@pytest.mark.parametrize("depth", [18, pytest.param(50, marks=pytest.mark.slow)])  # R50: about 3 s
def test_deeplabv3_teacher_distils_a_pspnet_student(tmp_path, depth):
    """A DeepLabV3 teacher (read from its checkpoint) and a PSPNet-R18 student: forward and backward through
    Distiller.from_config with logit KD, the aux-logit KL (same shapes) and FitNets on out_feat (512 -> 256)."""
    tcfg = cfg_with("model.arch=deeplabv3", f"model.layers={depth}")
    torch.manual_seed(0)
    path = _save(tmp_path, tcfg, build_model(tcfg))
    cfg = cfg_with(f"teacher.checkpoint={path}", f"teacher.layers={depth}", "distill.feat_loss=kl",
                   "distill.terms=[fitnet]")
    student = build_model(cfg)
    distiller = Distiller.from_config(student, load_teacher(cfg), cfg).train()
    assert type(distiller.teacher) is DeepLabV3 and type(student) is PSPNet
    target = torch.randint(0, 4, (2, 33, 33))
    total, terms = distiller(torch.randn(2, 3, 33, 33), target)
    assert set(terms) == {"ce", "aux", "kd", "feat", "fitnet"} and torch.isfinite(total)
    total.backward()
    assert student.aux_head[4].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in distiller.teacher.parameters())


def test_gflops_count_the_checkpoints_architecture():
    from engine.flops import gflops

    plain, deep = gflops(18, 4, 65), gflops(18, 4, 65, {"stem": "semseg", "layers": 18})
    assert plain == gflops(18, 4, 65, {}) and deep != plain and deep > 0
    dlv3 = gflops(18, 4, 65, {"arch": "deeplabv3", "layers": 18})
    assert dlv3 != plain and dlv3 > 0


def test_resume_refuses_a_last_pth_of_another_architecture(tmp_path):
    from engine.state import RESUME_KEYS, Checkpoints
    from util.distributed import DistInfo

    cfg = cfg_with(f"output.dir={tmp_path}")
    info = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    checkpoints = Checkpoints(cfg, info, checkpoint_meta(cfg.model, cfg, "supervised"))
    other = cfg_with("model.stem=mmseg")
    state = {**checkpoint_meta(other.model, other, "supervised"), **{k: None for k in RESUME_KEYS}}
    with pytest.raises(SegKDError, match=r"is a supervised PSPNet-R18 \(mmseg stem\) with 4 classes but this run "
                                         r"trains a supervised PSPNet-R18 with 4 classes"):
        checkpoints.restore(state, "last.pth", build_pspnet(18, 4), None, None, 6)


# ---------------------------------------------------------------- the training losses follow the student
def test_sample_target_centres_without_align_corners():
    """With align_corners=False, F.interpolate puts logit i at pixel (i + 1/2) H/h - 1/2: for 65 -> 9 these."""
    from model.losses import sample_target

    target = torch.arange(65)[None, :, None].expand(1, 65, 65)  # label = row index
    rows = sample_target(target, (9, 9), align_corners=False)[0, :, 0].tolist()
    assert rows == [3, 10, 18, 25, 32, 39, 46, 54, 61]
    assert sample_target(target, (9, 9))[0, :, 0].tolist() == [8 * i for i in range(9)]  # the default, unchanged
    assert sample_target(target[:, :2], (1, 1), align_corners=False).tolist() == [[[0]]]


@pytest.mark.parametrize("align_corners", [True, False])
def test_distiller_losses_zoom_with_the_students_convention(align_corners):
    from model.losses import cross_entropy, kd_kl_loss

    torch.manual_seed(0)
    student = build_pspnet(18, 4, align_corners=align_corners)
    teacher = build_pspnet(18, 4)
    distiller = Distiller(student, teacher, full_resolution=True).eval()
    x, target = torch.randn(2, 3, 33, 33), torch.randint(0, 4, (2, 33, 33))
    with torch.no_grad():
        _, terms = distiller(x, target)
        s, t = student(x), teacher(x)
    assert distiller.align_corners is align_corners
    assert torch.equal(terms["ce"], cross_entropy(s["out"], target, 255, align_corners))
    assert not torch.equal(terms["ce"], cross_entropy(s["out"], target, 255, not align_corners))
    assert torch.equal(terms["kd"], kd_kl_loss(s["out"], t["out"], target, full_resolution=True,
                                               align_corners=align_corners))


def test_label_using_methods_follow_the_students_convention():
    """ifvd and dkd take the labels at the student's positions: a student with align_corners false samples
    them where F.interpolate(align_corners=False) puts its maps."""
    from model.distiller import build_terms
    from model.methods.dkd import dkd_loss
    from model.methods.ifvd import ifvd_loss

    cfg = cfg_with("distill.terms=[ifvd, dkd]")
    student, teacher = build_pspnet(18, 4, align_corners=False), build_pspnet(18, 4)
    ifvd, dkd = (t.method for t in build_terms(cfg, student, teacher))
    assert ifvd.align_corners is False and dkd.align_corners is False
    torch.manual_seed(0)
    fs, ft = torch.randn(2, 8, 5, 5), torch.randn(2, 8, 5, 5)
    ls, lt = torch.randn(2, 4, 5, 5), torch.randn(2, 4, 5, 5)
    target = torch.randint(0, 4, (2, 33, 33))
    assert torch.equal(ifvd(fs, ft, target), ifvd_loss(fs, ft, target, 4, 255, align_corners=False))
    assert not torch.equal(ifvd(fs, ft, target), ifvd_loss(fs, ft, target, 4, 255))
    assert torch.equal(dkd(ls, lt, target), dkd_loss(ls, lt, target, 1.0, 8.0, 1.0, 255, align_corners=False))
    assert all(t.method.align_corners for t in build_terms(cfg, build_pspnet(18, 4), teacher))


def test_benchmark_evaluates_the_configured_architecture():
    from tools.benchmark import build_networks

    _, network, teacher = build_networks("eval", cfg_with("model.arch=deeplabv3", "model.stem=mmseg"))
    assert type(network) is DeepLabV3 and network.backbone.stem == "mmseg" and teacher is None


def test_test_py_evaluates_a_deeplabv3_checkpoint(tiny_data, tmp_path):
    """test.py's run() in-process on one image: the network and its FLOPs come from the checkpoint's keys."""
    from engine.flops import gflops
    from tests.test_eval_outputs import evaluate

    cfg = cfg_with("model.arch=deeplabv3", "model.align_corners=false")
    torch.manual_seed(0)
    run_dir = tmp_path / "run"
    (run_dir / "model").mkdir(parents=True)
    save_checkpoint({**checkpoint_meta(cfg.model, cfg, "supervised"), "model": build_model(cfg).state_dict(),
                     "iteration": 7, "config": cfg.to_dict()}, str(run_dir / "model" / "final.pth"))
    metrics = evaluate(tiny_data, run_dir)
    assert metrics["gflops"] == pytest.approx(gflops(18, 4, 65, {"arch": "deeplabv3"}))
    assert metrics["gflops"] != pytest.approx(gflops(18, 4, 65))
    assert 0.0 <= metrics["mIoU"] <= 1.0


def _torchvision_to_ours(key: str) -> str:
    """The key map model/deeplabv3.py's docstring states for torchvision's deeplabv3_resnet50/101."""
    for theirs, ours in (("classifier.0.convs.", "aspp.branches."), ("classifier.0.project.", "aspp.project."),
                         ("classifier.1.", "head.0."), ("classifier.2.", "head.1."), ("classifier.4.", "head.4."),
                         ("aux_classifier.", "aux_head.")):
        if key.startswith(theirs):
            return ours + key[len(theirs):]
    return key


def _torchvision_deeplabv3():
    from torchvision.models.segmentation import deeplabv3_resnet50

    return deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=4, aux_loss=True)


def test_deeplabv3_keys_map_onto_torchvisions():
    """torchvision's DeepLabV3-R50 (contract dilation) and ours: the same keys under the map, the same shapes
    and the same conv geometry in the backbone (on the meta device: no weights)."""
    with torch.device("meta"):
        theirs, ours = _torchvision_deeplabv3(), build_deeplabv3(50, 4, dilation="contract")
    mapped = {_torchvision_to_ours(k): tuple(v.shape) for k, v in theirs.state_dict().items()}
    assert mapped == {k: tuple(v.shape) for k, v in ours.state_dict().items()}

    def geometry(net):
        return [(m.stride, m.dilation, m.padding) for m in net.modules() if isinstance(m, nn.Conv2d)]

    assert geometry(theirs.backbone) == geometry(ours.backbone)


def test_deeplabv3_computes_what_torchvisions_computes():
    """torchvision's random DeepLabV3-R50 loaded into ours through the map: the same logits in eval mode
    (torchvision upsamples them to the input with align_corners=False; ours are zoomed the same way here)."""
    torch.manual_seed(0)
    theirs = _torchvision_deeplabv3().eval()
    for m in theirs.modules():  # non-trivial BN statistics, so a wrong pairing of BNs shows
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    ours = build_deeplabv3(50, 4, dilation="contract", align_corners=False).eval()
    ours.load_state_dict({_torchvision_to_ours(k): v for k, v in theirs.state_dict().items()}, strict=True)
    x = torch.randn(2, 3, 33, 33)
    with torch.no_grad():
        expected, got = theirs(x), ours(x)
    for name in ("out", "aux"):
        zoomed = F.interpolate(got[name], size=(33, 33), mode="bilinear", align_corners=False)
        assert torch.allclose(zoomed, expected[name], atol=1e-5, rtol=1e-4), name
