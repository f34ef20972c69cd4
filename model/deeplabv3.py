"""DeepLabV3 (Chen et al., arXiv 1706.05587) on the same dilated backbone and aux head as PSPNet.

    model = build_deeplabv3(layers=101, classes=21)
    logits = model(images)  # {"out": N x 21 x h x w, "aux": N x 21 x h x w}, h = H/8, as PSPNet's
    feats = model(images, features=("out_feat",))  # N x 256 x h x w before the classifier

ASPP at output stride 8 uses rates 12/24/36 (the paper's rates for stride 8, twice those at stride 16), with
image pooling, as torchvision's ``DeepLabHead``: five branches of 256 channels (1x1 conv; three dilated 3x3
convs; global average pool + 1x1 conv, broadcast back), each with BN and ReLU, concatenated and projected by a
1x1 conv + BN + ReLU + Dropout(0.5). The head is torchvision's 3x3 conv + BN + ReLU and 1x1 classifier, with
PSPNet's Dropout2d(``dropout``) before the classifier (CIRKD's DeepLabV3 head has it too), so ``out_feat`` is
the tensor after the ASPP projection and that 3x3 conv + BN + ReLU, just before dropout and the classifier.
The aux head on layer3 is PSPNet's (torchvision's ``FCNHead`` for R50/101), so the aux logits of a DeepLabV3
teacher and a PSPNet student have the same shape. On a MobileNetV3 (``model.backbone``) the ASPP branches, its
projection, the head and the aux head are 128 wide, as CIRKD's ``models/deeplabv3_mobilenetv3.py``
(model/mobilenetv3.py); on ``mobilenetv3_*_cirkd`` as CIRKD's, without the aux head.

The module names follow torchvision's ``deeplabv3_resnet50/101`` (whose backbone is the torchvision stem with
the contract dilation: ``model.stem=torchvision model.dilation=contract``), so the key map an importer applies
is ``backbone.*`` -> ``backbone.*``, ``classifier.0.convs.i`` -> ``aspp.branches.i`` (i = 0..4),
``classifier.0.project`` -> ``aspp.project``, ``classifier.1/2/4`` -> ``head.0/1/4`` (the 3x3 conv, BN,
classifier) and ``aux_classifier.*`` -> ``aux_head.*``.

``head="cirkd"`` (``model.head``) is CIRKD's DeepLabV3 (winycg/CIRKD ``models/deeplabv3.py``): the same module
layout at other widths, ASPP branches and projection and the head's 3x3 conv of 512 channels, the aux head
(CIRKD's ``_FCNHead``) of layer3's channels / 4 (256 for R50/101, 64 for R18/34), element-wise Dropout in both
heads (Dropout2d here otherwise). tools/import_weights.py holds the key map from CIRKD's files.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from model.mobilenetv3 import CIRKD_VARIANTS
from model.pspnet import MOBILE_WIDTH, Segmentor, _check_args, _head, build_backbone
from util.errors import SegKDError

RATES = (12, 24, 36)  # output stride 8
HEADS = ("segkd", "cirkd")  # model.head


def _conv_bn_relu(cin: int, cout: int, kernel: int, dilation: int = 1) -> nn.Sequential:
    pad = dilation * (kernel // 2)
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=pad, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: N x C x h x w -> N x ``channels`` x h x w.

    ``branches[0]`` is the 1x1 conv, ``branches[1..3]`` the 3x3 convs at ``rates``, ``branches[4]`` the image
    pooling (its 1 x 1 map is broadcast to h x w); ``project`` fuses their concatenation.
    """

    def __init__(self, in_channels: int, rates: Sequence[int] = RATES, channels: int = 256):
        super().__init__()
        pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), *_conv_bn_relu(in_channels, channels, 1))
        self.branches = nn.ModuleList([_conv_bn_relu(in_channels, channels, 1),
                                       *(_conv_bn_relu(in_channels, channels, 3, r) for r in rates), pool])
        self.project = nn.Sequential(*_conv_bn_relu(channels * len(self.branches), channels, 1), nn.Dropout(0.5))
        self.out_channels = channels

    def forward(self, x: Tensor) -> Tensor:
        # a bilinear upsampling of a 1 x 1 map is that value everywhere, whatever align_corners says
        outs = [b(x) for b in self.branches[:-1]] + [self.branches[-1](x).expand(-1, -1, *x.shape[-2:])]
        return self.project(torch.cat(outs, dim=1))


class DeepLabV3(Segmentor):
    """DeepLabV3: backbone -> ASPP on layer4 -> ``head`` (256 channels); ``aux_head`` on layer3, as PSPNet.

    Args:
        backbone: as :class:`model.pspnet.PSPNet`'s.
        classes: number of classes K (>= 2).
        rates: the ASPP's dilation rates.
        dropout: Dropout2d probability before both classifiers.
        align_corners: of evaluation's logit zoom (the ASPP's only upsampling, of its pooled 1 x 1 map, is the
            same either way).
        channels: the width of every ASPP branch, its projection and the head's 3x3 conv (``out_feat``).
        aux_channels: the aux head's (``aux_feat``).
        head: ``"segkd"`` (the widths above) or ``"cirkd"`` (CIRKD's ResNet widths: 512, aux head layer3's / 4,
            element-wise dropout).
        aux: False for CIRKD's ``deeplabv3_mobilenet_ssseg`` (a ``*_cirkd`` MobileNetV3): no aux head, element-wise
            dropout in the head.
    """

    def __init__(self, backbone: nn.Module, classes: int, rates: Sequence[int] = RATES, dropout: float = 0.1,
                 align_corners: bool = True, channels: int = 256, aux_channels: int = 256, head: str = "segkd",
                 aux: bool = True):
        super().__init__(backbone, classes, dropout, align_corners)
        if head not in HEADS:
            raise SegKDError(f"model.head must be one of {', '.join(HEADS)}, got {head!r}")
        c3 = backbone.channels["layer3"]
        if head == "cirkd":
            channels, aux_channels = 512, c3 // 4
        self.aspp = ASPP(backbone.channels["layer4"], rates, channels)
        self.head = _head(self.aspp.out_channels, channels, classes, dropout)
        if aux:
            self.aux_head = _head(c3, aux_channels, classes, dropout)
        if head == "cirkd" or not aux:  # CIRKD's heads drop single activations (nn.Dropout), not whole channels
            self.head[3] = nn.Dropout(dropout)
            if self.aux_head is not None:
                self.aux_head[3] = nn.Dropout(dropout)

    def context(self, x: Tensor) -> Tensor:
        """layer4 N x C4 x h x w -> ASPP output N x 256 x h x w (512 with ``head="cirkd"``)."""
        return self.aspp(x)


def build_deeplabv3(
    layers: int,
    classes: int,
    pretrained: bool | str | None = False,
    weights: str = "IMAGENET1K_V1",
    dropout: float = 0.1,
    zero_init_residual: bool = False,
    stem: str = "torchvision",
    dilation: str = "semseg",
    align_corners: bool = True,
    backbone: str = "resnet",
    head: str = "segkd",
) -> DeepLabV3:
    """DeepLabV3 on a dilated ResNet-``layers`` or a MobileNetV3 (CIRKD's ASPP and heads at 128 channels); the
    arguments as :func:`model.pspnet.build_pspnet`'s, ``head`` as :class:`DeepLabV3`'s (ResNets only)."""
    _check_args(classes, dropout)
    if head not in HEADS:  # before a possibly slow weight load
        raise SegKDError(f"model.head must be one of {', '.join(HEADS)}, got {head!r}")
    if head != "segkd" and backbone != "resnet":
        raise SegKDError(f"model.head={head} is CIRKD's ResNet DeepLabV3 head; model.backbone={backbone} has its "
                         "own 128-wide heads: leave model.head at segkd")
    net = build_backbone(backbone, layers, pretrained, weights, zero_init_residual, stem, dilation)
    widths = {"channels": MOBILE_WIDTH, "aux_channels": MOBILE_WIDTH} if backbone != "resnet" else {}
    return DeepLabV3(net, classes, dropout=dropout, align_corners=align_corners, head=head,
                     aux=backbone not in CIRKD_VARIANTS, **widths)


__all__ = ["ASPP", "DeepLabV3", "HEADS", "RATES", "build_deeplabv3"]
