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
    return build_pspnet(m.layers, cfg.data.classes, pretrained=m.pretrained, weights=m.weights, dropout=m.dropout,
                        zero_init_residual=m.zero_init_residual)


def checkpoint_meta(model_cfg: Config, cfg: Config, mode: str) -> dict[str, Any]:
    """What a checkpoint says about itself, checked when it is loaded back."""
    return {"format": "segkd", "mode": mode, "layers": model_cfg.layers, "classes": cfg.data.classes}


def describe_checkpoint(meta: dict[str, Any]) -> str:
    """``'a supervised PSPNet-R50 with 21 classes'`` from a checkpoint's (or a run's) meta keys."""
    mode, layers, classes = meta.get("mode", "unknown-mode"), meta.get("layers", "?"), meta.get("classes", "?")
    return f"a {mode} PSPNet-R{layers} with {classes} classes"


def check_segkd(ckpt: dict[str, Any], path: str, role: str) -> None:
    """A checkpoint written by segkd's trainer carries the meta keys needed to rebuild its network."""
    if ckpt.get("format") != "segkd":
        raise SegKDError(f"{path}: {role} is not a segkd training checkpoint (no 'format: segkd'); "
                         "ImageNet backbones go in model.pretrained")
    missing = [k for k, kind in (("mode", str), ("layers", int), ("classes", int)) if not isinstance(ckpt.get(k), kind)]
    if missing:
        raise SegKDError(f"{path}: {role} lacks the checkpoint keys {', '.join(missing)}")


def model_from_checkpoint(path: str, classes: int, role: str = "checkpoint") -> tuple[PSPNet, dict[str, Any]]:
    """Rebuild the network a checkpoint was trained as (no ImageNet weights needed) and load it strictly."""
    ckpt = load_checkpoint(path)
    check_segkd(ckpt, path, role)
    return _rebuild(ckpt, path, classes, role), ckpt


def _rebuild(ckpt: dict[str, Any], path: str, classes: int, role: str) -> PSPNet:
    if ckpt["classes"] != classes:
        raise SegKDError(f"{path}: {role} is {describe_checkpoint(ckpt)} but data.classes={classes}")
    model = build_pspnet(ckpt["layers"], classes, pretrained=False)
    load_state_strict(model, ckpt["model"], path)
    return model


def load_teacher(cfg: Config) -> PSPNet:
    """The frozen teacher of ``teacher.checkpoint``: a supervised run of depth ``teacher.layers``.

    A distilled student, a run of another depth or class count, or a file that is not a segkd checkpoint
    is refused with a one-line SegKDError naming the file.
    """
    path = cfg.teacher.checkpoint
    if not os.path.isfile(path):
        raise SegKDError(f"{path}: teacher.checkpoint not found")
    ckpt = load_checkpoint(path)
    check_segkd(ckpt, path, "teacher.checkpoint")
    if ckpt["mode"] != "supervised":
        raise SegKDError(f"{path}: teacher.checkpoint is {describe_checkpoint(ckpt)}, not a supervised teacher")
    if ckpt["layers"] != cfg.teacher.layers:
        raise SegKDError(f"{path}: teacher.checkpoint is {describe_checkpoint(ckpt)} but "
                         f"teacher.layers={cfg.teacher.layers}")
    return _rebuild(ckpt, path, cfg.data.classes, "teacher.checkpoint")  # the file is read once
