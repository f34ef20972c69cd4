"""MobileNetV3 students (model/mobilenetv3.py, ``model.backbone``): the backbone is torchvision's ``features`` key for
key and parameter for parameter; its named tensors are the documented stages, at output stride 8 and at a dilated
ResNet's sizes; the dilation is CIRKD's at 8 and torchvision's ``dilated=True`` at 16 (same logits); the heads have
CIRKD's 128 channels; ImageNet files load strictly from the hub cache or a path and a file of another architecture
is one line; the key is checked, recorded in checkpoints and rebuilt from them (absent: resnet); every method of
distill.terms, logit KD and CWD run from a ResNet-50 teacher; the deployed network exports."""

import os

import pytest
import torch
import torchvision
from torch import nn

from engine.flops import count_params, gflops
from model.build import build_model, checkpoint_meta, describe_checkpoint, load_teacher, model_from_checkpoint
from model.deeplabv3 import DeepLabV3
from model.distiller import Distiller
from model.methods import METHODS
from model.mobilenetv3 import MobileNetV3Backbone
from model.pspnet import PSPNet, build_pspnet
from tools import export as export_cli
from util.checkpoint import save_checkpoint
from util.config import check_training, load_config
from util.errors import SegKDError

VARIANTS = {"mobilenetv3_small": torchvision.models.mobilenet_v3_small,
            "mobilenetv3_large": torchvision.models.mobilenet_v3_large}
# the module docstring's table: name -> (features index, channels) per variant
TABLE = {"mobilenetv3_small": {"layer1": (1, 16), "layer2": (3, 24), "layer3": (8, 48), "layer4": (12, 576)},
         "mobilenetv3_large": {"layer1": (3, 24), "layer2": (6, 40), "layer3": (12, 112), "layer4": (16, 960)}}
# CIRKD's models/base_models/mobilenetv3.py at outstride 8: (first dilated block, first block of the 1/32 stage)
CIRKD_DILATED = {"mobilenetv3_small": (4, 9), "mobilenetv3_large": (7, 13)}


def cfg_with(*overrides):
    return load_config(None, ["data.classes=4", *overrides])


def spatial_convs(module: nn.Module) -> list[nn.Conv2d]:
    return [m for m in module.modules() if isinstance(m, nn.Conv2d) and m.kernel_size[0] > 1]


# ---------------------------------------------------------------- the backbone is torchvision's
@pytest.mark.parametrize("variant", VARIANTS)
def test_backbone_is_torchvisions_features_key_for_key(variant):
    tv = VARIANTS[variant]().features
    ours = MobileNetV3Backbone(variant)
    want = [(f"features.{k}", tuple(v.shape)) for k, v in tv.state_dict().items()]
    assert [(k, tuple(v.shape)) for k, v in ours.state_dict().items()] == want
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in tv.parameters())
    assert sum(p.numel() for p in ours.parameters()) == {"mobilenetv3_small": 927008,
                                                         "mobilenetv3_large": 2971952}[variant]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("size, small, big", [(65, 17, 9), (64, 16, 8), (33, 9, 5)])
def test_named_tensors_are_the_table_at_output_stride_8_and_a_resnets_sizes(variant, size, small, big):
    ours = MobileNetV3Backbone(variant).eval()
    assert {k: (ours.taps[k], ours.channels[k]) for k in ours.taps} == TABLE[variant]
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        got = ours(x, keep=("layer1", "layer2"))
        resnet = build_pspnet(18, 2).backbone.eval()(x, keep=("layer1", "layer2"))
        # each name is the output of its features index
        y, outs = x, []
        for block in ours.features:
            y = block(y)
            outs.append(y)
    for name, (index, channels) in TABLE[variant].items():
        side = small if name == "layer1" else big
        assert tuple(got[name].shape) == (1, channels, side, side)
        assert got[name].shape[-2:] == resnet[name].shape[-2:]
        assert torch.equal(got[name], outs[index])
    assert sorted(ours(x)) == ["layer3", "layer4"]  # layer1/2 only when asked


@pytest.mark.parametrize("variant", VARIANTS)
def test_dilation_is_cirkds_at_8(variant):
    first, last_stage = CIRKD_DILATED[variant]
    ours = MobileNetV3Backbone(variant)
    for i, block in enumerate(ours.features):
        want = 1 if i < first else 2 if i < last_stage else 4
        for conv in spatial_convs(block):
            assert conv.dilation == (want, want), (i, conv)
            assert conv.padding == ((conv.kernel_size[0] - 1) // 2 * want,) * 2
            downsamples = i == 0 or getattr(block, "_is_cn", False) and i < first  # the stem, 1/4 and 1/8
            assert conv.stride == ((2, 2) if downsamples else (1, 1))


@pytest.mark.parametrize("variant", VARIANTS)
def test_output_stride_16_is_torchvisions_dilated_true(variant):
    tv = VARIANTS[variant](dilated=True).features.eval()
    ours = MobileNetV3Backbone(variant, output_stride=16).eval()
    assert [(c.stride, c.dilation, c.padding) for c in spatial_convs(ours)] == [
        (c.stride, c.dilation, c.padding) for c in spatial_convs(tv)]
    ours.features.load_state_dict(tv.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(ours(x)["layer4"], tv(x), atol=1e-5)
        assert ours(x)["layer4"].shape[-1] == 4


# ---------------------------------------------------------------- the heads are CIRKD's
@pytest.mark.parametrize("variant", VARIANTS)
def test_heads_are_cirkds_128_channels(variant):
    c4 = TABLE[variant]["layer4"][1]
    psp = build_network_for("pspnet", variant)
    assert isinstance(psp, PSPNet)
    assert [b[1].weight.shape for b in psp.ppm.branches] == [(c4 // 4, c4, 1, 1)] * 4
    assert psp.head[0].weight.shape == (128, 2 * c4, 3, 3) and psp.head[4].weight.shape == (5, 128, 1, 1)
    assert psp.aux_head[0].weight.shape == (128, TABLE[variant]["layer3"][1], 3, 3)
    dl = build_network_for("deeplabv3", variant)
    assert isinstance(dl, DeepLabV3)
    assert [b[0].weight.shape[:2] for b in dl.aspp.branches[:4]] == [(128, c4)] * 4
    assert dl.aspp.branches[4][1].weight.shape[:2] == (128, c4)
    assert dl.aspp.project[0].weight.shape[:2] == (128, 5 * 128) and dl.head[0].weight.shape == (128, 128, 3, 3)
    for net in (psp, dl):
        heads = sum(p.numel() for p in net.parameters()) - sum(p.numel() for p in net.backbone.parameters())
        assert heads > 0 and count_params(net) == sum(p.numel() for p in net.parameters()) - sum(
            p.numel() for p in net.aux_head.parameters())
        assert net.feature_channels == {**{k: c for k, (_, c) in TABLE[variant].items()},
                                        "out_feat": 128, "aux_feat": 128}


def build_network_for(arch, variant, classes=5):
    return build_model(cfg_with(f"model.arch={arch}", f"model.backbone={variant}", f"data.classes={classes}"))


def test_gflops_count_the_mobilenet_network():
    small = gflops(18, 8, 65, {"backbone": "mobilenetv3_small"})
    r18 = gflops(18, 8, 65, {})
    assert 0 < small < r18 / 4


# ---------------------------------------------------------------- ImageNet weights
@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def no_network(url, *args, **kwargs):
        raise OSError(f"network disabled in tests: {url}")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    return tmp_path / "torch_home"


def fabricated(variant: str) -> dict[str, torch.Tensor]:
    """A torchvision-layout ImageNet state dict (classifier included) whose values are not the default init."""
    torch.manual_seed(7)
    sd = VARIANTS[variant]().state_dict()
    return {k: v + torch.rand_like(v) if v.is_floating_point() else v for k, v in sd.items()}


@pytest.mark.parametrize("variant, enum", [("mobilenetv3_small", torchvision.models.MobileNet_V3_Small_Weights),
                                           ("mobilenetv3_large", torchvision.models.MobileNet_V3_Large_Weights)])
def test_pretrained_true_reads_the_hub_cache_and_a_path_strictly(variant, enum, torch_home, tmp_path):
    folder = torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    saved = fabricated(variant)
    torch.save(saved, folder / os.path.basename(enum.IMAGENET1K_V1.url))
    for pretrained in (True, str(folder / os.path.basename(enum.IMAGENET1K_V1.url))):
        model = build_model(cfg_with(f"model.backbone={variant}", f"model.pretrained={pretrained}"))
        own = model.backbone.state_dict()
        assert sorted(own) == sorted(k for k in saved if not k.startswith("classifier."))
        assert all(torch.equal(own[k], saved[k]) for k in own)
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in saved.items()}}, wrapped)
    net = MobileNetV3Backbone(variant, pretrained=str(wrapped))
    assert torch.equal(net.features[1].block[0][0].weight, saved["features.1.block.0.0.weight"])


def test_offline_without_cache_names_file_url_and_folder(torch_home):
    url = torchvision.models.MobileNet_V3_Large_Weights.IMAGENET1K_V2.url
    with pytest.raises(SegKDError) as err:
        MobileNetV3Backbone("mobilenetv3_large", pretrained=True, weights="IMAGENET1K_V2")
    msg = str(err.value)
    assert "\n" not in msg and url in msg and os.path.join(str(torch_home), "hub", "checkpoints") in msg


def test_unknown_weights_name_lists_the_variants_sets(torch_home):
    with pytest.raises(SegKDError, match=r"model\.weights: 'IMAGENET1K_V2' is not a MobileNetV3-Small weight set; "
                                         r"valid: IMAGENET1K_V1, DEFAULT$"):
        MobileNetV3Backbone("mobilenetv3_small", pretrained=True, weights="IMAGENET1K_V2")


@pytest.mark.parametrize("source, words", [
    ("resnet18", ["missing keys: features.0.0.weight", "unexpected keys: conv1.weight"]),
    ("mobilenetv3_large", ["missing keys: features.1.block.1.fc1", "unexpected keys: features.1.block.1.0",
                           "shape mismatch"]),  # Large's block 1 has no SE, Small's has
])
def test_a_file_of_another_architecture_is_one_line(source, words, tmp_path):
    sd = torchvision.models.resnet18().state_dict() if source == "resnet18" else VARIANTS[source]().state_dict()
    path = str(tmp_path / f"{source}.pth")
    torch.save(sd, path)
    net = MobileNetV3Backbone("mobilenetv3_small")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(SegKDError) as err:
        from model.mobilenetv3 import load_mobilenet_weights
        load_mobilenet_weights(net, path)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(path) and "MobileNetV3-Small" in msg
    assert all(w in msg for w in words), msg
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())  # untouched


def test_a_mobilenet_file_for_a_resnet_is_one_line(tmp_path):
    path = str(tmp_path / "mnv3.pth")
    torch.save(VARIANTS["mobilenetv3_small"]().state_dict(), path)
    with pytest.raises(SegKDError, match=r"missing keys: conv1\.weight.*unexpected keys: features") as err:
        build_model(cfg_with(f"model.pretrained={path}"))
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------- the config key and checkpoints
def test_bad_backbone_is_one_line():
    with pytest.raises(SegKDError) as err:
        cfg_with("model.backbone=mobilenetv2")
    assert str(err.value) == ("command line: model.backbone must be one of resnet, mobilenetv3_small, "
                              "mobilenetv3_large, mobilenetv3_small_cirkd, mobilenetv3_large_cirkd, got 'mobilenetv2'")


@pytest.mark.parametrize("override", ["model.stem=semseg", "model.dilation=contract"])
def test_resnet_options_on_a_mobilenet_are_one_line(override):
    with pytest.raises(SegKDError, match=r"ResNet options; model\.backbone=mobilenetv3_large has torchvision's stem"):
        build_model(cfg_with("model.backbone=mobilenetv3_large", override))


def test_mutual_peers_need_a_resnet():
    cfg = cfg_with("model.backbone=mobilenetv3_small", "mutual.peers=[18]", "data.root=x", "output.dir=y")
    with pytest.raises(SegKDError, match=r"mutual\.peers=\[18\] are ResNet depths: model\.backbone=mobilenetv3_small"):
        check_training(cfg, 1, False, "cpu")


@pytest.mark.parametrize("arch", ["pspnet", "deeplabv3"])
def test_checkpoint_records_the_backbone_and_rebuilds(arch, tmp_path):
    cfg = cfg_with(f"model.arch={arch}", "model.backbone=mobilenetv3_small")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    meta = checkpoint_meta(cfg.model, cfg, "supervised")
    assert meta["backbone"] == "mobilenetv3_small"
    path = str(tmp_path / "final.pth")
    save_checkpoint({**meta, "model": model.state_dict()}, path)
    rebuilt, _ = model_from_checkpoint(path, 4)
    x = torch.randn(1, 3, 33, 33)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x)["out"], model(x)["out"])
    name = {"pspnet": "PSPNet", "deeplabv3": "DeepLabV3"}[arch]
    assert describe_checkpoint(meta) == f"a supervised {name}-MobileNetV3-Small with 4 classes"
    # a MobileNetV3 teacher (an assistant or a supervised run) has no depth to compare with teacher.layers
    teacher = load_teacher(cfg_with(f"teacher.checkpoint={path}", "teacher.layers=101"))
    assert isinstance(teacher.backbone, MobileNetV3Backbone)


def test_a_checkpoint_without_the_key_is_a_resnet_and_a_bad_value_is_one_line(tmp_path):
    cfg = cfg_with()
    meta = {k: v for k, v in checkpoint_meta(cfg.model, cfg, "supervised").items() if k != "backbone"}
    path = str(tmp_path / "old.pth")
    save_checkpoint({**meta, "model": build_pspnet(18, 4).state_dict()}, path)
    model, _ = model_from_checkpoint(path, 4)
    assert not isinstance(model.backbone, MobileNetV3Backbone) and model.backbone.channels["layer4"] == 512
    save_checkpoint({**meta, "backbone": "mobilenetv4", "model": {}}, path)
    with pytest.raises(SegKDError, match=r"has unknown architecture keys backbone='mobilenetv4'$"):
        model_from_checkpoint(path, 4)


# ---------------------------------------------------------------- distillation from a ResNet-50 teacher
@pytest.fixture(scope="module")
def r50_teacher():
    torch.manual_seed(1)
    return build_pspnet(50, 4).eval()


def distiller_for(variant, teacher, *overrides, arch="pspnet"):
    cfg = cfg_with(f"model.arch={arch}", f"model.backbone={variant}", *overrides)
    torch.manual_seed(0)
    student = build_model(cfg)
    return Distiller.from_config(student, teacher, cfg), cfg


def batch(size=33, n=2):
    g = torch.Generator().manual_seed(3)
    return torch.randn(n, 3, size, size, generator=g), torch.randint(0, 4, (n, size, size), generator=g)


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_method_of_distill_terms_runs_from_a_resnet50_teacher(variant, r50_teacher):
    """All methods at once (their default tensors: out_feat 128 vs 512 channels, the logits, AFD's four stages), with
    CWD on the aux logits: one forward and backward, every term finite, every student parameter and connector
    reached."""
    names = sorted(METHODS)
    dist, cfg = distiller_for(variant, r50_teacher, f"distill.terms=[{','.join(names)}]", "distill.feat_loss=cwd")
    assert dist.methods["fitnet"].connector[0].weight.shape == (512, 128, 1, 1)  # out_feat: 128 -> R50 PSPNet's 512
    images, target = batch()
    total, terms = dist(images, target)
    assert set(terms) == {"ce", "aux", "kd", "feat", *names}
    assert all(torch.isfinite(v) for v in terms.values()), terms
    total.backward()
    assert dist.student.backbone.features[0][0].weight.grad.abs().sum() > 0
    assert dist.methods["fitnet"].connector[0].weight.grad.abs().sum() > 0
    assert dist.methods["afd"].attention.p_s.grad is not None


@pytest.mark.parametrize("tensor, channels", [("layer1", (24, 256)), ("layer2", (40, 512)), ("layer3", (112, 1024)),
                                              ("layer4", (960, 2048)), ("aux_feat", (128, 256))])
def test_fitnet_connectors_bridge_each_stage_to_the_teachers(tensor, channels, r50_teacher):
    dist, _ = distiller_for("mobilenetv3_large", r50_teacher, "distill.terms=[fitnet]",
                            f"distill.fitnet.tensor={tensor}")
    assert dist.methods["fitnet"].connector[0].weight.shape == (channels[1], channels[0], 1, 1)
    images, target = batch()
    s = dist.student(images, features=(tensor,))[tensor]
    with torch.no_grad():
        t = r50_teacher(images, features=(tensor,))[tensor]
    assert s.shape[0] == t.shape[0] and s.shape[2:] == t.shape[2:] and s.shape[1] == channels[0]
    assert dist.methods["fitnet"].connector(s).shape == t.shape


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["pspnet", "deeplabv3"])
@pytest.mark.parametrize("overrides, term", [
    ([], "kd"),
    (["distill.feat_loss=cwd", "distill.feat_weight=1.0"], "feat"),
    (["distill.terms=[fitnet]"], "fitnet"),
])
def test_kd_cwd_and_fitnet_lower_their_loss(arch, overrides, term, r50_teacher):
    """A MobileNetV3-Small student on one fixed batch, 8 AdamW steps: the distillation term falls (the teacher is
    random: what is learned is to match it)."""
    dist, _ = distiller_for("mobilenetv3_small", r50_teacher, *overrides, arch=arch)
    opt = torch.optim.AdamW([*dist.student.parameters(), *dist.trainable_parameters()], lr=1e-3)
    images, target = batch()
    dist.train()
    values = []
    for _ in range(8):
        total, terms = dist(images, target)
        assert all(torch.isfinite(v) for v in terms.values())
        opt.zero_grad()
        total.backward()
        opt.step()
        values.append(terms[term].item())
    assert values[-1] < 0.9 * values[0], values


# ---------------------------------------------------------------- export
@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_tools_export_checks_a_mobilenet_checkpoint(fmt, tmp_path, capsys):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime", reason="onnxruntime (requirements-dev.txt) runs the ONNX file")
    cfg = cfg_with("model.arch=deeplabv3", "model.backbone=mobilenetv3_small", "data.classes=2")
    torch.manual_seed(0)
    path = str(tmp_path / "final.pth")
    save_checkpoint({**checkpoint_meta(cfg.model, cfg, "supervised"), "model": build_model(cfg).state_dict()}, path)
    out = str(tmp_path / f"mnv3.{fmt}")
    assert export_cli.main(["--checkpoint", path, "--format", fmt, out, "--size", "48", "48"]) == 0
    printed = capsys.readouterr().out
    assert "check 48x48: max abs difference" in printed and "FAILED" not in printed
    assert os.path.getsize(out) > 4 * 3_000_000  # the weights are in it: 3.3 M float32 parameters


# ---------------------------------------------------------------- the example configs end to end
@pytest.fixture(scope="module")
def r50_checkpoint(tmp_path_factory):
    """An untrained PSPNet-R50 teacher checkpoint for the tiny data's 4 classes."""
    from tests.conftest import TINY_CLASSES

    cfg = load_config("config/synthetic_cpu/pspnet50_teacher.yaml", [f"data.classes={TINY_CLASSES}"])
    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp("teacher") / "final.pth")
    save_checkpoint({**checkpoint_meta(cfg.model, cfg, "supervised"),
                     "model": build_pspnet(50, TINY_CLASSES).state_dict()}, path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("name, terms", [("pspnet_mbv3s_baseline", ()), ("pspnet_mbv3s_kd", ("kd",)),
                                         ("deeplabv3_mbv3l_kd_cwd_fitnet", ("kd", "feat", "fitnet"))])
def test_example_config_trains_two_iterations_and_evaluates(name, terms, tiny_data, r50_checkpoint, tmp_path):
    """train.py in-process for 2 iterations (distilled from the R50 teacher), then the evaluation test.py runs
    (test.after_training): the terms are logged and finite, final.pth records the backbone, metrics.json names it."""
    import json

    from tests.conftest import tiny_overrides
    from tests.test_bad_inputs import run_in_process

    run_dir = tmp_path / "run"
    r = run_in_process(["--config", f"config/synthetic_cpu/{name}.yaml", *tiny_overrides(tiny_data, str(run_dir)),
                        "data.names=null", "train.crop_size=33", "train.iters=2", "train.warmup_iters=1",
                        f"teacher.checkpoint={r50_checkpoint}", "test.after_training=true"])
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    assert all(t in rows[-1] and 0 <= rows[-1][t] < float("inf") for t in ("ce", "aux", *terms)), rows[-1]
    final = torch.load(run_dir / "model" / "final.pth", weights_only=True)
    variant = "mobilenetv3_small" if "mbv3s" in name else "mobilenetv3_large"
    assert final["backbone"] == variant and "distill_modules" not in final
    assert any(k.startswith("backbone.features.16.") for k in final["model"]) == (variant == "mobilenetv3_large")
    metrics = json.load(open(run_dir / "eval" / "ss" / "metrics.json"))
    assert metrics["backbone"] == variant and 0 <= metrics["mIoU"] <= 1
