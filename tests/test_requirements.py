"""The floors of requirements.txt, requirements-dev.txt and pyproject.toml are the versions scripts/check_floors.sh
installs and runs the fast tier with (scripts/floors.txt). This test keeps those files in step, so a floor cannot be
raised or lowered without the versions the check installs following it. It installs nothing itself (torch's floor
is gigabytes of CUDA wheels): the check is the script, and README.md says when it last ran and what it gave."""

import os
import re

from tests.conftest import REPO


def read(path: str) -> str:
    with open(os.path.join(REPO, path), encoding="utf-8") as f:
        return f.read()


def version(text: str) -> tuple[int, ...]:
    parts = tuple(int(x) for x in text.split("."))
    return parts + (0,) * (3 - len(parts))  # 2.3 == 2.3.0


def floors(path: str, pattern: str = r"(?m)^([A-Za-z0-9_.-]+)>=([0-9.]+)") -> dict[str, tuple[int, ...]]:
    return {name.lower(): version(v) for name, v in re.findall(pattern, read(path))}


def pins() -> dict[str, tuple[tuple[int, ...], str]]:
    """scripts/floors.txt: name -> (pinned version, the comment on its line)."""
    found = re.findall(r"(?m)^([A-Za-z0-9_.-]+)==([0-9.]+)[ \t]*(?:#(.*))?$", read("scripts/floors.txt"))
    return {name.lower(): (version(v), why.strip()) for name, v, why in found}


def test_requirements_and_pyproject_state_the_same_floors():
    req, dev = floors("requirements.txt"), floors("requirements-dev.txt")
    pyproject = floors("pyproject.toml", r'"([A-Za-z0-9_.-]+)>=([0-9.]+)"')
    assert req and dev and {**req, **dev} == pyproject


def test_the_floor_check_installs_every_floor():
    """Each floor pinned in scripts/floors.txt: at the floor, or above it with the reason on its line."""
    wanted = {**floors("requirements.txt"), **floors("requirements-dev.txt")}
    pinned = pins()
    assert set(pinned) == set(wanted)
    for name, floor in wanted.items():
        pin, why = pinned[name]
        assert pin >= floor, f"scripts/floors.txt pins {name} below its floor"
        assert pin == floor or why, f"scripts/floors.txt pins {name} above its floor without saying why"


def test_the_log_names_the_versions_the_check_ran_with():
    """docs/USAGE.md says how the floors are checked; the dated log says with which versions it last ran."""
    assert "scripts/check_floors.sh" in read(os.path.join("docs", "USAGE.md"))
    log = " ".join(read(os.path.join("docs", "results", "LOG.md")).split())
    text = read("scripts/floors.txt")
    for name, v in re.findall(r"(?m)^([A-Za-z0-9_.-]+)==([0-9.]+)", text):
        assert f"{name} {v}" in log, f"docs/results/LOG.md does not say {name} {v} was tested"
