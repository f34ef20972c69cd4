"""Strict config loading: defaults + experiment + dotted overrides, errors that name the key."""

import re

import pytest

from util.config import flat_dict, load_config
from util.errors import SegKDError


def write(tmp_path, text, name="exp.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_defaults_experiment_and_overrides_merge(tmp_path):
    path = write(tmp_path, "train:\n  epochs: 3\nmodel:\n  layers: 50\n")
    cfg = load_config(path, ["train.epochs=7", "test.scales=[0.5, 1]", "distill.feat_loss=kl"])
    assert cfg.train.epochs == 7
    assert cfg.model.layers == 50
    assert cfg.test.scales == [0.5, 1.0] and all(isinstance(s, float) for s in cfg.test.scales)
    assert cfg.distill.feat_loss == "kl"
    assert cfg.train.base_lr == 0.01  # untouched default


def test_null_defaults_can_be_overridden(tmp_path):
    cfg = load_config(None, ["teacher.checkpoint=a/b.pth", "train.iters=5", "output.dir=runs/x"])
    assert cfg.teacher.checkpoint == "a/b.pth" and cfg.train.iters == 5 and cfg.output.dir == "runs/x"
    assert load_config(None, ["model.pretrained=weights/r18.pth"]).model.pretrained == "weights/r18.pth"
    assert load_config(None, ["model.pretrained=true"]).model.pretrained is True


def test_int_accepted_for_float_and_converted():
    cfg = load_config(None, ["train.base_lr=1", "distill.temperature=4"])
    assert cfg.train.base_lr == 1.0 and isinstance(cfg.train.base_lr, float)


@pytest.mark.parametrize("override, culprit", [
    ("train.epoch=2", "did you mean train.epochs"),
    ("train.epochs=2.5", "train.epochs must be int"),
    ("train.epochs=true", "train.epochs must be int"),
    ("train.amp=1", "train.amp must be bool"),
    ("distill.feat_loss=mse", "distill.feat_loss must be one of"),
    ("train.crop_size=null", "train.crop_size cannot be null"),
    ("nosection.key=1", "unknown config key 'nosection.key'"),
    ("train.epochs", "must look like section.key=value"),
    ("train.base_lr=-0.1", r"train.base_lr=-0.1: must be positive"),  # torch's own ValueError traceback otherwise
    ("train.weight_decay=-1", r"train.weight_decay=-1: must be 0 or more"),
    ("train.momentum=1", r"train.momentum=1: must be in \[0, 1\)"),
    ("train.head_lr_mult=0", r"train.head_lr_mult=0: must be positive"),
    ("train.power=-1", r"train.power=-1: must be 0"),
])
def test_bad_overrides_name_the_key(override, culprit):
    with pytest.raises(SegKDError, match=culprit):
        load_config(None, [override])


def test_bad_files_name_the_file(tmp_path):
    with pytest.raises(SegKDError, match="missing.yaml: config file not found"):
        load_config(str(tmp_path / "missing.yaml"))
    bad = write(tmp_path, "train:\n  epochs: [1\n", "bad.yaml")
    with pytest.raises(SegKDError, match="bad.yaml"):
        load_config(bad)
    unknown = write(tmp_path, "train:\n  epocs: 2\n", "unknown.yaml")
    with pytest.raises(SegKDError, match=r"unknown.yaml: unknown config key 'train.epocs' \(did you mean train.epochs"):
        load_config(unknown)
    flat = write(tmp_path, "epochs: 2\n", "flat.yaml")
    with pytest.raises(SegKDError, match="flat.yaml: top-level key 'epochs' must be a section"):
        load_config(flat)


def test_sections_are_not_flattened():
    cfg = load_config(None, ["test.crop_size=97"])
    assert cfg.test.crop_size == 97 and cfg.train.crop_size == 473


def test_every_shipped_config_loads():
    import glob

    paths = sorted(glob.glob("config/*/*.yaml"))
    assert len(paths) >= 10
    for path in paths:
        cfg = load_config(path)
        assert cfg.output.dir is not None, path
        assert (cfg.teacher.checkpoint is not None) == ("kd" in path), path
        assert flat_dict(cfg)["data.classes"] >= 2


# ---------------------------------------------------------------- list keys (found in config/defaults.yaml)
def list_keys():
    from util.config import DEFAULTS_PATH, _flatten, _read_yaml

    keys = sorted(k for k, v in _flatten(_read_yaml(DEFAULTS_PATH)).items() if isinstance(v, list) and v)
    assert keys, "config/defaults.yaml has no list key: these tests would test nothing"
    return keys


def item_type(key):
    from util.config import DEFAULTS_PATH, _flatten, _read_yaml

    return type(_flatten(_read_yaml(DEFAULTS_PATH))[key][0])


LIST_KEYS = list_keys()


@pytest.mark.parametrize("key", LIST_KEYS)
@pytest.mark.parametrize("where", ["command line", "file"])
def test_list_key_refuses_a_string_item_in_one_line(key, where, tmp_path):
    if item_type(key) is str:
        pytest.skip(f"{key}: a string is a valid item")
    section, leaf = key.split(".")
    path = write(tmp_path, f"{section}:\n  {leaf}: [1, a]\n") if where == "file" else None
    overrides = [] if where == "file" else [f"{key}=[1,a]"]
    source = path if where == "file" else "command line"
    with pytest.raises(SegKDError) as err:
        load_config(path, overrides)
    assert str(err.value) == f"{source}: {key} items must be {item_type(key).__name__}, got 'a'"


@pytest.mark.parametrize("key", LIST_KEYS)
@pytest.mark.parametrize("where", ["command line", "file"])
def test_list_key_reads_an_exponent_float(key, where, tmp_path):
    """YAML 1.1 reads 5e-1 (no dot) as a string: a float item is converted like a single float key."""
    if item_type(key) is str:
        pytest.skip(f"{key}: '5e-1' is a valid string item")
    section, leaf = key.split(".")
    path = write(tmp_path, f"{section}:\n  {leaf}: [5e-1, 1]\n") if where == "file" else None
    overrides = [] if where == "file" else [f"{key}=[5e-1,1]"]
    if item_type(key) is float:
        value = flat_dict(load_config(path, overrides))[key]
        assert value == [0.5, 1.0] and all(type(v) is float for v in value)
    else:
        with pytest.raises(SegKDError, match=f"{key} items must be {item_type(key).__name__}, got '5e-1'"):
            load_config(path, overrides)


@pytest.mark.parametrize("key", LIST_KEYS)
def test_list_key_empty_list_follows_its_rule(key):
    from util.config import RULES

    if key in RULES and "non-empty" in RULES[key][1]:
        with pytest.raises(SegKDError, match=rf"^command line: {key}=\[\]: must be {RULES[key][1]}$"):
            load_config(None, [f"{key}=[]"])
    else:
        assert flat_dict(load_config(None, [f"{key}=[]"]))[key] == []


@pytest.mark.parametrize("key", LIST_KEYS)
@pytest.mark.parametrize("item", ["null", "true", "[1]"])
def test_list_key_refuses_null_bool_and_nested_items(key, item):
    with pytest.raises(SegKDError, match=f"^command line: {key} items must be "):
        load_config(None, [f"{key}=[{item}]"])


@pytest.mark.slow
def test_bad_list_item_on_the_real_command_line_is_one_line():
    """train.py and test.py (concurrently: each is mostly imports): exit 2, the one line, no traceback."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.conftest import run_cli

    key = next(k for k in LIST_KEYS if item_type(k) is float)  # not distill.afd.tensor, a list of names
    args = ["--config", "config/synthetic/pspnet18_baseline.yaml", f"{key}=[5e-1,a]"]
    with ThreadPoolExecutor(2) as pool:
        results = dict(zip(("train.py", "test.py"), pool.map(lambda s: run_cli(s, *args, timeout=120),
                                                            ("train.py", "test.py"))))
    for script, r in results.items():
        assert r.returncode == 2, script + ": " + r.stderr[-2000:]
        assert "Traceback" not in r.stderr, script
        assert r.stderr.strip().splitlines() == [f"error: command line: {key} items must be float, got 'a'"], script


def test_defaults_are_read_once_copied_each_time_and_reread_when_the_file_changes(tmp_path, monkeypatch):
    import util.config as uc

    first = load_config(None)
    first.test.scales.append(2.0)  # a caller's edit of a list value
    assert load_config(None).test.scales == [1.0]
    edited = tmp_path / "defaults.yaml"
    with open(uc.DEFAULTS_PATH, encoding="utf-8") as f:
        text = f.read()
    edited.write_text(text)
    monkeypatch.setattr(uc, "DEFAULTS_PATH", str(edited))
    assert load_config(None).train.iters == first.train.iters
    edited.write_text(text.replace("  iters:", "  iters: 7 #", 1))  # another size: read again
    assert load_config(None).train.iters == 7
    edited.unlink()
    with pytest.raises(SegKDError, match="defaults.yaml: config file not found"):
        load_config(None)


def test_a_loss_weight_below_zero_or_any_float_that_is_not_finite_is_one_line(tmp_path):
    """Every weight of a loss term (a key ending in ``weight``: distill.kd_weight, train.aux_weight, any method's
    distill.<name>.weight, a new method's too) is 0 (off) or more, and no float is nan or inf: such a run would
    train in the wrong direction or stop at its first step with a loss of nan naming neither the key nor the term."""
    from util.config import is_loss_weight

    weights = sorted(k for k in flat_dict(load_config(None)) if is_loss_weight(k))
    assert {"distill.kd_weight", "train.aux_weight", "distill.at.weight", "distill.rkd.angle_weight",
            "mutual.weight"} <= set(weights) and not is_loss_weight("train.weight_decay")
    for key in weights:
        with pytest.raises(SegKDError, match=rf"^command line: {re.escape(key)}=-0.5: must be 0 \(the term off\)"):
            load_config(None, [f"{key}=-0.5"])
        assert flat_dict(load_config(None, [f"{key}=0"]))[key] == 0.0
    for value in ("nan", "inf", "-inf"):
        with pytest.raises(SegKDError, match=rf"train.base_lr={value}: must be a finite number"):
            load_config(None, [f"train.base_lr={value}"])
    with pytest.raises(SegKDError, match=r"test.scales items must be finite numbers, got inf"):
        load_config(None, ["test.scales=[1.0,.inf]"])
    path = tmp_path / "c.yaml"
    path.write_text("distill:\n  fitnet: {weight: .nan}\n")
    with pytest.raises(SegKDError, match=r"c.yaml: distill.fitnet.weight=nan: must be a finite number"):
        load_config(str(path))
