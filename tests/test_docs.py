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


LINK = re.compile(r"\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor of a markdown heading: lower case, markup and punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def anchors(path: str) -> set[str]:
    with open(path, encoding="utf-8") as f:
        return {slug(line.lstrip("#")) for line in f if re.match(r"#{1,6} ", line)}


def test_slug_is_githubs():
    assert slug(" 2b. Published teachers: download, import, check") == "2b-published-teachers-download-import-check"
    assert slug(" What `make demo` prints") == "what-make-demo-prints"
    assert slug(" The instrument: every row over paired seeds (`SCALE=cpu-paired`)") == \
        "the-instrument-every-row-over-paired-seeds-scalecpu-paired"


@pytest.mark.parametrize("doc", DOCS + ["docs/results/LOG.md"])
def test_every_relative_link_reaches_a_file_and_its_heading(doc):
    """The README is a map into docs/: a link whose file or section is gone is caught here, not by a reader."""
    with open(os.path.join(REPO, doc), encoding="utf-8") as f:
        links = LINK.findall(f.read())
    broken = []
    for link in links:
        if re.match(r"[a-z]+://", link):
            continue
        target, _, anchor = link.partition("#")
        path = os.path.normpath(os.path.join(REPO, os.path.dirname(doc), target)) if target else os.path.join(REPO, doc)
        if not os.path.exists(path):
            broken.append(link)
        elif anchor and path.endswith(".md") and anchor not in anchors(path):
            broken.append(link)
    assert broken == [], f"{doc} links to what does not exist: {broken}"
