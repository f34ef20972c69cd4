"""Models from a config or a segkd checkpoint, with the checks that keep a wrong teacher out."""

from __future__ import annotations

import os
from typing import Any, Optional

from model.backbone import DILATIONS, STEMS
from model.deeplabv3 import HEADS, build_deeplabv3
from model.inputs import INPUTS
from model.mobilenetv3 import VARIANTS
from model.pspnet import BACKBONES, Segmentor, build_pspnet
from util.checkpoint import load_checkpoint, load_state_strict
from util.config import Config
from util.errors import SegKDError

ARCHS = {"pspnet": ("PSPNet", build_pspnet), "deeplabv3": ("DeepLabV3", build_deeplabv3)}
# The architecture keys of model.* that a checkpoint records, with the value a checkpoint written before
# they existed was built with (the defaults of config/defaults.yaml).
ARCH_DEFAULTS: dict[str, Any] = {"arch": "pspnet", "stem": "torchvision", "dilation": "semseg", "align_corners": True,
                                 "backbone": "resnet", "head": "segkd", "input": "imagenet"}
TEACHER_MODES = ("supervised", "mutual")  # trained without a frozen teacher: what teacher.checkpoint takes
_ARCH_VALUES = {"arch": tuple(ARCHS), "stem": STEMS, "dilation": DILATIONS, "align_corners": (True, False),
                "backbone": BACKBONES, "head": HEADS, "input": tuple(INPUTS)}


def build_network(arch: dict[str, Any], layers: int, classes: int, **kwargs: Any) -> Segmentor:
    """``arch`` (the keys of :data:`ARCH_DEFAULTS`, an absent one at its default) on a ResNet-``layers`` or the
    MobileNetV3 ``arch["backbone"]`` names (``layers`` unused); ``kwargs`` go to the builder (``pretrained``,
    ``weights``, ``dropout``, ``zero_init_residual``)."""
    arch = arch_of(arch)  # a dict without the later keys (backbone, head, input) means their defaults
    build = ARCHS[arch["arch"]][1]
    if arch["head"] != "segkd":  # only DeepLabV3 has another head (CIRKD's widths)
        if arch["arch"] != "deeplabv3":
            raise SegKDError(f"model.head={arch['head']} is CIRKD's DeepLabV3 head: it needs model.arch=deeplabv3, "
                             f"got {arch['arch']}")
        kwargs = {**kwargs, "head": arch["head"]}
    if arch["input"] not in INPUTS:
        raise SegKDError(f"model.input must be one of {', '.join(INPUTS)}, got {arch['input']!r}")
    model = build(layers, classes, stem=arch["stem"], dilation=arch["dilation"],
                  align_corners=arch["align_corners"], backbone=arch["backbone"], **kwargs)
    model.input_transform = INPUTS[arch["input"]]()
    return model


def build_model(cfg: Config, layers: Optional[int] = None) -> Segmentor:
    """The network being trained (the student when distilling), ImageNet-initialised as configured; ``layers``:
    another depth with the same ``model.*`` keys (a peer of ``mutual.peers``)."""
    m = cfg.model
    return build_network(arch_of(m.to_dict()), layers or m.layers, cfg.data.classes, pretrained=m.pretrained,
                         weights=m.weights, dropout=m.dropout, zero_init_residual=m.zero_init_residual)


def arch_of(meta: dict[str, Any]) -> dict[str, Any]:
    """The architecture keys of a checkpoint's meta (or of ``model.*``), each absent one at its default."""
    return {k: meta.get(k, default) for k, default in ARCH_DEFAULTS.items()}


def checkpoint_meta(model_cfg: Config, cfg: Config, mode: str) -> dict[str, Any]:
    """What a checkpoint says about itself, checked when it is loaded back and enough to rebuild its network."""
    return {"format": "segkd", "mode": mode, "layers": model_cfg.layers, "classes": cfg.data.classes,
            **arch_of(model_cfg.to_dict())}


def run_meta(cfg: Config, distilled: bool) -> dict[str, Any]:
    """The meta of a run's ``last.pth`` and ``final.pth``: ``supervised``, ``distill``, or ``mutual`` with ``peers``,
    every peer's depth (peer 0, ``model.layers``, first)."""
    if cfg.mutual.peers:
        return {**checkpoint_meta(cfg.model, cfg, "mutual"), "peers": [cfg.model.layers, *cfg.mutual.peers]}
    return checkpoint_meta(cfg.model, cfg, "distill" if distilled else "supervised")


def peer_meta(run: dict[str, Any], i: int) -> dict[str, Any]:
    """The meta of peer i's own checkpoint, from the mutual run's: one network (mode ``mutual``, its depth), which
    test.py and ``teacher.checkpoint`` load; ``peer_of`` records the run's peers."""
    meta = {k: v for k, v in run.items() if k != "peers"}
    return {**meta, "layers": run["peers"][i], "peer": i, "peer_of": list(run["peers"])}


def network_name(meta: dict[str, Any]) -> str:
    """``'PSPNet-R50'``; ``'PSPNet-R18+R50'`` for a mutual run's peers; ``'DeepLabV3-MobileNetV3-Small'``."""
    backbone = arch_of(meta)["backbone"]
    if backbone in VARIANTS:
        return f"{arch_name(meta)}-{VARIANTS[backbone][2]}"
    peers = meta.get("peers")
    depths = "+".join(f"R{d}" for d in peers) if isinstance(peers, list) else f"R{meta.get('layers', '?')}"
    return f"{arch_name(meta)}-{depths}"


def describe_checkpoint(meta: dict[str, Any]) -> str:
    """``'a supervised PSPNet-R50 with 21 classes'`` (``DeepLabV3-R101``, ...) from a checkpoint's (or a run's)
    meta keys; a stem or dilation other than the default is named after the depth."""
    mode, layers, classes = meta.get("mode", "unknown-mode"), meta.get("layers", "?"), meta.get("classes", "?")
    arch = arch_of(meta)
    extras = [f"{arch['stem']} stem"] if arch["stem"] != "torchvision" else []
    extras += [f"{arch['dilation']} dilation"] if arch["dilation"] != "semseg" else []
    extras += ["align_corners false"] if arch["align_corners"] is not True else []
    extras += [f"{arch['head']} head"] if arch["head"] != "segkd" else []
    extras += [f"{arch['input']} input"] if arch["input"] != "imagenet" else []
    detail = f" ({', '.join(extras)})" if extras else ""
    return f"a {mode} {network_name({**meta, 'layers': layers})}{detail} with {classes} classes"


def arch_name(meta: dict[str, Any]) -> str:
    """``'PSPNet'`` or ``'DeepLabV3'``: the architecture a checkpoint's (or a run's) meta names."""
    arch = arch_of(meta)["arch"]
    return ARCHS[arch][0] if arch in ARCHS else str(arch)


def check_segkd(ckpt: dict[str, Any], path: str, role: str) -> None:
    """A checkpoint written by segkd's trainer carries the meta keys needed to rebuild its network."""
    if ckpt.get("format") != "segkd":
        raise SegKDError(f"{path}: {role} is not a segkd training checkpoint (no 'format: segkd'); "
                         "ImageNet backbones go in model.pretrained")
    missing = [k for k, kind in (("mode", str), ("layers", int), ("classes", int)) if not isinstance(ckpt.get(k), kind)]
    if missing:
        raise SegKDError(f"{path}: {role} lacks the checkpoint keys {', '.join(missing)}")
    # the architecture keys are optional (a checkpoint older than them was built with the defaults)
    bad = [f"{k}={ckpt[k]!r}" for k, values in _ARCH_VALUES.items()
           if k in ckpt and not any(ckpt[k] is v or (isinstance(v, str) and ckpt[k] == v) for v in values)]
    if bad:
        raise SegKDError(f"{path}: {role} has unknown architecture keys {', '.join(bad)}")
    if isinstance(ckpt.get("peers"), list):  # a mutual run's model/{last,final}.pth: every peer in one file
        peer0 = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(path))), "peer0", "model", "final.pth")
        raise SegKDError(f"{path}: {role} is a whole mutual-learning run ({describe_checkpoint(ckpt)}); give one "
                         f"peer's checkpoint, e.g. {peer0}")


def model_from_checkpoint(
    path: str, classes: Optional[int], role: str = "checkpoint",
) -> tuple[Segmentor, dict[str, Any]]:
    """Rebuild the network a checkpoint was trained as (no ImageNet weights needed) and load it strictly;
    ``classes`` must match the checkpoint's (None: take the checkpoint's own, as ``tools.export`` does)."""
    ckpt = load_checkpoint(path)
    check_segkd(ckpt, path, role)
    return _rebuild(ckpt, path, ckpt["classes"] if classes is None else classes, role), ckpt


def _rebuild(ckpt: dict[str, Any], path: str, classes: int, role: str) -> Segmentor:
    if ckpt["classes"] != classes:
        raise SegKDError(f"{path}: {role} is {describe_checkpoint(ckpt)} but data.classes={classes}")
    model = build_network(arch_of(ckpt), ckpt["layers"], classes, pretrained=False)
    load_state_strict(model, ckpt["model"], path)
    return model


def teacher_file(cfg: Config) -> str:
    """``teacher.checkpoint``, checked to be a file: train.py asks before it builds the student or starts the
    loader, so a mistyped path is the run's first and only line."""
    path = cfg.teacher.checkpoint
    if not os.path.isfile(path):
        raise SegKDError(f"{path}: teacher.checkpoint not found")
    return path


def load_teacher(cfg: Config) -> Segmentor:
    """The frozen teacher of ``teacher.checkpoint``: a supervised run of depth ``teacher.layers`` (a ResNet's; a
    MobileNetV3 has none), of the architecture (``arch``, ``stem``, ``dilation``, ``align_corners``, ``backbone``,
    ``head``, ``input``) its checkpoint records.

    A peer of a mutual run (mode ``mutual``, trained without a teacher) teaches as a supervised run does, a
    distilled run only as a teacher assistant (``teacher.assistant``, the middle of a chain). Another distilled
    run, a run of another depth or class count, or a file that is not a segkd checkpoint is refused with a
    one-line SegKDError naming the file.
    """
    path = teacher_file(cfg)
    ckpt = load_checkpoint(path)
    check_segkd(ckpt, path, "teacher.checkpoint")
    if ckpt["mode"] not in TEACHER_MODES and not (ckpt["mode"] == "distill" and cfg.teacher.assistant):
        raise SegKDError(f"{path}: teacher.checkpoint is {describe_checkpoint(ckpt)}, not a supervised teacher "
                         "(a distilled run teaches as an assistant with teacher.assistant=true)")
    if arch_of(ckpt)["backbone"] == "resnet" and ckpt["layers"] != cfg.teacher.layers:
        raise SegKDError(f"{path}: teacher.checkpoint is {describe_checkpoint(ckpt)} but "
                         f"teacher.layers={cfg.teacher.layers}")
    return _rebuild(ckpt, path, cfg.data.classes, "teacher.checkpoint")  # the file is read once
