"""Models from a config or a segkd checkpoint, with the checks that keep a wrong teacher out."""

from __future__ import annotations

import os
from typing import Any

from model.pspnet import PSPNet, build_pspnet
from util.checkpoint import load_checkpoint, load_state_strict
from util.config import Config
from util.errors import SegKDError


def build_model(cfg: Config) -> PSPNet:
    """The network being trained (the student when distilling), ImageNet-initialised as configured."""
    m = cfg.model
    return build_pspnet(m.layers, cfg.data.classes, pretrained=m.pretrained, weights=m.weights, dropout=m.dropout)


def checkpoint_meta(model_cfg: Config, cfg: Config, mode: str) -> dict[str, Any]:
    """What a checkpoint says about itself, checked when it is loaded back."""
    return {"format": "segkd", "mode": mode, "layers": model_cfg.layers, "classes": cfg.data.classes}


def _describe(ckpt: dict[str, Any]) -> str:
    mode, layers, classes = ckpt.get("mode", "unknown-mode"), ckpt.get("layers", "?"), ckpt.get("classes", "?")
    return f"a {mode} PSPNet-R{layers} with {classes} classes"


def model_from_checkpoint(path: str, classes: int) -> tuple[PSPNet, dict[str, Any]]:
    """Rebuild the network a checkpoint was trained as (no ImageNet weights needed) and load it strictly."""
    ckpt = load_checkpoint(path)
    if ckpt.get("format") != "segkd":
        raise SegKDError(f"{path}: not a segkd training checkpoint (no 'format: segkd'); "
                         "ImageNet backbones go in model.pretrained")
    if ckpt["classes"] != classes:
        raise SegKDError(f"{path}: is {_describe(ckpt)} but data.classes={classes}")
    model = build_pspnet(ckpt["layers"], classes, pretrained=False)
    load_state_strict(model, ckpt["model"], path)
    return model, ckpt


def load_teacher(cfg: Config) -> PSPNet:
    """The frozen teacher of ``teacher.checkpoint``: a supervised run of depth ``teacher.layers``."""
    path = cfg.teacher.checkpoint
    if not os.path.isfile(path):
        raise SegKDError(f"{path}: teacher.checkpoint not found")
    ckpt = load_checkpoint(path)
    if ckpt.get("format") != "segkd":
        raise SegKDError(f"{path}: teacher.checkpoint is not a segkd training checkpoint (no 'format: segkd')")
    if ckpt.get("mode") != "supervised":
        raise SegKDError(f"{path}: teacher.checkpoint is {_describe(ckpt)}, not a supervised teacher")
    if ckpt.get("layers") != cfg.teacher.layers:
        raise SegKDError(f"{path}: teacher.checkpoint is {_describe(ckpt)} but teacher.layers={cfg.teacher.layers}")
    model, _ = model_from_checkpoint(path, cfg.data.classes)
    return model
