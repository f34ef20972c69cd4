"""Check tools.import_weights against each project's own model code: build the upstream network with random
weights (and random BN statistics), save it the way that project saves checkpoints, import it, and compare the
logits of both in eval mode (max abs difference; the check passes under 1e-4 times max(1, the largest |logit|):
random weights through a hundred layers can give logits in the thousands).

    python scripts/check_import_upstream.py --semseg /path/to/hszhao/semseg      # a clone of hszhao/semseg
    python scripts/check_import_upstream.py --mmseg                              # mmsegmentation importable
    python scripts/check_import_upstream.py --torchvision                        # the installed torchvision
    python scripts/check_import_upstream.py --cirkd /path/to/winycg/CIRKD        # a clone of winycg/CIRKD

None of the upstream code is part of segkd: --semseg and --cirkd put the given clone on sys.path for this process
only, --mmseg needs mmsegmentation, mmengine and mmcv (or mmcv-lite) installed beside segkd. docs/VOC.md records
what this printed here, docs/USAGE.md ("Import a published teacher") the --cirkd lines. Exit status 1 if any check
fails.

--cirkd checks CIRKD's ResNet DeepLabV3 files and its MobileNetV3 students (DeepLabV3 and PSPNet, Small and Large;
its SyncBatchNorms are made plain BatchNorms with the same state, for one CPU process). It feeds both networks the
same image, each as its own loader prepares it (segkd: RGB, ImageNet mean/std;
CIRKD: BGR minus the Caffe mean, its dataset/*.py), and its networks' BN statistics are those of that input (one
pass in train mode), so their logits are of order 1 and its tolerance is absolute: 1e-4.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import types

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from model.build import model_from_checkpoint  # noqa: E402
from tools.import_weights import import_weights  # noqa: E402

TOLERANCE = 1e-4


def randomise(net: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and BN statistics, so that a wrongly paired tensor changes the logits. The last BN of
    each residual block gets a small weight, so that the logits of a 101-layer network stay of order 10."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
        for name, block in net.named_modules():
            if re.search(r"(^|\.)layer[1-4]\.\d+$", name):
                last = [m for n, m in block.named_children() if isinstance(m, nn.BatchNorm2d)][-1]
                last.weight.uniform_(0.05, 0.2)
    return net.eval()


def ours(path: str, classes: int, x: torch.Tensor) -> torch.Tensor:
    model, _ = model_from_checkpoint(path, classes)
    with torch.no_grad():
        out = model.eval()(x, aux=False)["out"]
    return F.interpolate(out, x.shape[2:], mode="bilinear", align_corners=model.align_corners)


def compare(name: str, fmt: str, net_state: dict, expected: torch.Tensor, x: torch.Tensor, classes: int,
            folder: str) -> bool:
    src, dst = os.path.join(folder, f"{name}.src.pth"), os.path.join(folder, f"{name}.segkd.pth")
    torch.save(net_state, src)
    import_weights(src, dst, fmt, classes)
    got = ours(dst, classes, x)
    diff = (got - expected).abs().max().item() if got.shape == expected.shape else float("inf")
    # random weights through 100 layers can give logits in the thousands: the tolerance is relative to their scale
    largest = expected.abs().max().item()
    ok = diff < TOLERANCE * max(1.0, largest)
    print(f"{name}: {fmt} import, logits {tuple(expected.shape)} (max |logit| {largest:.3g}), max abs difference "
          f"{diff:.2e} ({'ok' if ok else 'FAILED'}, tolerance {TOLERANCE:g} x max(1, max |logit|))", flush=True)
    return ok


def check_semseg(repo: str, folder: str, classes: int = 21) -> bool:
    # semseg's model/ has no __init__.py (a namespace package, which segkd's regular `model` package would win
    # over): make `model` its folder for this import, as its own `import model.resnet` expects
    package = types.ModuleType("model")
    package.__path__ = [os.path.join(os.path.abspath(repo), "model")]
    sys.modules["model"] = package
    from model.pspnet import PSPNet as SemsegPSPNet  # hszhao/semseg's

    results = []
    x = torch.randn(2, 3, 97, 129)  # semseg asserts (H - 1) % 8 == 0
    for layers in (50, 101):
        net = randomise(SemsegPSPNet(layers=layers, classes=classes, zoom_factor=8, pretrained=False))
        with torch.no_grad():
            expected = net(x)
        state = {"epoch": 50, "state_dict": {f"module.{k}": v for k, v in net.state_dict().items()},
                 "optimizer": {"state": {}, "param_groups": []}}
        results.append(compare(f"semseg_pspnet{layers}", "semseg", state, expected, x, classes, folder))
    return all(results)


class _NoCompiledOps(types.ModuleType):
    """Stands in for mmcv's compiled ``mmcv._ext`` under mmcv-lite (which has none): mmseg imports every op
    when its model registry loads, PSPNet's ResNetV1c/PSPHead/FCNHead call none; a call would raise."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)

        def missing(*args, **kwargs):
            raise RuntimeError(f"mmcv._ext.{name}: a compiled mmcv op, absent under mmcv-lite")
        return missing


def check_mmseg(folder: str, classes: int = 21) -> bool:
    import importlib.util

    if importlib.util.find_spec("mmcv") is not None and importlib.util.find_spec("mmcv._ext") is None:
        sys.modules["mmcv._ext"] = _NoCompiledOps("mmcv._ext")
    from mmengine.config import Config
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    register_all_modules()
    norm = dict(type="BN", requires_grad=True)
    head = dict(norm_cfg=norm, align_corners=False, num_classes=classes, dropout_ratio=0.1,
                loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0))
    results = []
    x = torch.randn(2, 3, 96, 128)
    # pspnet_r50-d8 and r101-d8 (configs/_base_/models/pspnet_r50-d8.py); mmseg's pspnet_r18-d8 narrows the
    # heads to 128/64 channels, which segkd's PSPNet (512/256 at every depth) does not build
    for layers in (50, 101):
        c4 = 2048
        cfg = Config(dict(model=dict(
            type="EncoderDecoder",
            data_preprocessor=dict(type="SegDataPreProcessor"),
            backbone=dict(type="ResNetV1c", depth=layers, num_stages=4, out_indices=(0, 1, 2, 3),
                          dilations=(1, 1, 2, 4), strides=(1, 2, 1, 1), norm_cfg=norm, norm_eval=False,
                          style="pytorch", contract_dilation=True),
            decode_head=dict(type="PSPHead", in_channels=c4, in_index=3, channels=c4 // 4, pool_scales=(1, 2, 3, 6),
                             **head),
            auxiliary_head=dict(type="FCNHead", in_channels=c4 // 2, in_index=2, channels=256,
                                num_convs=1, concat_input=False, **{**head, "loss_decode": dict(
                                    type="CrossEntropyLoss", use_sigmoid=False, loss_weight=0.4)}),
            train_cfg=dict(), test_cfg=dict(mode="whole"))))
        net = randomise(MODELS.build(cfg.model))
        with torch.no_grad():
            expected = net.encode_decode(x, [dict(img_shape=tuple(x.shape[2:]))])
        state = {"meta": {"mmseg_version": "check"}, "state_dict": net.state_dict()}
        results.append(compare(f"mmseg_pspnet_r{layers}-d8", "mmseg", state, expected, x, classes, folder))
    return all(results)


def check_torchvision(folder: str, classes: int = 21) -> bool:
    from torchvision.models.segmentation import deeplabv3_resnet50, deeplabv3_resnet101

    results = []
    x = torch.randn(2, 3, 96, 100)
    for layers, build in ((50, deeplabv3_resnet50), (101, deeplabv3_resnet101)):
        net = randomise(build(weights=None, weights_backbone=None, num_classes=classes, aux_loss=True))
        with torch.no_grad():
            expected = net(x)["out"]
        results.append(compare(f"torchvision_deeplabv3_resnet{layers}", "torchvision", net.state_dict(), expected, x,
                               classes, folder))
    return all(results)


# CIRKD's published ResNet DeepLabV3 files (its README), as (depth, classes, file name): the DeepLabV3-R101
# teachers (Cityscapes, ADE20K, VOC, COCO-Stuff-164K) and the DeepLabV3-R18 students (Cityscapes, ADE20K, COCO-Stuff)
CIRKD_FILES = ((101, 19, "deeplabv3_resnet101_citys_best_model.pth"),
               (101, 150, "deeplabv3_resnet101_ade20k_best_model.pth"),
               (101, 21, "deeplabv3_resnet101_voc_best_model.pth"),
               (101, 182, "deeplabv3_resnet101_coco_stuff_164k_best_model.pth"),
               (18, 19, "kd_deeplabv3_resnet18_citys_best_model.pth"),
               (18, 150, "kd_deeplabv3_resnet18_ade20k_best_model.pth"),
               (18, 182, "kd_deeplabv3_resnet18_coco_stuff_164k_best_model.pth"))


def calibrate(net: nn.Module, batch: torch.Tensor, seed: int = 0) -> nn.Module:
    """Random weights (BN affine too, each residual block's last BN small as in :func:`randomise`) and the BN
    statistics of ``batch``: reset, then one pass in train mode with a cumulative average, so every BN
    normalises what it sees and the logits stay of order 1. (With full-size residual branches a random
    101-layer network amplifies a 1e-5 change of its input to 2e-3 on its logits, its own and segkd's alike.)"""
    torch.manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
        for name, block in net.named_modules():
            if re.search(r"(^|\.)layer[1-4]\.\d+$", name):
                last = [m for n, m in block.named_children() if isinstance(m, nn.BatchNorm2d)][-1]
                last.weight.uniform_(0.05, 0.2)
        net.train()(batch)
    return net.eval()


# CIRKD's published MobileNetV3 students (its README at dab64db, all CIRKDV2), as (its --model, --backbone, the
# dataset's name in the file, classes): the file is kd_<model>_<backbone>_<dataset>_best_model.pth
_DLV3, _PSP, _S, _L = "deeplabv3_mobilenet_ssseg", "psp_mobile", "mobilenetv3_small", "mobilenetv3_large"
CIRKD_MOBILE_FILES = ((_DLV3, _S, "citys", 19), (_PSP, _S, "citys", 19), (_DLV3, _L, "ade20k", 150),
                      (_PSP, _L, "ade20k", 150), (_DLV3, _S, "voc", 21), (_DLV3, _L, "voc", 21), (_PSP, _S, "voc", 21),
                      (_PSP, _L, "voc", 21), (_PSP, _S, "coco_stuff_164k", 182), (_DLV3, _S, "coco_stuff_164k", 182),
                      (_DLV3, _L, "coco_stuff_164k", 182))


def plain_batchnorm(module: nn.Module) -> nn.Module:
    """Every SyncBatchNorm (CIRKD's MobileNetV3 default) replaced by a BatchNorm2d of the same eps, momentum and
    state: the same function in eval mode, and a train-mode pass needs no process group."""
    for name, child in module.named_children():
        if isinstance(child, nn.SyncBatchNorm):
            bn = nn.BatchNorm2d(child.num_features, child.eps, child.momentum)
            bn.load_state_dict(child.state_dict())
            setattr(module, name, bn)
        else:
            plain_batchnorm(child)
    return module


def cirkd_images(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two random RGB images as CIRKD's loader gives them (cv2.imread's BGR, float32 minus the Caffe mean in float64,
    HWC -> CHW, float32: its dataset/*.py) and as segkd's does (RGB, ImageNet mean/std)."""
    import numpy as np

    from data.transforms import normalize

    caffe_bgr = np.array([104.00698793, 116.66876762, 122.67891434])
    images = np.random.default_rng(0).integers(0, 256, (2, height, width, 3), dtype=np.uint8)
    theirs = torch.from_numpy(np.stack([(im[..., ::-1].astype(np.float32) - caffe_bgr).transpose(2, 0, 1)
                                        for im in images]).astype(np.float32))
    return theirs, normalize(torch.from_numpy(images).permute(0, 3, 1, 2))


def check_cirkd(repo: str, folder: str) -> bool:
    sys.path.insert(0, os.path.abspath(repo))  # CIRKD's package is `models` (segkd's is `model`)
    try:
        from models.deeplabv3 import get_deeplabv3  # winycg/CIRKD's
        from models.deeplabv3_mobilenetv3 import get_deeplabv3_mobilenet_ssseg
        from models.psp_mobile import get_psp_mobile
        from models.segbase import SegBaseModel  # noqa: F401  (its ResNetV1b backbone, resnet*_v1s)
    finally:
        sys.path.pop(0)
    theirs, mine = cirkd_images(97, 129)
    results = []
    for layers, classes, name in CIRKD_FILES:
        torch.manual_seed(0)  # its random init (kaiming) too is seeded
        net = get_deeplabv3(backbone=f"resnet{layers}", pretrained="None", pretrained_base="None",
                            num_class=classes, aux=True, norm_layer=nn.BatchNorm2d)
        net = calibrate(net, theirs)
        with torch.no_grad():
            out, aux, _ = net(theirs)
        # its eval.py: the logits zoomed to the image with align_corners=True
        expected = F.interpolate(out, theirs.shape[2:], mode="bilinear", align_corners=True)
        src, dst = os.path.join(folder, name), os.path.join(folder, f"{name}.segkd.pth")
        torch.save(net.state_dict(), src)  # train_baseline.py / train_cirkdv2.py: model.state_dict()
        import_weights(src, dst, "cirkd", classes)
        model, _ = model_from_checkpoint(dst, classes)
        with torch.no_grad():
            got = model.eval()(mine)
            # the import alone: CIRKD's own input tensor, segkd's input conversion bypassed
            model.input_transform = nn.Identity()
            same_input = (model(theirs, aux=False)["out"] - out).abs().max().item()
        diff = (F.interpolate(got["out"], mine.shape[2:], mode="bilinear", align_corners=model.align_corners)
                - expected).abs().max().item()
        aux_diff = (got["aux"] - aux).abs().max().item()
        ok = max(diff, aux_diff, same_input) <= TOLERANCE
        print(f"cirkd {name} (DeepLabV3-R{layers}, {classes} classes): logits {tuple(expected.shape)} (max |logit| "
              f"{expected.abs().max().item():.3g}), max abs difference {diff:.2e}, aux logits {aux_diff:.2e}, "
              f"on CIRKD's input tensor {same_input:.2e} ({'ok' if ok else 'FAILED'}, tolerance {TOLERANCE:g})",
              flush=True)
        results.append(ok)
    mobile = {"deeplabv3_mobilenet_ssseg": get_deeplabv3_mobilenet_ssseg, "psp_mobile": get_psp_mobile}
    # an even size: CIRKD's stride-2 convs then pad one pixel after and none before (torchvision's: one each side)
    theirs, mine = cirkd_images(96, 128)
    for model_name, backbone, dataset, classes in CIRKD_MOBILE_FILES:
        name = f"kd_{model_name}_{backbone}_{dataset}_best_model.pth"
        torch.manual_seed(0)
        net = mobile[model_name](backbone=backbone, pretrained="None", pretrained_base="None", num_class=classes,
                                 norm_layer=nn.BatchNorm2d)
        net = calibrate(plain_batchnorm(net), theirs)
        with torch.no_grad():
            out = net(theirs)[0]  # [logits, the 128-channel feature] at 1/8
        expected = F.interpolate(out, theirs.shape[2:], mode="bilinear", align_corners=True)
        src, dst = os.path.join(folder, name), os.path.join(folder, f"{name}.segkd.pth")
        torch.save(net.state_dict(), src)
        import_weights(src, dst, "cirkd", classes)
        model, meta = model_from_checkpoint(dst, classes)
        with torch.no_grad():
            got = model.eval()(mine)
            model.input_transform = nn.Identity()
            same_input = (model(theirs, aux=False)["out"] - out).abs().max().item()
        diff = (F.interpolate(got["out"], mine.shape[2:], mode="bilinear", align_corners=model.align_corners)
                - expected).abs().max().item()
        ok = max(diff, same_input) <= TOLERANCE and "aux" not in got
        print(f"cirkd {name} ({model_name} {backbone} -> {meta['arch']} {meta['backbone']}, {classes} classes): "
              f"logits {tuple(expected.shape)} (max |logit| {expected.abs().max().item():.3g}), max abs difference "
              f"{diff:.2e}, no aux head, on CIRKD's input tensor {same_input:.2e} ({'ok' if ok else 'FAILED'}, "
              f"tolerance {TOLERANCE:g})", flush=True)
        results.append(ok)
    return all(results)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--semseg", metavar="DIR", help="a clone of hszhao/semseg (its model/ folder is used)")
    parser.add_argument("--mmseg", action="store_true", help="check against the installed mmsegmentation")
    parser.add_argument("--torchvision", action="store_true", help="check against the installed torchvision")
    parser.add_argument("--cirkd", metavar="DIR", help="a clone of winycg/CIRKD (its models/ folder is used)")
    args = parser.parse_args(argv)
    if not (args.semseg or args.mmseg or args.torchvision or args.cirkd):
        parser.error("name at least one of --semseg DIR, --mmseg, --torchvision, --cirkd DIR")
    ok = True
    with tempfile.TemporaryDirectory() as folder:
        if args.torchvision:
            ok &= check_torchvision(folder)
        if args.mmseg:
            ok &= check_mmseg(folder)
        if args.cirkd:
            ok &= check_cirkd(args.cirkd, folder)
        if args.semseg:
            # semseg's package is also called `model`: segkd's is imported first, so drop it for their import
            saved = {k: v for k, v in sys.modules.items() if k == "model" or k.startswith("model.")}
            for k in saved:
                del sys.modules[k]
            try:
                ok &= check_semseg(args.semseg, folder)
            finally:
                for k in [k for k in sys.modules if k == "model" or k.startswith("model.")]:
                    del sys.modules[k]
                sys.modules.update(saved)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
