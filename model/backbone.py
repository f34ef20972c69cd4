"""Dilated ResNet backbones (output stride 8) and strict loading of ImageNet weights.

    backbone = ResNetBackbone(18, pretrained=True)          # torchvision weights via the hub cache
    backbone = ResNetBackbone(50, pretrained="r50.pth")     # a local torchvision-layout state dict
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

# The backbone keeps torchvision's module names (conv1, bn1, layer1..layer4), so a torchvision ResNet state
# dict loads key for key: the key map is the identity and there is none to apply. ``fc`` (the ImageNet
# classifier) is dropped; any other key is reported as unexpected by the strict load.
_MODULES = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")
_CLASSIFIER_KEYS = ("fc.weight", "fc.bias")
_LAYOUT_HINT = (
    "expected torchvision-layout ResNet weights (conv1, bn1, layer1..layer4) of the depth in model.layers; "
    "semseg's deep-stem checkpoints (conv1/conv2/conv3 stem) are not supported"
)

StateSource = Union[str, Mapping[str, Tensor]]


class ResNetBackbone(nn.Module):
    """A torchvision ResNet without avgpool/fc, dilated to output stride 8 (layer3 x2, layer4 x4).

    Args:
        layers: depth, one of 18, 34, 50, 101.
        pretrained: False/None (random init), True (torchvision ImageNet weights chosen by ``weights``)
            or a path to a torchvision-layout state dict.
        weights: name of a member of torchvision's ``ResNet<layers>_Weights`` enum.
        zero_init_residual: zero the last BatchNorm's weight in every residual block (random init only).

    Attributes:
        channels: ``{"layer1": C1, ..., "layer4": C4}``: 64/128/256/512 for ResNet-18/34, 256/512/1024/2048
            for 50/101.
    """

    def __init__(self, layers: int, pretrained: bool | str | None = False, weights: str = "IMAGENET1K_V1",
                 zero_init_residual: bool = False):
        super().__init__()
        if layers not in _BUILDERS:
            raise SegKDError(f"model.layers must be one of {sorted(_BUILDERS)}, got {layers!r}")
        builder, _ = _BUILDERS[layers]
        bottleneck = layers >= 50
        # zero_init_residual (Goyal et al. 2017): each block starts as the identity, which lets a deep network
        # trained from scratch learn from the first iterations; loaded weights replace it.
        resnet = builder(weights=None, zero_init_residual=zero_init_residual)
        _dilate_layer(resnet.layer3, 2)
        _dilate_layer(resnet.layer4, 4)
        for name in _MODULES:
            setattr(self, name, getattr(resnet, name))
        self.relu = resnet.relu
        self.maxpool = resnet.maxpool
        expansion = 4 if bottleneck else 1
        self.channels: dict[str, int] = {f"layer{i + 1}": c * expansion for i, c in enumerate((64, 128, 256, 512))}
        if pretrained is True:
            load_backbone_weights(self, imagenet_state_dict(layers, weights), f"ImageNet ResNet-{layers}")
        elif isinstance(pretrained, str):
            if not pretrained:
                raise SegKDError("model.pretrained: empty path (use false for random init)")
            load_backbone_weights(self, pretrained)
        elif pretrained not in (False, None):
            raise SegKDError(f"model.pretrained must be false, true or a path, got {pretrained!r}")

    def forward(self, x: Tensor, keep: Collection[str] = ()) -> dict[str, Tensor]:
        """x: N x 3 x H x W -> {"layer3": N x C3 x h x w, "layer4": N x C4 x h x w}, h = H/8 rounded up
        through the stem (473 -> 60, 65 -> 9, 32 -> 4); plus "layer1" (N x C1 x H/4 x W/4) and "layer2"
        (N x C2 x h x w) when named in ``keep`` (a feature loss asks for them; otherwise they are not held)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c1 = self.layer1(x)
        c2 = self.layer2(c1)
        c3 = self.layer3(c2)
        c4 = self.layer4(c3)
        out = {"layer3": c3, "layer4": c4}
        if "layer1" in keep:
            out["layer1"] = c1
        if "layer2" in keep:
            out["layer2"] = c2
        return out


def _dilate_layer(layer: nn.Sequential, dilation: int) -> None:
    """Remove the stride of a ResNet layer and dilate every 3x3 conv of every block, in place.

    This is semseg's convention for every depth: all blocks of layer3 get dilation 2 and all of layer4
    dilation 4, the first block included (torchvision's ``replace_stride_with_dilation`` keeps the previous
    dilation in a layer's first block, and BasicBlock refuses it altogether). padding = dilation keeps the
    spatial size; the 1x1 convs (Bottleneck's conv1/conv3, the downsample) only lose their stride.
    """
    for block in layer:
        for conv in block.modules():
            if not isinstance(conv, nn.Conv2d):
                continue
            conv.stride = (1, 1)
            if conv.kernel_size == (3, 3):
                conv.dilation = (dilation, dilation)
                conv.padding = (dilation, dilation)


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
    url = enum[weights].url
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
    """Unwrap ``{"state_dict": sd}`` / ``{"model": sd}``, strip a leading ``module.`` and drop ``fc.*``."""
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
