"""The documentation names code that exists: every dotted name of a project module in backticks in README.md
and docs/*.md (``data.transforms.normalize``, ``engine.flops.gflops``) imports, or is a config key
(``data.root``, ``model.layers``)."""

import glob
import importlib
import os
import re

import pytest

from tests.conftest import REPO
from util.config import flat_dict, load_config

DOCS = ["README.md", *sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "docs", "*.md")))]
# a dotted name starting with a project package, not inside a path (docs/x.md) or a longer word
DOTTED = re.compile(r"(?<![\w./-])((?:data|engine|model|util|tools)(?:\.[A-Za-z_]\w*)+)")


def resolves(name: str) -> bool:
    """``a.b.c``: the longest importable module prefix, then attributes."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False


def named(text: str) -> list[str]:
    return [tok for span in re.findall(r"`([^`\n]+)`", text) for tok in DOTTED.findall(span)]


def test_the_check_sees_names_and_tells_them_apart():
    text = "`data.transforms.normalize` and `data.transforms.DeviceNormalize`, `model.layers`, `docs/data.md`"
    assert named(text) == ["data.transforms.normalize", "data.transforms.DeviceNormalize", "model.layers"]
    assert resolves("data.transforms.normalize") and resolves("engine.flops")
    assert not resolves("data.transforms.DeviceNormalize") and not resolves("engine.nothing_here")


@pytest.mark.parametrize("doc", DOCS)
def test_every_dotted_name_in_the_docs_exists(doc):
    keys = set(flat_dict(load_config(None)))
    with open(os.path.join(REPO, doc), encoding="utf-8") as f:
        names = named(f.read())
    missing = sorted({n for n in names if n not in keys and not resolves(n)})
    assert missing == [], f"{doc} names code that does not exist: {missing}"
