"""MobileNetV3-Small / -Large backbones (torchvision's definitions) dilated to output stride 8, as CIRKD's students.

    backbone = MobileNetV3Backbone("mobilenetv3_small", pretrained=True)         # torchvision's file via the hub cache
    backbone = MobileNetV3Backbone("mobilenetv3_large", pretrained="mnv3l.pth")  # a local torchvision-layout file
    feats = backbone(images)  # {"layer3": N x 48 x H/8 x W/8, "layer4": N x 576 x H/8 x W/8} for Small

What CIRKD builds (winycg/CIRKD, read at its commit dab64db):
- ``models/base_models/mobilenetv3.py`` (sssegmentation's MobileNetV3, by Zhenchao Jin): the same blocks as
  torchvision's (kernel, expansion, width, SE, activation and stride of each), built at ``outstride=8`` by default
  and nothing passes another. The stride-2 block entering 1/16 (Small ``layer4``, Large ``layer7``) and the one
  entering 1/32 (Small ``layer9``, Large ``layer13``) lose their stride; every block from the first to the end of
  the 1/16 stage gets its depthwise conv at dilation 2, every block of the 1/32 stage at dilation 4 (the first
  block of each stage included, as torchvision's ``dilated=True`` does for its last stage); the last 1x1 conv
  (576 / 960 channels) is the only output (``forward`` returns ``x``; ``out_indices`` is unused).
- ``models/psp_mobile.py`` (``--model psp_mobile``): PSPNet's pyramid pooling on those 576 / 960 channels (four
  branches of C/4, concatenated with the input: 2C), then a 3x3 conv to 128 channels + BN + ReLU + Dropout(0.1)
  and the classifier. ``models/deeplabv3_mobilenetv3.py`` (``--model deeplabv3_mobilenet_ssseg``): ASPP at rates
  12/24/36 with image pooling, every branch and the projection at 128 channels, then a 3x3 conv at 128 + BN +
  ReLU + Dropout(0.1) and the classifier. Neither has an auxiliary head; both return (logits, the 128-channel
  feature before the classifier), which CIRKD's feature terms distil (our ``out_feat``).
- ImageNet weights: its scripts pass mmseg's ``mobilenet_v3_small-47085aa1.pth`` / ``mobilenet_v3_large-bc2c3fd3.pth``
  (``--pretrained-base``), loaded with ``strict=False``. Here the weights are torchvision's own files
  (``MobileNet_V3_Small_Weights`` / ``MobileNet_V3_Large_Weights``) loaded strictly: the same architecture, another
  ImageNet training, so a student here starts from other numbers than CIRKD's.
- Where CIRKD's network computes otherwise than torchvision's (``models/base_models/irconv.py``): its stride-2 convs
  (the stem, the stride-2 depthwise convs) pad TensorFlow's "same" way (``AdptivePaddingConv2d``: on an even size,
  nothing before and one after) where torchvision pads k // 2 on both sides, and its BatchNorms keep PyTorch's eps
  1e-5 where torchvision's MobileNetV3 has 1e-3 (and BN momentum 0.1 where torchvision's has 0.01). Its module
  names differ too (``layer<i>.expand_conv`` / ``depthwise_conv`` / ``se.conv1, conv2`` / ``linear_conv`` against
  ``features.<i>.block.<j>``; :func:`cirkd_names`). Its activations are the same functions (hard-swish
  ``x * relu6(x + 3) / 6``, the SE gate's hard-sigmoid ``clamp((x + 3) / 6, 0, 1)``, ReLU).

``mobilenetv3_small_cirkd`` / ``mobilenetv3_large_cirkd`` (``model.backbone``) is CIRKD's network: the same modules
and names as above (so the same torchvision file loads), its stride-2 convs padding CIRKD's "same" way
(:class:`SamePadConv2d`), every BatchNorm at eps 1e-5 and momentum 0.1; with CIRKD's heads
(model/pspnet.py, model/deeplabv3.py: element-wise Dropout) and no aux head, as CIRKD's, so a CIRKD student file
(``tools.import_weights --format cirkd``) gives CIRKD's logits. ``model.pretrained=PATH`` also reads an ImageNet
file in CIRKD's (mmseg's) layout, ``layer<i>.*`` with or without a ``backbone.`` prefix, by the same names.

What segkd adds (ours, not CIRKD's) to ``mobilenetv3_small`` / ``mobilenetv3_large``: the aux head on ``layer3``
that every segkd segmentor has, at 128 channels (torchvision's ``deeplabv3_mobilenet_v3_large`` puts its aux head
on the first 1/8 block, 40 channels; CIRKD has none: ``train.aux_weight=0`` trains without it, and evaluation and
export never run it). The ``_cirkd`` variants have none at all.

The named tensors (torchvision's ``features`` index whose output each is; a stage ends where the next stride-2
block, torchvision's ``_is_cn``, begins):

    name     Small: index, channels   Large: index, channels   stride   ResNet analogue
    layer1   1, 16                    3, 24                    1/4      layer1 (end of the 1/4 stage)
    layer2   3, 24                    6, 40                    1/8      layer2
    layer3   8, 48                    12, 112                  1/8      layer3 (1/16 stage, dilated 2): aux head
    layer4   12, 576                  16, 960                  1/8      layer4 (1/32 stage, dilated 4 + last 1x1
                                                                        conv): the PPM / ASPP input, CIRKD's c4

Every size is rounded as a ResNet's (3x3 / 5x5 convs at stride 2 with padding k // 2 give ceil(n / 2)), so a
MobileNetV3 student's tensors have the spatial size of a dilated ResNet teacher's at every name (65 -> 17 at
layer1, 9 at layer2..layer4; 473 -> 119, 60).

The key map of an ImageNet file: torchvision's ``features.<i>.*`` -> ``features.<i>.*`` (the backbone keeps the
module), ``classifier.0/3.{weight,bias}`` (the ImageNet classifier) dropped; any other key is an error.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Union

import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.ops.misc import SqueezeExcitation

from model.backbone import _read_file, _short_list, hub_state_dict
from util.errors import SegKDError

# name -> (torchvision builder, weights enum, label)
VARIANTS = {
    "mobilenetv3_small": (torchvision.models.mobilenet_v3_small, torchvision.models.MobileNet_V3_Small_Weights,
                          "MobileNetV3-Small"),
    "mobilenetv3_large": (torchvision.models.mobilenet_v3_large, torchvision.models.MobileNet_V3_Large_Weights,
                          "MobileNetV3-Large"),
    # CIRKD's own network (its padding and BatchNorm, no aux head): the module docstring
    "mobilenetv3_small_cirkd": (torchvision.models.mobilenet_v3_small, torchvision.models.MobileNet_V3_Small_Weights,
                                "MobileNetV3-Small (CIRKD's)"),
    "mobilenetv3_large_cirkd": (torchvision.models.mobilenet_v3_large, torchvision.models.MobileNet_V3_Large_Weights,
                                "MobileNetV3-Large (CIRKD's)"),
}
CIRKD_VARIANTS = ("mobilenetv3_small_cirkd", "mobilenetv3_large_cirkd")  # no aux head in their segmentors
_CLASSIFIER_KEYS = ("classifier.0.weight", "classifier.0.bias", "classifier.3.weight", "classifier.3.bias")
# the dilation of the 1/16 and the 1/32 stage at each output stride (16: torchvision's ``dilated=True``, the 1/16
# stage as built)
_STAGE_DILATION = {8: (2, 4), 16: (None, 2)}

StateSource = Union[str, Mapping[str, Tensor]]


class MobileNetV3Backbone(nn.Module):
    """torchvision's MobileNetV3 ``features`` (no classifier), dilated to ``output_stride``.

    Args:
        variant: ``"mobilenetv3_small"`` or ``"mobilenetv3_large"``.
        pretrained: False/None (random init, torchvision's), True (torchvision's ImageNet file named by
            ``weights``, from the hub cache) or the path of a torchvision-layout state dict.
        weights: a member of torchvision's ``MobileNet_V3_Small_Weights`` / ``MobileNet_V3_Large_Weights``.
        zero_init_residual: zero the last BatchNorm's weight of every block with a residual connection (random
            init only), as ResNet's option.
        output_stride: 8 (CIRKD's: both last stages dilated) or 16 (the last stage only, as torchvision's
            ``dilated=True``; segkd's heads and teachers are at 8, so the config has no key for it).

    Attributes:
        channels: ``{"layer1": C1, ..., "layer4": C4}`` (the module docstring's table).
        taps: ``{"layer1": i1, ..., "layer4": i4}``, the ``features`` index whose output each name is.
    """

    def __init__(self, variant: str, pretrained: bool | str | None = False, weights: str = "IMAGENET1K_V1",
                 zero_init_residual: bool = False, output_stride: int = 8):
        super().__init__()
        if variant not in VARIANTS:
            raise SegKDError(f"model.backbone must be one of resnet, {', '.join(VARIANTS)}, got {variant!r}")
        if output_stride not in _STAGE_DILATION:
            raise SegKDError(f"MobileNetV3 output stride must be 8 or 16, got {output_stride!r}")
        builder, enum, self.label = VARIANTS[variant]
        self.features = builder(weights=None).features
        down = [i for i, block in enumerate(self.features) if getattr(block, "_is_cn", False)]  # 1/4 .. 1/32
        self.taps = {"layer1": down[1] - 1, "layer2": down[2] - 1, "layer3": down[3] - 1,
                     "layer4": len(self.features) - 1}
        self.channels = {name: _out_channels(self.features[i]) for name, i in self.taps.items()}
        d16, d32 = _STAGE_DILATION[output_stride]
        for i in range(down[2] if d16 else down[3], len(self.features)):
            _dilate(self.features[i], d16 if i < down[3] else d32)
        self.cirkd = variant in CIRKD_VARIANTS
        if self.cirkd:
            _cirkd_convention(self.features)
        if zero_init_residual:
            for block in self.features:
                if getattr(block, "use_res_connect", False):
                    nn.init.zeros_(block.block[-1][1].weight)  # the projection's BatchNorm: the block starts as x
        if pretrained is True:
            if weights not in enum.__members__:
                raise SegKDError(f"model.weights: {weights!r} is not a {self.label} weight set; valid: "
                                 f"{', '.join(enum.__members__)}")
            load_mobilenet_weights(self, hub_state_dict(enum[weights].url), f"ImageNet {self.label}")
        elif isinstance(pretrained, str):
            if not pretrained:
                raise SegKDError("model.pretrained: empty path (use false for random init)")
            load_mobilenet_weights(self, pretrained)
        elif pretrained not in (False, None):
            raise SegKDError(f"model.pretrained must be false, true or a path, got {pretrained!r}")

    def forward(self, x: Tensor, keep: Collection[str] = ()) -> dict[str, Tensor]:
        """x: N x 3 x H x W -> {"layer3": N x C3 x h x w, "layer4": N x C4 x h x w}, h = H/8 rounded up as a
        ResNet's; plus "layer1" (N x C1 x H/4 x W/4) and "layer2" (N x C2 x h x w) when named in ``keep``."""
        wanted = {i: name for name, i in self.taps.items() if name in ("layer3", "layer4") or name in keep}
        out = {}
        for i, block in enumerate(self.features):
            x = block(x)
            if i in wanted:
                out[wanted[i]] = x
        return out


def _out_channels(block: nn.Module) -> int:
    """Output channels of a ``features`` entry: its last conv's."""
    return [m for m in block.modules() if isinstance(m, nn.Conv2d) and m.groups == 1][-1].out_channels


def _dilate(block: nn.Module, dilation: int) -> None:
    """Remove the stride of a ``features`` block and dilate its depthwise conv (the only conv wider than 1x1),
    padding (k - 1) / 2 * dilation so the size is kept; 1x1 convs (expansion, SE, projection, the last conv) are
    unchanged by dilation and left as they are."""
    for conv in block.modules():
        if isinstance(conv, nn.Conv2d) and conv.kernel_size[0] > 1:
            k = conv.kernel_size[0]
            conv.stride, conv.dilation = (1, 1), (dilation, dilation)
            conv.padding = ((k - 1) // 2 * dilation,) * 2


class SamePadConv2d(nn.Conv2d):
    """A conv padding TensorFlow's "same" way, as CIRKD's ``AdptivePaddingConv2d``: the output is ceil(n / stride)
    and the total padding (out - 1) * stride + (k - 1) * dilation + 1 - n is split with the smaller half before
    (on an even size at stride 2: nothing before, one after for a 3x3). ``padding`` is 0; the parameters and their
    names are nn.Conv2d's."""

    def forward(self, x: Tensor) -> Tensor:
        # total = (k - 1) * d - (n - 1) % s: the formula above without max(.., 0), >= 0 for every conv this pads
        # (k > 1, (k - 1) * d >= s - 1); no Python branch on the size, so a traced or exported network keeps it
        # a function of the input's size
        (top, bottom), (left, right) = (
            (total // 2, total - total // 2) for total in
            ((k - 1) * d - (n - 1) % s for n, k, s, d in zip(x.shape[-2:], self.kernel_size, self.stride,
                                                               self.dilation)))
        return self._conv_forward(F.pad(x, [left, right, top, bottom]), self.weight, self.bias)


def _cirkd_convention(features: nn.Sequential) -> None:
    """CIRKD's arithmetic on torchvision's modules: every conv still at stride 2 (after the dilation) becomes a
    :class:`SamePadConv2d` holding the same parameters, every BatchNorm eps 1e-5 and momentum 0.1 (PyTorch's
    defaults, CIRKD's ``nn.BatchNorm2d`` / ``SyncBatchNorm``)."""
    for name, conv in list(features.named_modules()):
        if isinstance(conv, nn.Conv2d) and conv.stride != (1, 1):
            assert all((k - 1) * d >= s - 1 for k, s, d in zip(conv.kernel_size, conv.stride, conv.dilation))
            same = SamePadConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, 0,
                                 conv.dilation, conv.groups, conv.bias is not None)
            same.weight, same.bias = conv.weight, conv.bias
            parent, _, child = name.rpartition(".")
            setattr(features.get_submodule(parent) if parent else features, child, same)
    for bn in features.modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.eps, bn.momentum = 1e-5, 0.1


def cirkd_names(features: nn.Sequential) -> dict[str, str]:
    """The module names of CIRKD's MobileNetV3 (``models/base_models/mobilenetv3.py``, ``irconv.py``) for this
    backbone's: ``features.<i>.<j>`` -> ``layer<i>.{conv,bn}`` for the stem (i = 0) and the last 1x1 conv;
    in a block, ``features.<i>.block.<j>.{0,1}`` -> ``layer<i>.<role>.{conv,bn}``, the role ``expand_conv`` (a
    1x1 conv before the depthwise one), ``depthwise_conv`` or ``linear_conv`` (the last), and
    ``features.<i>.block.<j>.fc1/fc2`` (the SE's) -> ``layer<i>.se.conv1/conv2.conv``. Parameter and buffer
    names follow unchanged (``weight``, ``running_mean``, ...)."""
    names, last = {}, len(features) - 1
    for i, block in enumerate(features):
        if i in (0, last):
            names.update({f"features.{i}.0": f"layer{i}.conv", f"features.{i}.1": f"layer{i}.bn"})
            continue
        parts = list(block.block)
        seen_depthwise = False
        for j, part in enumerate(parts):
            here = f"features.{i}.block.{j}"
            if isinstance(part, SqueezeExcitation):
                names.update({f"{here}.fc1": f"layer{i}.se.conv1.conv", f"{here}.fc2": f"layer{i}.se.conv2.conv"})
                continue
            if part[0].groups > 1:
                role, seen_depthwise = "depthwise_conv", True
            else:
                role = "linear_conv" if seen_depthwise else "expand_conv"
            names.update({f"{here}.0": f"layer{i}.{role}.conv", f"{here}.1": f"layer{i}.{role}.bn"})
    return names


def cirkd_key_map(module: nn.Module, prefix: str = "", cirkd_prefix: str = "") -> dict[str, str]:
    """CIRKD's key -> segkd's key for every tensor of ``module``'s state dict whose name is
    ``<prefix>features.*`` (a :class:`MobileNetV3Backbone` at ``prefix``), CIRKD's under ``cirkd_prefix``."""
    backbone = module.get_submodule(prefix.rstrip(".")) if prefix else module
    names = cirkd_names(backbone.features)
    out = {}
    for key in backbone.state_dict():
        owner, _, tensor = key.rpartition(".")
        out[f"{cirkd_prefix}{names[owner]}.{tensor}"] = f"{prefix}{key}"
    return out


def load_mobilenet_weights(module: MobileNetV3Backbone, source: StateSource, origin: str | None = None) -> None:
    """Load a torchvision MobileNetV3 state dict into ``module`` strictly (all keys, all shapes).

    ``source``: a state dict or its path (raw, or wrapped in a ``state_dict`` / ``model`` entry; a leading
    ``module.`` is stripped). The key map: ``features.*`` as they are, ``classifier.*`` dropped. A missing key
    (BatchNorm's ``num_batches_tracked`` excepted), an unexpected key or a shape mismatch (a ResNet's file, the
    other variant's) is one SegKDError naming the file; ``module`` is then left untouched.
    """
    if isinstance(source, str):
        origin = origin or source
        source = _read_file(source)
    origin = origin or "backbone weights"
    for wrapper in ("state_dict", "model"):
        if isinstance(source, Mapping) and isinstance(source.get(wrapper), Mapping):
            source = source[wrapper]
            break
    if not isinstance(source, Mapping):
        raise SegKDError(f"{origin}: expected a state dict, got {type(source).__name__}")
    state = {}
    for key, value in source.items():
        if not isinstance(value, Tensor):
            raise SegKDError(f"{origin}: entry {key!r} is not a tensor; expected a state dict")
        key = key.removeprefix("module.")
        if key not in _CLASSIFIER_KEYS:
            state[key] = value
    if module.cirkd and any(k.startswith(("layer0.", "backbone.layer0.")) for k in state):
        # CIRKD's (mmseg's) layout, e.g. its mobilenet_v3_small-47085aa1.pth: renamed by CIRKD's module names
        names = cirkd_key_map(module)
        state = {names.get(k.removeprefix("backbone."), k): v for k, v in state.items()}
    expected = module.state_dict()
    # BatchNorm's num_batches_tracked is absent from torchvision's older files; load_state_dict fills it
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}" for k, v in state.items()
             if k in expected and v.shape != expected[k].shape]
    problems = [f"missing keys: {_short_list(missing)}"] if missing else []
    problems += [f"unexpected keys: {_short_list(unexpected)}"] if unexpected else []
    problems += [f"shape mismatch (file vs model): {_short_list(wrong, 5)}"] if wrong else []
    if problems:
        cirkd = f" or CIRKD's (layer0..layer{len(module.features) - 1})" if module.cirkd else ""
        raise SegKDError(f"{origin}: {'; '.join(problems)}; expected torchvision's {module.label} ImageNet weights "
                         f"(features.0..features.{len(module.features) - 1}, classifier.*){cirkd} for model.backbone")
    module.load_state_dict(state, strict=True)


__all__ = ["CIRKD_VARIANTS", "MobileNetV3Backbone", "SamePadConv2d", "VARIANTS", "cirkd_key_map", "cirkd_names",
           "load_mobilenet_weights"]
