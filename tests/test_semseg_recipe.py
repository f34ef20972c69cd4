"""What docs/VOC.md says matches hszhao/semseg (its model/pspnet.py and config/voc2012/voc2012_pspnet50.yaml), pinned:
PPM bins 1-2-3-6 with branches of C/4 channels and align_corners upsampling, heads of 512 and 256 channels with
Dropout2d 0.1, aux weight 0.4, 10x lr for PPM and heads, and the rest of the recipe in config/defaults.yaml and
every config/voc2012/*.yaml; plus the distillation weights each VOC config cites, the chain's teachers and the
mutual-learning configs' peers."""

import glob
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from engine.setup import build_optimizer
from model.methods import METHODS
from model.pspnet import PPM, build_pspnet
from tests.conftest import REPO
from util.config import load_config

# The VOC configs on semseg's recipe; CIRKD's MobileNetV3 rows (deeplabv3_mbv3l_*) keep CIRKD's, which
# tests/test_mobilenet_configs.py checks.
VOC = sorted(p for p in glob.glob(os.path.join(REPO, "config", "voc2012", "*.yaml")) if "_mbv3" not in p)
SEMSEG = {  # voc2012_pspnet50.yaml (TRAIN and TEST sections); model.dropout is PSPNet's default there
    "data.classes": 21, "data.ignore_label": 255, "data.scale_min": 0.5, "data.scale_max": 2.0,
    "data.rotate_min": -10.0, "data.rotate_max": 10.0, "data.train_list": "list/train_aug.txt",
    "data.val_list": "list/val.txt", "model.dropout": 0.1, "train.crop_size": 473, "train.epochs": 50,
    "train.iters": None, "train.batch_size": 16, "train.optimizer": "sgd", "train.base_lr": 0.01,
    "train.head_lr_mult": 10.0, "train.momentum": 0.9, "train.weight_decay": 0.0001, "train.power": 0.9,
    "train.warmup_iters": 0, "train.ce_weight": 1.0, "train.aux_weight": 0.4, "train.sync_bn": True,
    "test.base_size": 512, "test.crop_size": 473, "test.stride_rate": 2 / 3, "test.scales": [1.0],
    "train.uint8_batches": True,  # segkd's one departure: uint8 augmentation, within 1.5 grey levels (docs/VOC.md)
}
DISTILL = {  # the values each config's comment cites (docs/VOC.md for the first three)
    "pspnet18_kd": {"kd_loss": "kl", "kd_weight": 1.0, "temperature": 1.0, "feat_loss": "none"},
    "pspnet18_kd_aux_kl": {"kd_loss": "kl", "kd_weight": 1.0, "temperature": 1.0, "feat_loss": "kl",
                           "feat_weight": 0.4},
    "pspnet18_kd_aux_smoothl1": {"kd_loss": "kl", "kd_weight": 1.0, "temperature": 1.0, "feat_loss": "smoothl1",
                                 "feat_weight": 0.4, "smoothl1_beta": 1.0},
    "pspnet18_kd_aux_cwd": {"kd_loss": "kl", "kd_weight": 1.0, "temperature": 1.0, "feat_loss": "cwd",
                            "feat_weight": 5.0, "cwd_tau": 1.0},
    "pspnet18_kd_aux_dist": {"kd_loss": "dist", "kd_weight": 1.0, "feat_loss": "dist", "feat_weight": 0.4,
                             "dist_beta": 1.0, "dist_gamma": 1.0},
    "pspnet18_kd_aux_kl_std": {"kd_loss": "kl_std", "kd_weight": 1.0, "temperature": 2.0, "feat_loss": "kl_std",
                               "feat_weight": 0.4},
    **{f"pspnet18_kd_from_{t}": {"kd_loss": "kl", "kd_weight": 1.0, "temperature": 1.0, "feat_loss": "none"}
       for t in ("semseg", "mmseg", "deeplabv3_r101")},
    **{name: {"kd_loss": "kl", "kd_weight": 1.0, "temperature": 1.0, "feat_loss": "none"}
       for name in ("pspnet34_kd", "pspnet18_kd_ta")},
    # SSLD: PaddleClas's symmetric KL without a temperature, on labelled and unlabelled images
    "pspnet18_kd_ssld": {"kd_loss": "sym_kl", "kd_weight": 1.0, "temperature": 1.0, "feat_loss": "none"},
}
# the teachers of the kd configs: (depth, checkpoint); published ones imported by tools.import_weights (docs/VOC.md);
# the chain R50 -> R34 -> R18: the assistant pspnet34_kd (distilled as pspnet18_kd is) teaches pspnet18_kd_ta
TEACHERS = {"pspnet18_kd_from_semseg": (50, "teachers/semseg_pspnet50_voc2012.pth"),
            "pspnet18_kd_from_mmseg": (50, "teachers/mmseg_pspnet50_voc2012.pth"),
            "pspnet18_kd_from_deeplabv3_r101": (101, "runs/voc2012/deeplabv3_r101_teacher/model/final.pth"),
            "pspnet18_kd_ta": (34, "runs/voc2012/pspnet34_kd/model/final.pth")}
TEACHER_CONFIGS = {"pspnet50_teacher": ("pspnet", 50), "deeplabv3_r101_teacher": ("deeplabv3", 101),
                   "pspnet34_kd": ("pspnet", 34)}
ASSISTANT_STUDENTS = {"pspnet18_kd_ta"}  # teacher.assistant: true (a distilled teacher)
# deep mutual learning: peer 0 the R18 of model.*, the peers' depths, the paper's KL (T 1, weight 1)
MUTUAL = {f"dml_pspnet{d}_pspnet18": {"peers": [d], "weight": 1.0, "temperature": 1.0, "feat_loss": "none"}
          for d in (18, 50)}
for _name, _cls in METHODS.items():  # logit KD plus one method at the weight its paper's code publishes
    DISTILL[f"pspnet18_kd_{_name}"] = {
        "kd_loss": "kl", "kd_weight": 1.0, "temperature": 1.0, "feat_loss": "none", "terms": [_name],
        _name: {"weight": _cls.default_weight, "tensor": _cls.default_tensor,
                **{k: p.default for k, p in _cls.params.items()}}}


def get(cfg, key):
    section, name = key.split(".")
    return cfg[section][name]


def layout(seq):
    """A head or PPM branch as (layer, its defining numbers)."""
    out = []
    for m in seq:
        if isinstance(m, nn.Conv2d):
            out.append(("conv", m.in_channels, m.out_channels, m.kernel_size, m.padding, m.bias is not None))
        elif isinstance(m, nn.BatchNorm2d):
            out.append(("bn", m.num_features))
        elif isinstance(m, nn.Dropout2d):
            out.append(("dropout2d", m.p))
        elif isinstance(m, nn.AdaptiveAvgPool2d):
            out.append(("pool", m.output_size))
        else:
            out.append((type(m).__name__,))
    return out


@pytest.mark.parametrize("layers, c3, c4", [(18, 256, 512), (50, 1024, 2048)])
def test_pspnet_is_semsegs(layers, c3, c4):
    with torch.device("meta"):  # structure only: no weights allocated
        net = build_pspnet(layers, 21)
    assert [layout(b) for b in net.ppm.branches] == [
        [("pool", b), ("conv", c4, c4 // 4, (1, 1), (0, 0), False), ("bn", c4 // 4), ("ReLU",)] for b in (1, 2, 3, 6)]
    assert layout(net.head) == [("conv", 2 * c4, 512, (3, 3), (1, 1), False), ("bn", 512), ("ReLU",),
                                ("dropout2d", 0.1), ("conv", 512, 21, (1, 1), (0, 0), True)]
    assert layout(net.aux_head) == [("conv", c3, 256, (3, 3), (1, 1), False), ("bn", 256), ("ReLU",),
                                    ("dropout2d", 0.1), ("conv", 256, 21, (1, 1), (0, 0), True)]


def test_ppm_upsamples_with_align_corners():
    torch.manual_seed(0)
    ppm = PPM(8).eval()
    x = torch.randn(1, 8, 7, 7)
    with torch.no_grad():
        want = torch.cat([x, *(F.interpolate(b(x), size=(7, 7), mode="bilinear", align_corners=True)
                               for b in ppm.branches)], dim=1)
        assert torch.equal(ppm(x), want)
        shifted = F.interpolate(ppm.branches[1](x), size=(7, 7), mode="bilinear", align_corners=False)
        assert not torch.allclose(ppm(x)[:, 10:12], shifted)  # the two conventions differ here


@pytest.mark.parametrize("path", [None, *VOC], ids=lambda p: "defaults" if p is None else os.path.basename(p))
def test_defaults_and_voc_configs_keep_semsegs_recipe(path):
    cfg = load_config(path)
    wrong = {k: get(cfg, k) for k, v in SEMSEG.items() if get(cfg, k) != pytest.approx(v)}
    assert wrong == {}
    if path is None:
        return
    name = os.path.splitext(os.path.basename(path))[0]
    assert (cfg.model.arch, cfg.model.layers) == TEACHER_CONFIGS.get(name, ("pspnet", 18))
    assert cfg.model.pretrained is True and cfg.model.weights == "IMAGENET1K_V1"
    assert cfg.output.dir == f"runs/voc2012/{name}"
    assert cfg.teacher.assistant is (name in ASSISTANT_STUDENTS)
    assert {k: cfg.mutual[k] for k in MUTUAL.get(name, {})} == MUTUAL.get(name, {})
    assert bool(cfg.mutual.peers) is (name in MUTUAL)
    if name in DISTILL:
        layers, checkpoint = TEACHERS.get(name, (50, "runs/voc2012/pspnet50_teacher/model/final.pth"))
        assert cfg.teacher.layers == layers and cfg.teacher.checkpoint == checkpoint
        got = {k: cfg.distill[k] for k in DISTILL[name]}
        assert {k: v.to_dict() if hasattr(v, "to_dict") else v for k, v in got.items()} == DISTILL[name]
        assert cfg.distill.full_resolution is False
    else:
        assert cfg.teacher.checkpoint is None and not name.startswith("pspnet18_kd")


def test_ppm_and_heads_get_ten_times_the_lr():
    cfg = load_config(os.path.join(REPO, "config", "voc2012", "pspnet18_baseline.yaml"))
    with torch.device("meta"):
        net = build_pspnet(18, 21)
    backbone, heads = build_optimizer(net, cfg).param_groups
    assert (backbone["lr"], heads["lr"], backbone["momentum"], backbone["weight_decay"]) == (0.01, 0.1, 0.9, 0.0001)
    new_layers = [*net.ppm.parameters(), *net.head.parameters(), *net.aux_head.parameters()]
    assert {id(p) for p in heads["params"]} == {id(p) for p in new_layers}
    assert {id(p) for p in backbone["params"]} == {id(p) for p in net.backbone.parameters()}
