"""Dilated ResNet backbones (output stride 8) and strict loading of ImageNet weights.

    backbone = ResNetBackbone(18, pretrained=True)          # torchvision weights via the hub cache
    backbone = ResNetBackbone(50, pretrained="r50.pth")     # a local torchvision-layout state dict
    backbone = ResNetBackbone(50, stem="mmseg", dilation="contract")   # mmseg's ResNetV1c layout, random init
    feats = backbone(images)  # {"layer3": N x 256 x H/8 x W/8, "layer4": N x 512 x H/8 x W/8} for R18

Offline machines: put the torchvision file (e.g. ``resnet18-f37072fd.pth``) into
``$TORCH_HOME/hub/checkpoints/`` (``torch.hub.get_dir()``); the error message names file, URL and folder.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from typing import Union

import torch
import torchvision
from torch import Tensor, nn

from util.errors import SegKDError

_BUILDERS = {
    18: (torchvision.models.resnet18, torchvision.models.ResNet18_Weights),
    34: (torchvision.models.resnet34, torchvision.models.ResNet34_Weights),
    50: (torchvision.models.resnet50, torchvision.models.ResNet50_Weights),
    101: (torchvision.models.resnet101, torchvision.models.ResNet101_Weights),
}

STEMS = ("torchvision", "semseg", "mmseg")
DILATIONS = ("semseg", "contract", "cirkd")
# Deep stems: three 3x3 convs (the first at stride 2), each with BN and ReLU, then the same maxpool.
_DEEP_STEMS = {"semseg": (64, 64, 128), "mmseg": (32, 32, 64)}
# (first block, other blocks) dilation of layer3 and layer4 under each convention.
_DILATION = {"semseg": ((2, 2), (4, 4)), "contract": ((1, 2), (2, 4)), "cirkd": ((1, 2), (2, 4))}
# CIRKD's ResNetV1b (from PyTorch-Encoding) builds a dilated layer's first BasicBlock with its second 3x3 conv at
# the layer's own dilation (``previous_dilation``); contract keeps both at the previous layer's. One 3x3 conv per
# Bottleneck: cirkd and contract are the same network at depth 50/101.
_SECOND_CONV_FULL = {"cirkd"}

# The backbone keeps torchvision's module names (conv1, bn1, layer1..layer4), so a torchvision ResNet state
# dict loads key for key: the key map is the identity and there is none to apply. ``fc`` (the ImageNet
# classifier) is dropped; any other key is reported as unexpected by the strict load.
_MODULES = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")
_CLASSIFIER_KEYS = ("fc.weight", "fc.bias")
_LAYOUT_HINT = (
    "expected ResNet weights (conv1, bn1, [conv2, bn2, conv3, bn3,] layer1..layer4) of the depth in model.layers "
    "and the stem in model.stem: torchvision's 7x7 file needs model.stem=torchvision, semseg's "
    "initmodel/resnet*_v2.pth model.stem=semseg, mmseg's resnet*_v1c model.stem=mmseg"
)
# A deep stem saved as a Sequential (mmseg's ``stem``, semseg's PSPNet ``layer0``): index -> segkd's module name
# (2, 5, 8 are ReLUs, 9 semseg's maxpool: no weights).
DEEP_STEM_INDEX = {"0": "conv1", "1": "bn1", "3": "conv2", "4": "bn2", "6": "conv3", "7": "bn3"}

StateSource = Union[str, Mapping[str, Tensor]]


class ResNetBackbone(nn.Module):
    """A torchvision ResNet without avgpool/fc, dilated to output stride 8 (layer3 x2, layer4 x4).

    Args:
        layers: depth, one of 18, 34, 50, 101.
        pretrained: False/None (random init), True (torchvision ImageNet weights chosen by ``weights``; needs
            ``stem="torchvision"``) or a path to a state dict with this stem: torchvision's file, semseg's
            ``initmodel/resnet*_v2.pth`` (``stem="semseg"``, the same module names) or mmseg's ResNetV1c
            ImageNet file (``stem="mmseg"``, its ``stem.i`` keys mapped by :data:`DEEP_STEM_INDEX`).
        weights: name of a member of torchvision's ``ResNet<layers>_Weights`` enum.
        zero_init_residual: zero the last BatchNorm's weight in every residual block (random init only).
        stem: ``"torchvision"`` (7x7 conv, 64 channels), ``"semseg"`` (hszhao/semseg's deep stem, 3x3 convs of
            64/64/128 channels, so layer1 takes 128) or ``"mmseg"`` (mmsegmentation's ResNetV1c, 32/32/64).
        dilation: ``"semseg"`` (every block of layer3 at dilation 2, of layer4 at 4) or ``"contract"`` (the
            first block of each keeps the previous dilation: layer3 1, 2, 2, ...; layer4 2, 4, 4, ...; as
            torchvision's ``replace_stride_with_dilation`` and mmseg's ``contract_dilation``) or ``"cirkd"``
            (contract, but the first BasicBlock's conv2 at the layer's dilation: layer3 (1, 2), 2, ...; layer4
            (2, 4), 4, ...; CIRKD's ResNetV1b; at depth 50/101 the same as contract).

    A deep stem's modules are ``conv1, bn1, conv2, bn2, conv3, bn3`` (ReLU after each BN, then ``maxpool``),
    the names semseg's own ResNet (``initmodel/resnet*_v2.pth``) uses. Its trained PSPNet groups them as
    ``layer0`` and mmseg as ``stem``; the key map an importer applies is

        ``layer0.0`` / ``stem.0`` -> ``conv1``   ``layer0.1`` / ``stem.1`` -> ``bn1``
        ``layer0.3`` / ``stem.3`` -> ``conv2``   ``layer0.4`` / ``stem.4`` -> ``bn2``
        ``layer0.6`` / ``stem.6`` -> ``conv3``   ``layer0.7`` / ``stem.7`` -> ``bn3``

    (indices 2, 5, 8 are ReLUs; semseg's index 9, the maxpool, has no weights). With the semseg stem,
    ``layer1.0`` takes 128 channels as in semseg's ``_make_layer``: Bottleneck's ``conv1`` and
    ``downsample.0`` are 128 -> 64 / 256, and BasicBlock (R18/34) gains a ``downsample`` (1x1 conv 128 -> 64
    + BN) that torchvision's layer1 has not.

    Attributes:
        channels: ``{"layer1": C1, ..., "layer4": C4}``: 64/128/256/512 for ResNet-18/34, 256/512/1024/2048
            for 50/101.
    """

    def __init__(self, layers: int, pretrained: bool | str | None = False, weights: str = "IMAGENET1K_V1",
                 zero_init_residual: bool = False, stem: str = "torchvision", dilation: str = "semseg"):
        super().__init__()
        if layers not in _BUILDERS:
            raise SegKDError(f"model.layers must be one of {sorted(_BUILDERS)}, got {layers!r}")
        if stem not in STEMS:
            raise SegKDError(f"model.stem must be one of {', '.join(STEMS)}, got {stem!r}")
        if dilation not in DILATIONS:
            raise SegKDError(f"model.dilation must be one of {', '.join(DILATIONS)}, got {dilation!r}")
        if stem != "torchvision" and pretrained is True:
            raise SegKDError(f"model.pretrained=true needs model.stem=torchvision (torchvision publishes no {stem} "
                             "deep stem): give the path of a deep-stem file (semseg's initmodel/resnet50_v2.pth, "
                             "mmseg's resnet50_v1c) or model.pretrained=false")
        builder, _ = _BUILDERS[layers]
        bottleneck = layers >= 50
        # zero_init_residual (Goyal et al. 2017): each block starts as the identity, which lets a deep network
        # trained from scratch learn from the first iterations; loaded weights replace it.
        resnet = builder(weights=None, zero_init_residual=zero_init_residual)
        (first3, rest3), (first4, rest4) = _DILATION[dilation]
        _dilate_layer(resnet.layer3, rest3, first3, dilation in _SECOND_CONV_FULL)
        _dilate_layer(resnet.layer4, rest4, first4, dilation in _SECOND_CONV_FULL)
        expansion = 4 if bottleneck else 1
        self.channels: dict[str, int] = {f"layer{i + 1}": c * expansion for i, c in enumerate((64, 128, 256, 512))}
        self.stem = stem
        if stem != "torchvision":  # registered first, so the state dict lists the stem before layer1
            self._deep_stem(resnet.layer1[0], *_DEEP_STEMS[stem])
        for name in _MODULES:
            if stem == "torchvision" or name.startswith("layer"):
                setattr(self, name, getattr(resnet, name))
        self.relu = resnet.relu
        self.maxpool = resnet.maxpool
        if pretrained is True:
            load_backbone_weights(self, imagenet_state_dict(layers, weights), f"ImageNet ResNet-{layers}")
        elif isinstance(pretrained, str):
            if not pretrained:
                raise SegKDError("model.pretrained: empty path (use false for random init)")
            load_backbone_weights(self, pretrained)
        elif pretrained not in (False, None):
            raise SegKDError(f"model.pretrained must be false, true or a path, got {pretrained!r}")

    def _deep_stem(self, block: nn.Module, c1: int, c2: int, c3: int) -> None:
        """Three 3x3 conv + BN (stride 2 first) instead of the 7x7 stem; ``block`` (layer1's first) is made to
        take ``c3`` channels."""
        self.conv1, self.bn1 = _conv_bn(3, c1, 3, stride=2)
        self.conv2, self.bn2 = _conv_bn(c1, c2, 3)
        self.conv3, self.bn3 = _conv_bn(c2, c3, 3)
        if block.conv1.in_channels == c3:
            return  # mmseg's 64 channels: layer1 as torchvision builds it
        out = self.channels["layer1"]
        block.conv1 = _conv_bn(c3, block.conv1.out_channels, block.conv1.kernel_size[0])[0]
        if block.downsample is None:  # BasicBlock: 64 -> 64 needed none, 128 -> 64 does (as semseg's)
            block.downsample = nn.Sequential(*_conv_bn(c3, out, 1))
        else:
            block.downsample[0] = _conv_bn(c3, out, 1)[0]

    def forward(self, x: Tensor, keep: Collection[str] = ()) -> dict[str, Tensor]:
        """x: N x 3 x H x W -> {"layer3": N x C3 x h x w, "layer4": N x C4 x h x w}, h = H/8 rounded up
        through the stem (473 -> 60, 65 -> 9, 32 -> 4); plus "layer1" (N x C1 x H/4 x W/4) and "layer2"
        (N x C2 x h x w) when named in ``keep`` (a feature loss asks for them; otherwise they are not held)."""
        x = self.relu(self.bn1(self.conv1(x)))
        if self.stem != "torchvision":
            x = self.relu(self.bn3(self.conv3(self.relu(self.bn2(self.conv2(x))))))
        c1 = self.layer1(self.maxpool(x))
        c2 = self.layer2(c1)
        c3 = self.layer3(c2)
        c4 = self.layer4(c3)
        out = {"layer3": c3, "layer4": c4}
        if "layer1" in keep:
            out["layer1"] = c1
        if "layer2" in keep:
            out["layer2"] = c2
        return out


def _dilate_layer(layer: nn.Sequential, dilation: int, first: int | None = None, second_full: bool = False) -> None:
    """Remove the stride of a ResNet layer and dilate the 3x3 convs of its blocks, in place: the first block's
    at ``first`` (default ``dilation``), every other block's at ``dilation``.

    semseg's convention for every depth is ``first = dilation``: all blocks of layer3 get dilation 2 and all of
    layer4 dilation 4, the first block included. The contract convention (``first`` = the previous layer's
    dilation: 1 for layer3, 2 for layer4) is torchvision's ``replace_stride_with_dilation``, whose BasicBlock
    refuses dilation > 1 in its constructor, hence the edit in place for every depth. padding = dilation keeps
    the spatial size; the 1x1 convs (Bottleneck's conv1/conv3, the downsample) only lose their stride.
    ``second_full`` (CIRKD's convention): the first block's 3x3 convs after its first one (a BasicBlock's conv2)
    take ``dilation``, not ``first``.
    """
    for i, block in enumerate(layer):
        d = dilation if i or first is None else first
        seen = 0
        for conv in block.modules():
            if not isinstance(conv, nn.Conv2d):
                continue
            conv.stride = (1, 1)
            if conv.kernel_size == (3, 3):
                dd = dilation if second_full and seen else d
                conv.dilation = (dd, dd)
                conv.padding = (dd, dd)
                seen += 1


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    """A bias-free conv (padding kernel // 2) and its BatchNorm, initialised as torchvision's ResNet does."""
    conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv, nn.BatchNorm2d(cout)  # BatchNorm2d starts at weight 1, bias 0 already


def imagenet_state_dict(layers: int, weights: str = "IMAGENET1K_V1") -> dict[str, Tensor]:
    """torchvision's ImageNet state dict for ResNet-``layers``, from the hub cache or downloaded into it.

    The cache file is ``<torch.hub.get_dir()>/checkpoints/<basename of the enum's url>``, so ``TORCH_HOME``
    is respected. Offline with no cached file: SegKDError naming the file, the URL and the folder.
    """
    if layers not in _BUILDERS:
        raise SegKDError(f"model.layers must be one of {sorted(_BUILDERS)}, got {layers!r}")
    enum = _BUILDERS[layers][1]
    if weights not in enum.__members__:
        valid = ", ".join(enum.__members__)
        raise SegKDError(f"model.weights: {weights!r} is not a ResNet-{layers} weight set; valid: {valid}")
    return hub_state_dict(enum[weights].url)


def hub_state_dict(url: str) -> dict[str, Tensor]:
    """The state dict of torchvision's weight file ``url``, from ``<torch.hub.get_dir()>/checkpoints/<basename>``
    or downloaded into it (hash checked); offline with no cached file: SegKDError naming file, URL and folder."""
    folder = os.path.join(torch.hub.get_dir(), "checkpoints")
    file_name = os.path.basename(url)
    path = os.path.join(folder, file_name)
    if os.path.isfile(path):
        return _read_file(path)
    try:
        return torch.hub.load_state_dict_from_url(
            url, progress=True, check_hash=True, map_location="cpu", weights_only=True
        )
    except Exception as e:  # offline, proxy, bad hash...: all fixed the same way by the user
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        raise SegKDError(
            f"cannot download {url} ({reason}); download {file_name} by hand and put it in {folder} "
            "(or set TORCH_HOME)"
        ) from e


def _read_file(path: str) -> dict[str, Tensor]:
    """Load a state dict file (tensors only, ``weights_only=True``) onto the CPU."""
    if not os.path.isfile(path):
        raise SegKDError(f"{path}: backbone weights file not found (model.pretrained)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and torch errors all mean "not a readable state dict"
        raise SegKDError(f"{path}: cannot read backbone weights ({type(e).__name__})") from e


def clean_state_dict(obj: Mapping, origin: str) -> dict[str, Tensor]:
    """Unwrap ``{"state_dict": sd}`` / ``{"model": sd}``, strip a leading ``module.``, drop ``fc.*`` and name
    a deep stem's Sequential entries ``stem.i.*`` as segkd's modules (:data:`DEEP_STEM_INDEX`)."""
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
            break
    if not isinstance(obj, Mapping):
        raise SegKDError(f"{origin}: expected a state dict, got {type(obj).__name__}")
    out: dict[str, Tensor] = {}
    for key, value in obj.items():
        if not isinstance(value, Tensor):
            raise SegKDError(f"{origin}: entry {key!r} is not a tensor; expected a state dict")
        key = key[len("module.") :] if key.startswith("module.") else key
        parts = key.split(".", 2)
        if len(parts) == 3 and parts[0] == "stem" and parts[1] in DEEP_STEM_INDEX:
            key = f"{DEEP_STEM_INDEX[parts[1]]}.{parts[2]}"
        if key not in _CLASSIFIER_KEYS:
            out[key] = value
    return out


def _short_list(keys: list[str], limit: int = 10) -> str:
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_backbone_weights(module: nn.Module, source: StateSource, origin: str | None = None) -> None:
    """Load torchvision-layout ResNet weights into ``module`` strictly (all keys, all shapes).

    ``source`` is a state dict or a path to one (raw, or wrapped in a ``state_dict``/``model`` entry;
    a leading ``module.`` from DDP/semseg is stripped; ``fc.weight``/``fc.bias`` are dropped). Keys are
    torchvision's own (``conv1``, ``bn1``, ``layer1``..``layer4`` are the attributes of the same name).
    Missing keys (except BatchNorm ``num_batches_tracked``, absent from old torchvision
    files), unexpected keys or shape mismatches raise SegKDError listing them; ``module`` is left untouched.
    """
    if isinstance(source, str):
        origin = origin or source
        source = _read_file(source)
    origin = origin or "backbone weights"
    state = clean_state_dict(source, origin)
    expected = module.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = [f"missing keys: {_short_list(missing)}"] if missing else []
        parts += [f"unexpected keys: {_short_list(unexpected)}"] if unexpected else []
        raise SegKDError(f"{origin}: {'; '.join(parts)}; {_LAYOUT_HINT}")
    wrong = [
        f"{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}"
        for k, v in state.items()
        if v.shape != expected[k].shape
    ]
    if wrong:
        raise SegKDError(f"{origin}: shape mismatch (file vs model): {_short_list(wrong, 5)}")
    module.load_state_dict(state, strict=True)
