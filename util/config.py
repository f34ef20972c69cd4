"""Strict configuration: one YAML of defaults, one YAML per experiment, dotted command-line overrides.

    cfg = load_config("config/synthetic/pspnet18_kd.yaml", ["train.epochs=2", "distill.feat_loss=kl"])
    cfg.train.epochs  # 2

Rules (each violation is a :class:`SegKDError` naming the key):
- every key must exist in ``config/defaults.yaml`` (the message suggests the closest known key);
- a value must have the default's type (an int is accepted where a float is expected, never a bool where
  a number is expected); keys whose default is null take the type in :data:`NULL_TYPES`;
- overrides are ``section.key=value`` with the value parsed as YAML, so ``test.scales=[0.5,1.0]`` works.
Sections are never flattened: ``test.crop_size`` cannot touch ``train.crop_size``.
"""

from __future__ import annotations

import copy
import difflib
import os
from typing import Any

import yaml

from util.errors import SegKDError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULTS_PATH = os.path.join(REPO_ROOT, "config", "defaults.yaml")

# Types of keys whose default is null, or that accept more than one type.
NULL_TYPES: dict[str, tuple[type, ...]] = {
    "data.root": (str,),
    "data.names": (str,),
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
CHOICES: dict[str, tuple[str, ...]] = {
    "distill.feat_loss": ("none", "kl", "smoothl1"),
    "train.amp_dtype": ("bfloat16", "float16"),
    "train.optimizer": ("sgd", "adamw"),
    "train.device": ("auto", "cpu", "cuda"),
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
    if not _type_ok(value, expected):
        names = " or ".join(t.__name__ for t in expected)
        raise SegKDError(f"{source}: {key} must be {names}, got {value!r} ({type(value).__name__})")
    if value is None and key not in NULL_TYPES:
        raise SegKDError(f"{source}: {key} cannot be null")
    if key in CHOICES and value not in CHOICES[key]:
        raise SegKDError(f"{source}: {key} must be one of {', '.join(CHOICES[key])}, got {value!r}")
    if isinstance(default, float) and isinstance(value, int):
        value = float(value)
    if isinstance(default, list) and isinstance(value, list) and default:
        item_type = (float,) if isinstance(default[0], float) else (type(default[0]),)
        bad = [v for v in value if not _type_ok(v, item_type)]
        if bad:
            raise SegKDError(f"{source}: {key} items must be {item_type[0].__name__}, got {bad[0]!r}")
        value = [float(v) if item_type == (float,) else v for v in value]
    return value


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


def load_config(path: str | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the experiment file at ``path`` (may be None), then ``overrides``."""
    defaults = _flatten(_read_yaml(DEFAULTS_PATH))
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
    return Config(_unflatten(flat))


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
