"""Strict configuration: one YAML of defaults, one YAML per experiment, dotted command-line overrides.

    cfg = load_config("config/synthetic/pspnet18_kd.yaml", ["train.epochs=2", "distill.feat_loss=kl"])
    cfg.train.epochs  # 2

Rules (each violation is a :class:`SegKDError` naming the key):
- every key must exist in ``config/defaults.yaml`` (the message suggests the closest known key);
- a value must have the default's type (an int is accepted where a float is expected, never a bool where
  a number is expected); keys whose default is null take the type in :data:`NULL_TYPES`; the items of a list
  take the type of the default's items (a float written ``5e-1``, which YAML 1.1 reads as a string, is a float),
  checked before the key's rule;
- a value must satisfy its key's rule in :data:`RULES` (``train.crop_size`` at least 32, ...);
- overrides are ``section.key=value`` with the value parsed as YAML, so ``test.scales=[0.5,1.0]`` works.
Sections are never flattened: ``test.crop_size`` cannot touch ``train.crop_size``.

Every config check lives here: the per-key rules run when a config is loaded; the rules that need several
keys or the process layout run in :func:`check_training` and :func:`check_testing` before anything is
written, identically on every rank (so all ranks fail together).
"""

from __future__ import annotations

import copy
import difflib
import math
import os
from typing import Any, Callable

import yaml

from util.errors import SegKDError

# The label value of an unlabelled image's pixels (data.unlabeled_list, SSLD): the loader fills its label with it
# before the augmentation, so after it the crop's padding is data.ignore_label and the image's own pixels are this
# value. The distiller's CE ignores it; the label-free terms count it as a valid pixel. Neither a class index nor the
# ignore label may take it (check_training).
UNLABELED_LABEL = 254

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULTS_PATH = os.path.join(REPO_ROOT, "config", "defaults.yaml")

# Types of keys whose default is null, or that accept more than one type.
NULL_TYPES: dict[str, tuple[type, ...]] = {
    "data.root": (str,),
    "data.dataset": (str,),
    "data.names": (str,),
    "data.unlabeled_list": (str,),
    "model.pretrained": (bool, str),
    "teacher.checkpoint": (str,),
    "distill.teacher_cache": (str,),
    "train.iters": (int,),
    "train.stop_after": (int,),
    "train.resume": (str,),
    "output.dir": (str,),
    "test.checkpoint": (str,),
    "test.list": (str,),
    "test.out_dir": (str,),
}
# Item types of list keys whose default is an empty list; one item alone stands for a list of one.
LIST_ITEMS: dict[str, type] = {"distill.terms": str, "mutual.peers": int}
CHOICES: dict[str, tuple[str, ...]] = {
    "model.arch": ("pspnet", "deeplabv3"),
    "model.stem": ("torchvision", "semseg", "mmseg"),
    "model.dilation": ("semseg", "contract", "cirkd"),
    "model.backbone": ("resnet", "mobilenetv3_small", "mobilenetv3_large", "mobilenetv3_small_cirkd",
                       "mobilenetv3_large_cirkd"),
    "model.head": ("segkd", "cirkd"),
    "model.input": ("imagenet", "caffe"),
    "distill.kd_loss": ("kl", "dist", "kl_std", "sym_kl"),
    "distill.feat_loss": ("none", "kl", "smoothl1", "cwd", "dist", "kl_std", "sym_kl"),
    "mutual.feat_loss": ("none", "kl", "smoothl1", "cwd", "dist", "kl_std", "sym_kl"),
    "train.amp_dtype": ("bfloat16", "float16"),
    "train.optimizer": ("sgd", "adamw"),
    "train.device": ("auto", "cpu", "cuda"),
    "test.mode": ("slide", "whole"),
    "test.resize": ("long", "short"),
}

# What a value must be, beyond its type: key -> (test, what the message says it must be).
_AT_LEAST_1 = (lambda v: v is None or v >= 1, "at least 1")
# data.dataset's names: data/datasets registers them (the library floor; tests/test_datasets.py keeps the two equal).
DATASET_NAMES = ("voc2012", "cityscapes", "ade20k", "camvid")
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "data.dataset": (lambda v: v is None or v in DATASET_NAMES, f"null or one of {', '.join(DATASET_NAMES)}"),
    "data.classes": (lambda v: v >= 2, "at least 2 (classes)"),
    "data.opencv_threads": (lambda v: v >= -1, "-1 (OpenCV's default pool) or a thread count (0: one thread)"),
    "data.unlabeled_ratio": (lambda v: 0 <= v < 1, "in [0, 1): the share of each batch from data.unlabeled_list"),
    "model.layers": (lambda v: v in (18, 34, 50, 101), "one of 18, 34, 50, 101"),
    "model.dropout": (lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
    "teacher.layers": (lambda v: v in (18, 34, 50, 101), "one of 18, 34, 50, 101"),
    "distill.temperature": (lambda v: v > 0, "positive"),
    "distill.cwd_tau": (lambda v: v > 0, "positive"),
    "distill.dist_beta": (lambda v: v >= 0, "0 or more"),
    "distill.dist_gamma": (lambda v: v >= 0, "0 or more"),
    "mutual.peers": (lambda v: all(d in (18, 34, 50, 101) for d in v), "a list of depths out of 18, 34, 50, 101"),
    "mutual.temperature": (lambda v: v > 0, "positive"),
    "train.iters": _AT_LEAST_1,
    "train.stop_after": _AT_LEAST_1,
    "train.batch_size": _AT_LEAST_1,
    "train.crop_size": (lambda v: v >= 32, "at least 32 (output stride 8)"),
    "train.base_lr": (lambda v: v > 0, "positive"),
    "train.head_lr_mult": (lambda v: v > 0, "positive"),
    "train.momentum": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "train.weight_decay": (lambda v: v >= 0, "0 or more"),
    "train.power": (lambda v: v >= 0, "0 (a constant lr after the warmup) or more (the poly schedule's exponent)"),
    "train.warmup_iters": (lambda v: v >= 0, "0 (no warmup) or more"),
    "train.workers": (lambda v: v >= 0, "0 (load in the main process) or more"),
    "train.checkpoint_every": _AT_LEAST_1,
    "train.log_every": _AT_LEAST_1,
    "train.val_every": (lambda v: v >= 0, "0 (never) or more"),
    "test.scales": (lambda v: len(v) > 0 and all(s > 0 for s in v), "a non-empty list of positive scales"),
    "test.base_size": (lambda v: v >= 32, "at least 32"),
    "test.crop_size": (lambda v: v >= 32, "at least 32 (output stride 8)"),
    "test.stride_rate": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "test.workers": (lambda v: v >= 0, "0 (decode in the main process) or more"),
    "test.batch_size": (lambda v: v >= 1, "at least 1 (images evaluated together)"),
}


class Config:
    """A read-only-by-convention tree of sections with attribute access: ``cfg.train.epochs``."""

    def __init__(self, tree: dict[str, Any]):
        for key, value in tree.items():
            object.__setattr__(self, key, Config(value) if isinstance(value, dict) else value)

    def to_dict(self) -> dict[str, Any]:
        return {k: (v.to_dict() if isinstance(v, Config) else copy.deepcopy(v)) for k, v in vars(self).items()}

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    def __repr__(self) -> str:
        return f"Config({self.to_dict()!r})"


def _read_yaml(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise SegKDError(f"{path}: config file not found")
    try:
        with open(path, encoding="utf-8") as f:
            tree = yaml.safe_load(f)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise SegKDError(f"{path}:{where} is not valid YAML ({getattr(e, 'problem', e)})") from None
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise SegKDError(f"{path}: a config must be a mapping of sections, got {type(tree).__name__}")
    return tree


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _type_ok(value: Any, expected: tuple[type, ...]) -> bool:
    if value is None:
        return True
    if isinstance(value, bool):
        return bool in expected
    if isinstance(value, int) and float in expected:
        return True
    return isinstance(value, expected)


def _as_float(text: str):
    try:
        return float(text)
    except ValueError:
        return text


def _check(key: str, value: Any, defaults: dict[str, Any], source: str) -> Any:
    if key not in defaults:
        close = difflib.get_close_matches(key, list(defaults), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise SegKDError(f"{source}: unknown config key '{key}'{hint}")
    default = defaults[key]
    expected = NULL_TYPES.get(key) or (type(default),)
    if expected == (float,) and isinstance(value, str):
        value = _as_float(value)  # YAML 1.1 reads 1e6 (no dot) as a string
    if key in LIST_ITEMS and isinstance(value, LIST_ITEMS[key]):
        value = [value]  # distill.terms=fitnet is [fitnet] (what scripts/sweep.sh passes)
    if not _type_ok(value, expected):
        names = " or ".join(t.__name__ for t in expected)
        raise SegKDError(f"{source}: {key} must be {names}, got {value!r} ({type(value).__name__})")
    if value is None and key not in NULL_TYPES:
        raise SegKDError(f"{source}: {key} cannot be null")
    if key in CHOICES and value not in CHOICES[key]:
        raise SegKDError(f"{source}: {key} must be one of {', '.join(CHOICES[key])}, got {value!r}")
    if isinstance(default, list) and isinstance(value, list) and (default or key in LIST_ITEMS):
        example = default[0] if default else LIST_ITEMS[key]()
        value = _check_items(key, value, example, source)  # before RULES: a rule compares the items
    if isinstance(value, float) and not math.isfinite(value):  # nan or inf: a loss of nan at the first step otherwise
        raise SegKDError(f"{source}: {key}={value!r}: must be a finite number")
    if key in RULES and not RULES[key][0](value):
        raise SegKDError(f"{source}: {key}={value!r}: must be {RULES[key][1]}")
    if isinstance(default, float) and isinstance(value, int):
        value = float(value)
    if is_loss_weight(key) and isinstance(value, (int, float)) and value < 0:
        raise SegKDError(f"{source}: {key}={value!r}: must be 0 (the term off) or more: a loss weight")
    return value


def is_loss_weight(key: str) -> bool:
    """A loss term's weight (``distill.kd_weight``, ``train.aux_weight``, ``distill.<method>.weight``, a new
    method's too): its name ends in ``weight`` (``train.weight_decay`` does not)."""
    leaf = key.rsplit(".", 1)[-1]
    return leaf == "weight" or leaf.endswith("_weight")


def _check_items(key: str, items: list[Any], example: Any, source: str) -> list[Any]:
    """The items of a list key, each of the type of the default's first item (``5e-1`` read as a float, an
    int made a float where floats are expected); a null, a bool or a string where numbers are expected is
    refused naming the key and the item."""
    item_type = (float,) if isinstance(example, float) else (type(example),)
    if item_type == (float,):
        items = [_as_float(v) if isinstance(v, str) else v for v in items]  # YAML 1.1 reads 5e-1 as a string
    for v in items:
        if v is None or not _type_ok(v, item_type):
            raise SegKDError(f"{source}: {key} items must be {item_type[0].__name__}, got {v!r}")
        if isinstance(v, float) and not math.isfinite(v):
            raise SegKDError(f"{source}: {key} items must be finite numbers, got {v!r}")
    return [float(v) if item_type == (float,) else v for v in items]


def parse_override(text: str) -> tuple[str, Any]:
    """``'train.epochs=2'`` -> ``('train.epochs', 2)``; the value is parsed as YAML."""
    if "=" not in text:
        raise SegKDError(f"command line: override '{text}' must look like section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        raise SegKDError(f"command line: cannot parse the value of {key}: {raw!r}") from None
    return key.strip(), value


_defaults_read: dict[tuple[str, int, int], dict[str, Any]] = {}


def _defaults() -> dict[str, Any]:
    """``config/defaults.yaml`` flattened, parsed once per process and version of the file (its path, mtime and
    size): PyYAML's parser takes about 6 ms for it, which every config load paid. A deep copy each call, so a
    caller's edit of a list value never reaches the next config."""
    try:
        st = os.stat(DEFAULTS_PATH)
    except OSError:
        return _flatten(_read_yaml(DEFAULTS_PATH))  # the one-line error of a missing file
    key = (DEFAULTS_PATH, st.st_mtime_ns, st.st_size)
    if key not in _defaults_read:
        _defaults_read.clear()
        _defaults_read[key] = _flatten(_read_yaml(DEFAULTS_PATH))
    return copy.deepcopy(_defaults_read[key])


def load_config(path: str | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the experiment file at ``path`` (may be None), then ``overrides``."""
    defaults = _defaults()
    flat = dict(defaults)
    if path is not None:
        tree = _read_yaml(path)
        for section, value in tree.items():
            if not isinstance(value, dict):
                raise SegKDError(f"{path}: top-level key '{section}' must be a section (a mapping)")
        for key, value in _flatten(tree).items():
            flat[key] = _check(key, value, defaults, path)
    for text in overrides:
        key, value = parse_override(text)
        flat[key] = _check(key, value, defaults, "command line")
    _check_terms(flat, defaults, path or "command line")
    return Config(_unflatten(flat))


def _check_terms(flat: dict[str, Any], defaults: dict[str, Any], source: str) -> None:
    """``distill.terms`` names methods: each one a ``distill.<name>`` section (weight, tensor) of the defaults."""
    known = sorted({k.split(".")[1] for k in defaults if k.startswith("distill.") and k.endswith(".tensor")})
    for name in flat["distill.terms"]:
        if name not in known:
            # a new method's file without its block of defaults (a file test: this floor imports no model code)
            if (name.isidentifier() and not name.startswith("_") and name != "base"
                    and os.path.isfile(os.path.join(REPO_ROOT, "model", "methods", f"{name}.py"))):
                raise SegKDError(f"{source}: distill.terms: model/methods/{name}.py exists but config/defaults.yaml "
                                 f"has no distill.{name} block: add it (docs/ARCHITECTURE.md, Where to add)")
            raise SegKDError(f"{source}: distill.terms: unknown method {name!r}; known: {', '.join(known)}")


def _unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        node = tree
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def flat_dict(cfg: Config | dict[str, Any]) -> dict[str, Any]:
    """``{'train.epochs': 2, ...}`` of a config or its nested dict: the form used to compare two experiments."""
    return _flatten(cfg.to_dict() if isinstance(cfg, Config) else cfg)


def save_config(cfg: Config, path: str) -> None:
    """Write the resolved config as YAML (atomically)."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        yaml.safe_dump(cfg.to_dict(), f, sort_keys=False)
    os.replace(tmp, path)


def parse_cli(argv: list[str], description: str) -> tuple[Config, str]:
    """``--config FILE key=value ...`` -> (config, config path). Shared by train.py, test.py and tools."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", required=True, help="experiment YAML (over config/defaults.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.epochs=2")
    args = parser.parse_args(argv)
    return load_config(args.config, args.overrides), args.config


def check_training(cfg: Config, world_size: int, sync_bn: bool, device_type: str) -> None:
    """The rules of a training run that involve several keys or the processes. ``sync_bn``: SyncBatchNorm
    will be used (several CUDA processes and ``train.sync_bn``)."""
    t = cfg.train
    if cfg.output.dir is None:
        raise SegKDError("output.dir is not set: give the run directory, e.g. output.dir=runs/my_run")
    _need_root(cfg)
    if t.batch_size % world_size:
        raise SegKDError(f"train.batch_size={t.batch_size} is not divisible by the {world_size} processes")
    per_rank = t.batch_size // world_size
    if per_rank < 2 and not sync_bn:
        raise SegKDError(f"train.batch_size={t.batch_size} gives {per_rank} image per process; BatchNorm needs "
                         "at least 2 (or SyncBatchNorm on several GPUs)")
    if t.epochs < 1 and t.iters is None:
        raise SegKDError(f"train.epochs={t.epochs}: must be at least 1 (or set train.iters)")
    if t.amp and t.amp_dtype == "float16" and device_type != "cuda":
        raise SegKDError("train.amp_dtype=float16 needs CUDA; use bfloat16 on the CPU")
    if cfg.test.after_training and cfg.test.checkpoint is not None:
        raise SegKDError(f"test.after_training evaluates this run's final checkpoint, not test.checkpoint="
                         f"{cfg.test.checkpoint}; unset one of them")
    _check_mutual(cfg)
    _check_global_batch(cfg)
    _check_unlabeled(cfg, per_rank)


def unlabeled_per_process(ratio: float, per_rank: int) -> int:
    """How many of a process's ``per_rank`` images come from ``data.unlabeled_list`` at ``data.unlabeled_ratio``:
    ratio x per_rank rounded half up (0.5 of 8 is 4; 0.3 of 8 is 2.4, so 2; 0.25 of 2 is 0.5, so 1); the rest
    are labelled. Per process, so every process's batch has the same split."""
    return math.floor(ratio * per_rank + 0.5)


def _check_unlabeled(cfg: Config, per_rank: int) -> None:
    """SSLD's unlabelled images (``data.unlabeled_list``): a share of every batch, for the label-free distillation
    terms only, so a run needs a frozen teacher, labelled and unlabelled images in each process's batch, and a label
    value free for :data:`UNLABELED_LABEL`. (A label-using method of ``distill.terms`` is refused by
    model/distiller.py:build_terms, which knows the methods.)"""
    d = cfg.data
    if d.unlabeled_list is None:
        if d.unlabeled_ratio > 0:
            raise SegKDError(f"data.unlabeled_ratio={d.unlabeled_ratio}: data.unlabeled_list is not set, so there is "
                             "no unlabelled image to mix in; set both or neither")
        return
    if not 0 < d.unlabeled_ratio < 1:
        raise SegKDError(f"data.unlabeled_ratio={d.unlabeled_ratio}: must be in (0, 1) with data.unlabeled_list="
                         f"{d.unlabeled_list} (the share of each batch taken from it)")
    unlabeled = unlabeled_per_process(d.unlabeled_ratio, per_rank)
    if not 1 <= unlabeled < per_rank:
        raise SegKDError(f"data.unlabeled_ratio={d.unlabeled_ratio} of {per_rank} images per process "
                         f"(train.batch_size={cfg.train.batch_size}) gives {unlabeled} unlabelled and "
                         f"{per_rank - unlabeled} labelled; each batch needs at least 1 of both")
    if cfg.mutual.peers:
        raise SegKDError(f"data.unlabeled_list={d.unlabeled_list} and mutual.peers are both set: mutual learning "
                         "has no frozen teacher for the unlabelled images; unset one of them")
    if cfg.teacher.checkpoint is None:
        raise SegKDError(f"data.unlabeled_list={d.unlabeled_list} needs teacher.checkpoint: unlabelled images only "
                         "train the distillation terms")
    if d.classes > UNLABELED_LABEL or d.ignore_label == UNLABELED_LABEL:
        raise SegKDError(f"data.unlabeled_list marks unlabelled pixels with label {UNLABELED_LABEL}, which "
                         f"data.classes={d.classes} or data.ignore_label={d.ignore_label} already uses")


def _check_global_batch(cfg: Config) -> None:
    """A global-batch switch computes a batch-coupled term over every process's images: one that no term of the run
    uses is a mistake (a method without a batch-coupled term has no such key at all)."""
    d = cfg.distill
    uses_dist = "dist" in (d.kd_loss, d.feat_loss) or (bool(cfg.mutual.peers) and cfg.mutual.feat_loss == "dist")
    if d.dist_global_batch and not uses_dist:
        raise SegKDError("distill.dist_global_batch=true: no term of this run uses DIST (distill.kd_loss, "
                         "distill.feat_loss or mutual.feat_loss), the only one whose batch it switches")
    if d.cirkd.global_batch and "cirkd" not in d.terms:
        raise SegKDError(f"distill.cirkd.global_batch=true: cirkd is not in distill.terms={d.terms}")


def _check_mutual(cfg: Config) -> None:
    """Mutual learning trains every network it has: no frozen teacher, so no teacher-based distillation term."""
    if not cfg.mutual.peers:
        return
    if cfg.teacher.checkpoint is not None:
        raise SegKDError("mutual.peers and teacher.checkpoint are both set: mutual learning trains its peers without a "
                         "frozen teacher; unset one of them")
    if cfg.distill.terms:
        raise SegKDError(f"mutual.peers and distill.terms={cfg.distill.terms} are both set: the methods of "
                         "distill.terms need a frozen teacher; mutual.feat_loss compares the peers' aux logits")
    if cfg.model.backbone != "resnet":
        raise SegKDError(f"mutual.peers={cfg.mutual.peers} are ResNet depths: model.backbone={cfg.model.backbone} "
                         "cannot have peers; use model.backbone=resnet")
    if isinstance(cfg.model.pretrained, str) and any(d != cfg.model.layers for d in cfg.mutual.peers):
        raise SegKDError(f"mutual.peers={cfg.mutual.peers}: a peer of another depth than model.layers="
                         f"{cfg.model.layers} cannot start from model.pretrained={cfg.model.pretrained}")


def check_testing(cfg: Config) -> None:
    """The rules of an evaluation: a dataset, and a checkpoint to find."""
    _need_root(cfg)
    if cfg.test.checkpoint is None and cfg.output.dir is None:
        raise SegKDError("neither test.checkpoint nor output.dir is set: nothing to evaluate")


def _need_root(cfg: Config) -> None:
    if cfg.data.root is None:
        raise SegKDError("data.root is not set: give the dataset folder, e.g. data.root=datasets/voc2012")
