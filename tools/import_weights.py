"""Import a checkpoint the field publishes as a segkd supervised checkpoint (a teacher, or a network to test).

    python -m tools.import_weights --format semseg train_epoch_50.pth teachers/semseg_pspnet50_voc.pth --classes 21
    python -m tools.import_weights --format mmseg pspnet_r50-d8_512x512_20k_voc12aug_20200617_101958-ed5dfbd9.pth \
        teachers/mmseg_pspnet50_voc.pth --classes 21
    python -m tools.import_weights --format torchvision deeplabv3_resnet101_coco-586e9e4e.pth \
        teachers/tv_deeplabv3_r101.pth --classes 21
    python -m tools.import_weights --format cirkd deeplabv3_resnet101_citys_best_model.pth \
        teachers/cirkd_deeplabv3_r101_cityscapes.pth --classes 19

The written file works unchanged as ``teacher.checkpoint`` (with ``teacher.layers`` of its depth) and as
``test.checkpoint``: it records the architecture the weights need (``arch``, ``stem``, ``dilation``,
``align_corners``, and ``head``/``input`` where they are not the defaults), so nothing else has to be configured.
docs/VOC.md lists the published files, what their sources report and the ``test.py`` command that reproduces each
protocol; docs/USAGE.md ("Import a published teacher") CIRKD's.

Every key is mapped by an explicit rule written from the source project's model code (below, per format), the
mapped state dict must fit the network key for key and shape for shape, and only then is DST written (atomically,
never over an existing file). Keys no rule maps, keys the network needs and the file lacks, shape mismatches and a
class count other than ``--classes`` are one line naming SRC, exit status 2.

The formats (depth, 18/34/50/101, and class count are read off the file):

- ``semseg``: hszhao/semseg's PSPNet (``model/pspnet.py``), saved by its ``tool/train.py`` as
  ``{'epoch', 'state_dict', 'optimizer'}`` with DDP's ``module.`` prefix. Deep stem 64/64/128 grouped as
  ``layer0`` (Sequential indices 0/1, 3/4, 6/7), every block of layer3 dilated 2 and of layer4 4, PPM
  ``ppm.features.i`` (1x1 conv at index 1, BN at 2), upsampling with align_corners=True, ``cls`` and ``aux``
  (3x3 conv 0, BN 1, ReLU, Dropout2d, 1x1 conv 4). segkd: ``stem=semseg dilation=semseg align_corners=true``.
- ``mmseg``: mmsegmentation's ``EncoderDecoder`` with ``ResNetV1c`` + ``PSPHead`` + ``FCNHead`` (the
  ``pspnet_r*-d8`` configs), saved as ``{'meta', 'state_dict'}`` without a prefix. Deep stem 32/32/64
  ``backbone.stem.0/1/3/4/6/7``, contract dilation, align_corners=False, ``ConvModule``'s ``.conv``/``.bn``
  children. segkd: ``stem=mmseg dilation=contract align_corners=false``. mmseg's DeepLabV3 (``ASPPHead``, one
  3x3 bottleneck over the concatenated branches) has another head than segkd's DeepLabV3 and is refused.
- ``torchvision``: ``torchvision.models.segmentation.deeplabv3_resnet50/101`` (a raw state dict as torchvision
  publishes it, or ``{'model': ...}`` as its references' ``train.py`` saves), ``classifier`` = DeepLabHead,
  ``aux_classifier`` = FCNHead. segkd: ``arch=deeplabv3 stem=torchvision dilation=contract align_corners=false``.
- ``cirkd``: winycg/CIRKD's DeepLabV3 (``models/deeplabv3.py``) on its ResNetV1b ``resnet*_v1s``
  (``models/base_models/resnetv1b.py``): the published DeepLabV3-R101 teachers and DeepLabV3-R18 students, saved
  by its ``train_baseline.py`` / ``train_cirkdv2.py`` as a plain state dict (``model.module`` unwrapped first).
  Deep stem 64/64/128 under segkd's own names (``pretrained.conv1``..``bn3``), layer3/4 dilated as
  ``dilation=cirkd``, ``_DeepLabHead`` of 512 channels (``head.aspp.b0``..``b4``, ``head.aspp.project``,
  ``head.block``), ``_FCNHead`` aux of C3/4 channels (``auxlayer.block``), align_corners=True, and inputs in
  BGR minus the Caffe mean. segkd: ``arch=deeplabv3 stem=semseg dilation=cirkd align_corners=true head=cirkd
  input=caffe``. Also its MobileNetV3-Small/-Large students (``models/base_models/mobilenetv3.py`` under
  ``models/deeplabv3_mobilenetv3.py``'s ``_DeepLabHead`` or ``models/psp_mobile.py``'s ``_PSPHead``, 128 channels,
  no aux head), recognised by ``pretrained.layer0.conv.weight``: the variant read off the last layer's index
  (``layer12`` Small, ``layer16`` Large), the architecture off ``head.aspp.*`` / ``head.psp.*``. segkd:
  ``arch=deeplabv3`` or ``pspnet``, ``backbone=mobilenetv3_small_cirkd`` / ``mobilenetv3_large_cirkd`` (CIRKD's
  padding and BN, no aux head), ``align_corners=true input=caffe``; ``layers`` is recorded as 18 and unused. Its
  MobileNetV2 / MobileViT students, its ResNet PSPNet and UPerNet are refused by name.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor

from model.build import build_network, describe_checkpoint, model_from_checkpoint, network_name
from model.mobilenetv3 import cirkd_key_map
from util.checkpoint import read_torch_file, save_checkpoint
from util.errors import SegKDError

# layer3's block count and the block type give the depth (ResNet-152's 36 blocks: no segkd builder).
_DEPTHS = {(2, False): 18, (6, False): 34, (6, True): 50, (23, True): 101}


@dataclass(frozen=True)
class Format:
    """How one project saves a segmentation network: the architecture segkd rebuilds it as, the wrapper keys
    its checkpoints put the state dict under, the prefix its trainer adds, and the key rules (a regular
    expression on the whole source key, its replacement in segkd's names)."""

    name: str
    arch: dict[str, Any]
    wrappers: tuple[str, ...]
    rules: tuple[tuple[str, str], ...]
    prefix: str = ""
    refuse: tuple[tuple[str, str], ...] = ()  # (key regex, why): a recognised layout segkd cannot rebuild


_LAYERS = (r"(layer[1-4]\..+)", r"\1")
_BLOCK = r"(weight|bias|running_mean|running_var|num_batches_tracked)"


def _stem(prefix: str) -> tuple[tuple[str, str], ...]:
    """A deep stem Sequential (conv 0, BN 1, ReLU 2, conv 3, BN 4, ReLU 5, conv 6, BN 7, ...) -> conv1..bn3."""
    names = {"0": "conv1", "1": "bn1", "3": "conv2", "4": "bn2", "6": "conv3", "7": "bn3"}
    return tuple((rf"{re.escape(prefix)}\.{i}\.{_BLOCK}", rf"backbone.{name}.\1") for i, name in names.items())


def _head(src: str, dst: str, conv: str = "0", bn: str = "1", cls: str = "4") -> tuple[tuple[str, str], ...]:
    """3x3 conv + BN + ReLU + Dropout2d + 1x1 classifier, the layout of every head here."""
    return ((rf"{src}\.{conv}\.weight", f"{dst}.0.weight"), (rf"{src}\.{bn}\.{_BLOCK}", rf"{dst}.1.\1"),
            (rf"{src}\.{cls}\.(weight|bias)", rf"{dst}.4.\1"))


FORMATS: dict[str, Format] = {
    "semseg": Format(
        "semseg", {"arch": "pspnet", "stem": "semseg", "dilation": "semseg", "align_corners": True},
        wrappers=("state_dict",), prefix="module.",
        rules=(*_stem("layer0"), (_LAYERS[0], rf"backbone.{_LAYERS[1]}"),
               (rf"ppm\.features\.(\d+)\.([12])\.{_BLOCK}", r"ppm.branches.\1.\2.\3"),
               *_head("cls", "head"), *_head("aux", "aux_head"))),
    "mmseg": Format(
        "mmseg", {"arch": "pspnet", "stem": "mmseg", "dilation": "contract", "align_corners": False},
        wrappers=("state_dict",),
        rules=(*_stem("backbone.stem"), (rf"backbone\.{_LAYERS[0]}", rf"backbone.{_LAYERS[1]}"),
               (r"decode_head\.psp_modules\.(\d+)\.1\.conv\.weight", r"ppm.branches.\1.1.weight"),
               (rf"decode_head\.psp_modules\.(\d+)\.1\.bn\.{_BLOCK}", r"ppm.branches.\1.2.\2"),
               (r"decode_head\.bottleneck\.conv\.weight", "head.0.weight"),
               (rf"decode_head\.bottleneck\.bn\.{_BLOCK}", r"head.1.\1"),
               (r"decode_head\.conv_seg\.(weight|bias)", r"head.4.\1"),
               (r"auxiliary_head\.convs\.0\.conv\.weight", "aux_head.0.weight"),
               (rf"auxiliary_head\.convs\.0\.bn\.{_BLOCK}", r"aux_head.1.\1"),
               (r"auxiliary_head\.conv_seg\.(weight|bias)", r"aux_head.4.\1")),
        refuse=((r"decode_head\.(aspp_modules|image_pool)\..*",
                 "an mmseg ASPPHead (DeepLabV3): its single 3x3 bottleneck over the concatenated branches is not "
                 "segkd's DeepLabV3 head; use torchvision's deeplabv3_resnet50/101 (--format torchvision)"),)),
    "torchvision": Format(
        "torchvision", {"arch": "deeplabv3", "stem": "torchvision", "dilation": "contract", "align_corners": False},
        wrappers=("model",),
        rules=((r"backbone\.((conv1|bn1)\..+)", r"backbone.\1"),
               (rf"backbone\.{_LAYERS[0]}", rf"backbone.{_LAYERS[1]}"),
               (r"classifier\.0\.convs\.([0-4])\.(.+)", r"aspp.branches.\1.\2"),
               (r"classifier\.0\.project\.([01])\.(.+)", r"aspp.project.\1.\2"),
               *_head("classifier", "head", conv="1", bn="2"), *_head("aux_classifier", "aux_head"))),
    # CIRKD (docs/USAGE.md, "Import a published teacher"): each rule is a row of that table.
    "cirkd": Format(
        "cirkd", {"arch": "deeplabv3", "stem": "semseg", "dilation": "cirkd", "align_corners": True,
                  "head": "cirkd", "input": "caffe"},
        wrappers=(),
        rules=((rf"pretrained\.((conv[1-3]|bn[1-3])\.{_BLOCK})", r"backbone.\1"),
               (rf"pretrained\.{_LAYERS[0]}", rf"backbone.{_LAYERS[1]}"),
               (rf"head\.aspp\.b0\.([01])\.{_BLOCK}", r"aspp.branches.0.\1.\2"),
               (rf"head\.aspp\.b([1-3])\.block\.([01])\.{_BLOCK}", r"aspp.branches.\1.\2.\3"),
               (rf"head\.aspp\.b4\.gap\.([12])\.{_BLOCK}", r"aspp.branches.4.\1.\2"),
               (rf"head\.aspp\.project\.([01])\.{_BLOCK}", r"aspp.project.\1.\2"),
               *_head(r"head\.block", "head"), *_head(r"auxlayer\.block", "aux_head")),
        refuse=((r"pretrained\.(layer0|layer([5-9]|1\d)|conv1\.conv|stem|layers|features)\..*",
                 "a CIRKD MobileNetV2 / MobileViT student (its pretrained.* backbone keys, no "
                 "pretrained.layer0.conv.weight of a MobileNetV3): segkd imports CIRKD's ResNet DeepLabV3 and its "
                 "MobileNetV3 DeepLabV3 / PSPNet students only"),
                (r"head\.psp\..*", "CIRKD's ResNet PSPNet (head.psp.* on a ResNet, models/pspnet.py): segkd imports "
                 "CIRKD's ResNet DeepLabV3 and its MobileNetV3 DeepLabV3 / PSPNet students only"),
                (r"head\.(fpn_in|fpn_out|ppm_conv|ppm_last_conv|conv_last)\..*", "CIRKD's UPerNet (head.fpn_*, "
                 "models/upernet.py): segkd imports CIRKD's ResNet DeepLabV3 and MobileNetV3 students only"))),
}
# CIRKD's MobileNetV3 students: the last layer's index -> model.backbone
_CIRKD_MOBILE_VARIANTS = {12: "mobilenetv3_small_cirkd", 16: "mobilenetv3_large_cirkd"}
_CIRKD_MOBILE_HEADS = {
    # models/deeplabv3_mobilenetv3.py: the ResNet DeepLabV3's head names at 128 channels, no auxlayer
    "deeplabv3": FORMATS["cirkd"].rules[2:6] + _head(r"head\.block", "head"),
    # models/psp_mobile.py: _PyramidPooling's conv1..conv4 (1x1 conv 0, BN 1), block (3x3 conv 0, BN 1), classifier
    "pspnet": (*((rf"head\.psp\.conv{k + 1}\.0\.weight", f"ppm.branches.{k}.1.weight") for k in range(4)),
               *((rf"head\.psp\.conv{k + 1}\.1\.{_BLOCK}", rf"ppm.branches.{k}.2.\1") for k in range(4)),
               (r"head\.block\.0\.weight", "head.0.weight"), (rf"head\.block\.1\.{_BLOCK}", r"head.1.\1"),
               (r"head\.classifier\.(weight|bias)", r"head.4.\1")),
}


def cirkd_mobile_format(state: Mapping[str, Tensor], origin: str) -> Optional[Format]:
    """The format of a CIRKD MobileNetV3 student file (None for any other file): the variant from its last
    ``pretrained.layer<i>``, the architecture from its head, the backbone keys by CIRKD's module names
    (:func:`model.mobilenetv3.cirkd_key_map`), the head keys by :data:`_CIRKD_MOBILE_HEADS`."""
    if "pretrained.layer0.conv.weight" not in state:
        return None
    last = max(int(m.group(1)) for k in state if (m := re.match(r"pretrained\.layer(\d+)\.", k)))
    variant = _CIRKD_MOBILE_VARIANTS.get(last)
    if variant is None:
        raise SegKDError(f"{origin}: a CIRKD MobileNetV3 ends at pretrained.layer12 (Small) or layer16 (Large); this "
                         f"file ends at pretrained.layer{last}")
    heads = [arch for arch, prefix in (("deeplabv3", "head.aspp."), ("pspnet", "head.psp."))
             if any(k.startswith(prefix) for k in state)]
    if len(heads) != 1:
        raise SegKDError(f"{origin}: a CIRKD MobileNetV3 student has head.aspp.* (deeplabv3_mobilenet_ssseg) or "
                         f"head.psp.* (psp_mobile); this file has {'both' if heads else 'neither'}")
    arch = {"arch": heads[0], "backbone": variant, "align_corners": True, "input": "caffe"}
    with torch.device("meta"):
        net = build_network(arch, 18, 2)
    backbone = tuple((re.escape(theirs), ours) for theirs, ours in
                     cirkd_key_map(net, "backbone.", "pretrained.").items())
    return Format("cirkd", arch, wrappers=(), rules=backbone + _CIRKD_MOBILE_HEADS[heads[0]])


def read_source(path: str, fmt: Format) -> dict[str, Tensor]:
    """SRC's state dict: read with ``weights_only=True``, unwrapped from the format's wrapper key (if there),
    the format's prefix stripped (if every key has it)."""
    if not os.path.isfile(path):
        raise SegKDError(f"{path}: file not found (SRC)")
    obj = read_torch_file(path)
    if isinstance(obj, Mapping):
        for key in fmt.wrappers:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        under = f", or one under {' / '.join(repr(w) for w in fmt.wrappers)}" if fmt.wrappers else ""
        raise SegKDError(f"{path}: not a {fmt.name} checkpoint (expected a state dict{under})")
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise SegKDError(f"{path}: not a {fmt.name} checkpoint: entries that are not tensors: {_short(bad)}")
    if fmt.prefix and all(k.startswith(fmt.prefix) for k in obj):
        obj = {k[len(fmt.prefix):]: v for k, v in obj.items()}
    return dict(obj)


def map_keys(state: Mapping[str, Tensor], fmt: Format, origin: str) -> dict[str, Tensor]:
    """Every key through exactly one of the format's rules; keys no rule maps are a SegKDError listing them."""
    for pattern, why in fmt.refuse:
        if any(re.fullmatch(pattern, k) for k in state):
            raise SegKDError(f"{origin}: {why}")
    out: dict[str, Tensor] = {}
    unmapped = []
    for key, value in state.items():
        for pattern, replacement in fmt.rules:
            if re.fullmatch(pattern, key):
                out[re.sub(rf"^{pattern}$", replacement, key)] = value
                break
        else:
            unmapped.append(key)
    if unmapped:
        raise SegKDError(f"{origin}: not a {fmt.name} {fmt.arch['arch']} checkpoint: keys no rule maps: "
                         f"{_short(unmapped)}")
    return out


def infer_shape(state: Mapping[str, Tensor], origin: str, fmt: Format) -> tuple[int, int]:
    """(depth, classes) of a mapped state dict: layer3's block count and block type (18 for a MobileNetV3, whose
    depth is unused), the classifier's bias."""
    if fmt.arch.get("backbone", "resnet") != "resnet":
        return 18, _classes(state, origin, fmt)
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"backbone\.layer3\.(\d+)\.", k))}
    bottleneck = "backbone.layer1.0.conv3.weight" in state
    depth = _DEPTHS.get((len(blocks), bottleneck))
    if depth is None:
        kind = "Bottleneck" if bottleneck else "BasicBlock"
        raise SegKDError(f"{origin}: a ResNet with {len(blocks)} {kind}s in layer3 is none of ResNet-18/34/50/101")
    return depth, _classes(state, origin, fmt)


def _classes(state: Mapping[str, Tensor], origin: str, fmt: Format) -> int:
    bias = state.get("head.4.bias")
    if bias is None or bias.ndim != 1:
        raise SegKDError(f"{origin}: no classifier bias (the key mapped to head.4.bias) in this {fmt.name} file")
    return int(bias.shape[0])


def _short(keys: list[str], limit: int = 6) -> str:
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def convert(src: str, fmt_name: str, classes: Optional[int] = None) -> tuple[dict[str, Any], torch.nn.Module]:
    """The segkd checkpoint dict for SRC (nothing written) and the network holding its weights: mapped, checked
    against the network it needs and loaded into it strictly, then taken back from it (so its keys and order
    are the network's own)."""
    if fmt_name not in FORMATS:
        raise SegKDError(f"--format must be one of {', '.join(FORMATS)}, got {fmt_name!r}")
    fmt = FORMATS[fmt_name]
    state = read_source(src, fmt)
    if fmt_name == "cirkd":
        fmt = cirkd_mobile_format(state, src) or fmt
    state = map_keys(state, fmt, src)
    layers, found = infer_shape(state, src, fmt)
    if classes is not None and found != classes:
        raise SegKDError(f"{src}: the classifier has {found} classes (head.4.bias), not --classes {classes}")
    model = build_network(fmt.arch, layers, found, pretrained=False)
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state and state[k].shape != v.shape]
    problems = [f"{what}: {_short(keys)}" for what, keys in
                (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch (file vs model)", shapes))
                if keys]
    if problems:
        net = network_name({**fmt.arch, "layers": layers})
        raise SegKDError(f"{src}: does not fit a {fmt.name} {net}: {'; '.join(problems)}")
    model.load_state_dict(state, strict=True)
    ckpt = {"format": "segkd", "mode": "supervised", "layers": layers, "classes": found, **fmt.arch,
            "model": model.state_dict(),
            "imported": {"format": fmt.name, "source": os.path.abspath(src), "sha256": _sha256(src)}}
    return ckpt, model


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def import_weights(src: str, dst: str, fmt_name: str, classes: Optional[int] = None) -> dict[str, Any]:
    """Convert SRC and write DST (refused if DST exists); DST is read back through the loader test.py and the
    teacher use and must give the same logits as the converted network on a fixed input."""
    if os.path.lexists(dst):
        raise SegKDError(f"{dst}: exists; refusing to overwrite it (remove it or choose another DST)")
    ckpt, converted = convert(src, fmt_name, classes)
    save_checkpoint(ckpt, dst)
    try:
        model, _ = model_from_checkpoint(dst, ckpt["classes"], "imported checkpoint")
        x = torch.randn(1, 3, 65, 65, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            same = torch.equal(model.eval()(x, aux=False)["out"], converted.eval()(x, aux=False)["out"])
    except BaseException:
        os.remove(dst)
        raise
    if not same:
        os.remove(dst)
        raise SegKDError(f"{dst}: read back, it does not give the converted network's logits; removed")
    return ckpt


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.import_weights", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--format", required=True, choices=sorted(FORMATS), help="the project that wrote SRC")
    parser.add_argument("src", metavar="SRC", help="the published checkpoint")
    parser.add_argument("dst", metavar="DST", help="the segkd checkpoint to write (must not exist)")
    parser.add_argument("--classes", type=int, default=None, help="the class count SRC must have (data.classes)")
    args = parser.parse_args(argv)
    try:
        ckpt = import_weights(args.src, args.dst, args.format, args.classes)
    except SegKDError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    depth = f" (teacher.layers={ckpt['layers']})" if ckpt.get("backbone", "resnet") == "resnet" else ""
    print(f"wrote {args.dst}: {describe_checkpoint(ckpt)}, {len(ckpt['model'])} tensors from {args.format} "
          f"{args.src} (sha256 {ckpt['imported']['sha256'][:12]}); use it as teacher.checkpoint{depth} or "
          "test.checkpoint")
    return 0


if __name__ == "__main__":
    sys.exit(main())
