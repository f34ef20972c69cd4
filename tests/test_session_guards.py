"""tests/conftest.py's guards of a whole session: a disk that cannot hold the session's checkpoints stops it before
the first test, in one line, and pyproject.toml keeps only failures' temporary folders and ends a hung test."""

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_a_disk_too_full_stops_the_session_in_one_line(tmp_path):
    env = {**os.environ, "SEGKD_TEST_MIN_FREE_GB": "1e9", "TMPDIR": str(tmp_path)}  # no disk has 10^18 bytes free
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_requirements.py"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 3, r.stdout + r.stderr
    assert f"{tmp_path}: " in r.stdout and "GB free, the test session needs about 1e+09 GB" in r.stdout
    assert "passed" not in r.stdout  # stopped before any test ran
    env["SEGKD_TEST_MIN_FREE_GB"] = "0"  # the check off: the same session runs
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_requirements.py"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "passed" in r.stdout, r.stdout + r.stderr


def test_only_failures_keep_their_temporary_folders_and_a_hung_test_ends():
    with open(os.path.join(REPO, "pyproject.toml"), encoding="utf-8") as f:  # (tomllib: Python 3.11 and later)
        text = f.read()
    ini = dict(re.findall(r"^(tmp_path_retention_policy|tmp_path_retention_count|timeout|timeout_method) = (.+)$",
                          text, flags=re.M))
    assert ini["tmp_path_retention_policy"] == '"failed"' and ini["tmp_path_retention_count"] == "1"
    assert 0 < int(ini["timeout"]) <= 1800 and ini["timeout_method"] == '"thread"'  # thread: a hang in C code too
    import pytest_timeout  # noqa: F401  (requirements-dev.txt installs the plugin that reads them)
