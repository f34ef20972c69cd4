"""test.py's class names: data.names must exist and have data.classes lines; null gives numbered classes."""

import importlib.util
import os

import pytest

from tests.conftest import REPO
from util.config import load_config
from util.errors import SegKDError

# test.py is not importable as "test" (the standard library owns that name): load it from its path.
_spec = importlib.util.spec_from_file_location("segkd_test_cli", os.path.join(REPO, "test.py"))
segkd_test = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(segkd_test)

CONFIG = "config/synthetic/pspnet18_baseline.yaml"


def test_names_file_of_the_right_length(tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("background\n\ncat\ndog\n")  # blank lines are skipped
    cfg = load_config(CONFIG, ["data.classes=3", f"data.names={names}"])
    assert segkd_test.class_names(cfg) == ["background", "cat", "dog"]


def test_null_gives_numbered_classes():
    cfg = load_config(CONFIG, ["data.classes=3", "data.names=null"])
    assert segkd_test.class_names(cfg) == ["class_0", "class_1", "class_2"]


def test_the_voc_names_file_has_21_names():
    cfg = load_config("config/voc2012/pspnet18_baseline.yaml")
    names = segkd_test.class_names(cfg)
    assert len(names) == 21 and names[0] == "background" and names[15] == "person"


def test_wrong_length_is_an_error_naming_the_file(tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("background\ncat\n")
    cfg = load_config(CONFIG, ["data.classes=3", f"data.names={names}"])
    with pytest.raises(SegKDError, match=r"names.txt: 2 class names for data.classes=3"):
        segkd_test.class_names(cfg)


def test_missing_file_is_an_error_naming_it(tmp_path):
    cfg = load_config(CONFIG, ["data.classes=3", f"data.names={tmp_path / 'absent.txt'}"])
    with pytest.raises(SegKDError, match=r"absent.txt: class names file not found"):
        segkd_test.class_names(cfg)


def test_a_relative_names_file_found_under_data_root_is_named_in_the_error(tmp_path):
    """tools.synthetic writes DATA/names.txt; the CPU configs' data.names is the repository's datasets/... path.
    Overriding only data.root gives an error that names the file to pass."""
    (tmp_path / "names.txt").write_text("background\ncat\ndog\n")
    cfg = load_config(CONFIG, ["data.classes=3", f"data.root={tmp_path}", "data.names=datasets/nowhere/names.txt"])
    with pytest.raises(SegKDError) as info:
        segkd_test.class_names(cfg)
    assert str(info.value).endswith(f"class names file not found (data.names); a relative data.names is under "
                                    f"the repository, not data.root: data.names={tmp_path / 'names.txt'}")
    (tmp_path / "names.txt").unlink()
    with pytest.raises(SegKDError, match=r"nowhere/names.txt: class names file not found \(data.names\)$"):
        segkd_test.class_names(cfg)
