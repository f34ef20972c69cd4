"""PSPNet (Zhao et al., CVPR 2017) on an injected backbone, returning logits at 1/8 resolution.

    model = build_pspnet(layers=18, classes=21, pretrained=True)
    logits = model(images)  # {"out": N x 21 x h x w, "aux": N x 21 x h x w}, h = H/8 (473 -> 60)
    logits = model(images, aux=False)  # {"out": ...}: evaluation skips the aux head
    feats = model(images, features=("layer4", "out_feat"))  # logits plus named tensors for feature losses
    backbone_params, head_params = model.param_groups()  # for the 1x / 10x learning rates

The model never computes a loss and never upsamples its output: losses and evaluation resize the logits
to whatever resolution they need (evaluation with the model's ``align_corners``). :class:`Segmentor` holds
what every architecture shares (the aux head on layer3, ``features=``, the parameter groups); PSPNet and
model/deeplabv3.py's DeepLabV3 differ only in the context module on layer4.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.backbone import ResNetBackbone
from model.mobilenetv3 import CIRKD_VARIANTS, VARIANTS, MobileNetV3Backbone
from util.errors import SegKDError

BACKBONES = ("resnet", *VARIANTS)  # model.backbone
# CIRKD's width of every head layer on its MobileNetV3 students (model/mobilenetv3.py), where the ResNet heads
# have 512 (PSPNet) or 256 (DeepLabV3, the aux head)
MOBILE_WIDTH = 128


class PPM(nn.Module):
    """Pyramid pooling: average-pool to each bin size, reduce, upsample back, concatenate with the input.

    Each branch reduces to ``in_channels // len(bins)`` channels (semseg's choice), so the default four
    bins give ``out_channels = 2 * in_channels``. ``align_corners`` of the bilinear upsampling: True in
    semseg, False in mmsegmentation.
    """

    def __init__(self, in_channels: int, bins: Sequence[int] = (1, 2, 3, 6), align_corners: bool = True):
        super().__init__()
        self.align_corners = align_corners
        reduced = in_channels // len(bins)
        self.branches = nn.ModuleList(
            nn.Sequential(
                nn.AdaptiveAvgPool2d(b),
                nn.Conv2d(in_channels, reduced, kernel_size=1, bias=False),
                nn.BatchNorm2d(reduced),
                nn.ReLU(inplace=True),
            )
            for b in bins
        )
        self.out_channels = in_channels + reduced * len(bins)

    def forward(self, x: Tensor) -> Tensor:
        """x: N x C x h x w -> N x out_channels x h x w."""
        size = x.shape[-2:]
        # the convention the weights were trained with (semseg: True), so imported heads see the same features
        ac = self.align_corners
        pooled = [F.interpolate(b(x), size=size, mode="bilinear", align_corners=ac) for b in self.branches]
        return torch.cat([x, *pooled], dim=1)


def _head(in_channels: int, mid_channels: int, classes: int, dropout: float) -> nn.Sequential:
    """conv3x3 -> BN -> ReLU -> Dropout2d -> conv1x1 to ``classes`` logits."""
    return nn.Sequential(
        nn.Conv2d(in_channels, mid_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(mid_channels),
        nn.ReLU(inplace=True),
        nn.Dropout2d(p=dropout),
        nn.Conv2d(mid_channels, classes, kernel_size=1),
    )


class Segmentor(nn.Module):
    """backbone -> ``context`` on layer4 -> ``head``; ``aux_head`` on layer3. A subclass builds ``context``
    (PSPNet's PPM, DeepLabV3's ASPP) and ``head``, whose first three modules are its 3x3 conv + BN + ReLU and
    the rest its dropout and classifier; :meth:`forward` and the parameter groups are the same for all.
    ``aux_head`` is None in a network without one (CIRKD's MobileNetV3 students, ``model.backbone=*_cirkd``):
    ``forward`` then never returns "aux" or "aux_feat".

    Attributes:
        align_corners: the bilinear convention of the network's own upsampling, which evaluation also uses to
            zoom its logits (``engine.inference.window_probs``).
    """

    def __init__(self, backbone: nn.Module, classes: int, dropout: float, align_corners: bool):
        super().__init__()
        _check_args(classes, dropout)
        channels = getattr(backbone, "channels", None)
        if not isinstance(channels, dict) or not {"layer3", "layer4"} <= channels.keys():
            raise TypeError(f"{type(self).__name__} backbone needs a `channels` dict with 'layer3' and 'layer4' "
                            "entries")
        self.backbone = backbone
        self.align_corners = align_corners
        self.aux_head: nn.Sequential | None = None  # a subclass builds it, or leaves it out
        # model.input: a fixed conversion of segkd's input for a network trained on another (model/inputs.py)
        self.input_transform: nn.Module = nn.Identity()

    def context(self, x: Tensor) -> Tensor:
        """N x C4 x h x w (layer4) -> the head's input N x C x h x w."""
        raise NotImplementedError

    def forward(self, x: Tensor, aux: bool = True, features: Collection[str] = ()) -> dict[str, Tensor]:
        """x: N x 3 x H x W -> {"out": N x K x h x w, "aux": N x K x h x w} logits at the feature resolution
        (h = H/8 through the stem), NOT upsampled. ``aux=False`` skips the aux head and returns only "out":
        evaluation does that (the aux head is a training device); a distilled student's loss uses the
        teacher's aux logits, so the default computes them in eval mode too.

        ``features`` adds named intermediate tensors for the feature losses (model/methods): "layer1"
        (N x C1 x H/4 x W/4), "layer2".."layer4" (N x C x h x w), "out_feat" (N x C x h x w, the main head's
        3x3 conv + BN + ReLU after the context module, before dropout and the classifier: 512 channels in
        PSPNet, 256 in DeepLabV3, 512 with ``model.head=cirkd``) and "aux_feat" (N x 256 x h x w, C3 / 4 with
        ``model.head=cirkd``: the same in the aux head; computed even with ``aux=False``); on MobileNetV3
        (model/mobilenetv3.py) each head is 128 wide. Asking for none costs
        nothing: the computation is the same, only more tensors are returned."""
        unknown = set(features) - set(self.feature_channels)
        if unknown:
            raise ValueError(f"unknown feature name(s) {sorted(unknown)}; known: {list(self.feature_channels)}")
        keep = [name for name in features if name in ("layer1", "layer2")]
        x = self.input_transform(x)
        feats = self.backbone(x, keep=keep) if keep else self.backbone(x)  # an injected backbone needs no `keep`
        out: dict[str, Tensor] = {}
        if "out_feat" in features:
            hidden = self.head[:3](self.context(feats["layer4"]))  # the same modules as head(...), split at dropout
            out["out"], out["out_feat"] = self.head[3:](hidden), hidden
        else:
            out["out"] = self.head(self.context(feats["layer4"]))
        if self.aux_head is None:
            pass  # no aux head (``aux`` asks for nothing then; "aux_feat" is not among feature_channels)
        elif "aux_feat" in features:
            hidden = self.aux_head[:3](feats["layer3"])
            out["aux_feat"] = hidden
            if aux:
                out["aux"] = self.aux_head[3:](hidden)
        elif aux:
            out["aux"] = self.aux_head(feats["layer3"])
        out.update({name: feats[name] for name in features if name.startswith("layer")})
        return out

    @property
    def feature_channels(self) -> dict[str, int]:
        """Channels of every tensor ``forward(features=...)`` can return."""
        c = self.backbone.channels
        aux = {"aux_feat": self.aux_head[0].out_channels} if self.aux_head is not None else {}
        return {**{f"layer{i}": c[f"layer{i}"] for i in range(1, 5) if f"layer{i}" in c},
                "out_feat": self.head[0].out_channels, **aux}

    def inference_parameters(self) -> list[nn.Parameter]:
        """The parameters of the network evaluated and deployed: everything but the aux head."""
        skip = {id(p) for p in self.aux_head.parameters()} if self.aux_head is not None else set()
        return [p for p in self.parameters() if id(p) not in skip]

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(backbone parameters, new-layer parameters: context module, head, aux_head), for the 1x / 10x lr."""
        backbone = list(self.backbone.parameters())
        ids = {id(p) for p in backbone}
        return backbone, [p for p in self.parameters() if id(p) not in ids]


class PSPNet(Segmentor):
    """PSPNet: backbone -> PPM on layer4 -> ``head``; ``aux_head`` on layer3.

    Args:
        backbone: a module with a ``channels`` dict (``layer3``/``layer4``) whose forward returns
            ``{"layer3": N x C3 x h x w, "layer4": N x C4 x h x w}``.
        classes: number of classes K (>= 2).
        bins: PPM pooling sizes.
        dropout: Dropout2d probability in both heads.
        align_corners: of the PPM's upsampling (and of evaluation's logit zoom).
        head_channels, aux_channels: the width of the main and the aux head's 3x3 conv (``out_feat``, ``aux_feat``).
        cirkd: CIRKD's ``psp_mobile`` head: no aux head, element-wise Dropout before the classifier.
    """

    def __init__(
        self, backbone: nn.Module, classes: int, bins: Sequence[int] = (1, 2, 3, 6), dropout: float = 0.1,
        align_corners: bool = True, head_channels: int = 512, aux_channels: int = 256, cirkd: bool = False,
    ):
        super().__init__(backbone, classes, dropout, align_corners)
        channels = backbone.channels
        self.ppm = PPM(channels["layer4"], bins, align_corners)
        self.head = _head(self.ppm.out_channels, head_channels, classes, dropout)
        if cirkd:
            self.head[3] = nn.Dropout(dropout)
        else:
            self.aux_head = _head(channels["layer3"], aux_channels, classes, dropout)

    def context(self, x: Tensor) -> Tensor:
        """layer4 N x C4 x h x w -> PPM output N x 2*C4 x h x w."""
        return self.ppm(x)


def _check_args(classes: int, dropout: float) -> None:
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 2:
        raise SegKDError(f"data.classes must be an integer >= 2, got {classes!r}")
    if not 0.0 <= dropout < 1.0:
        raise SegKDError(f"model.dropout must be in [0, 1), got {dropout!r}")


def build_pspnet(
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
) -> PSPNet:
    """PSPNet on a dilated ResNet-``layers`` or (``backbone``) a MobileNetV3, with CIRKD's 128-wide heads (and
    CIRKD's head without an aux head on a ``*_cirkd`` backbone); ``pretrained``, ``zero_init_residual``, ``stem``
    and ``dilation`` as in :class:`model.backbone.ResNetBackbone`."""
    _check_args(classes, dropout)  # before a possibly slow weight load
    net = build_backbone(backbone, layers, pretrained, weights, zero_init_residual, stem, dilation)
    widths = {"head_channels": MOBILE_WIDTH, "aux_channels": MOBILE_WIDTH} if backbone != "resnet" else {}
    return PSPNet(net, classes, dropout=dropout, align_corners=align_corners, cirkd=backbone in CIRKD_VARIANTS,
                  **widths)


def build_backbone(backbone: str, layers: int, pretrained: bool | str | None, weights: str, zero_init_residual: bool,
                   stem: str, dilation: str) -> nn.Module:
    """``model.backbone``: a :class:`ResNetBackbone` of depth ``layers``, or a :class:`MobileNetV3Backbone`
    (``layers`` unused; ``stem`` and ``dilation`` must be their ResNet defaults, which it has no other of)."""
    if backbone == "resnet":
        return ResNetBackbone(layers, pretrained, weights, zero_init_residual, stem, dilation)
    if backbone not in VARIANTS:
        raise SegKDError(f"model.backbone must be one of {', '.join(BACKBONES)}, got {backbone!r}")
    if stem != "torchvision" or dilation != "semseg":
        raise SegKDError(f"model.stem={stem} / model.dilation={dilation}: ResNet options; model.backbone={backbone} "
                         "has torchvision's stem and CIRKD's dilation (keep model.stem=torchvision "
                         "model.dilation=semseg)")
    return MobileNetV3Backbone(backbone, pretrained, weights, zero_init_residual)
