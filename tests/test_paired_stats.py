"""scripts/paired_stats.py: the interval and the resolution against values computed by hand (t quantiles from the
printed tables), and the one-line error of a table script when scipy, a development dependency, is missing."""

import math
import os
import sys

import pytest

from tests.conftest import REPO
from tests.test_make_table import paper_runs, run_main  # noqa: F401 (paper_runs is a fixture)

sys.path.insert(0, os.path.join(REPO, "scripts"))
import paired_stats as ps  # noqa: E402

from util.errors import SegKDError  # noqa: E402


def test_table_values():
    """The printed t table: t(0.975) for 1, 2, 9 degrees of freedom, t(0.80) for 9, and symmetry."""
    assert round(ps.t_quantile(0.975, 1), 3) == 12.706
    assert round(ps.t_quantile(0.975, 2), 3) == 4.303
    assert round(ps.t_quantile(0.975, 9), 3) == 2.262
    assert round(ps.t_quantile(0.80, 9), 3) == 0.883
    assert ps.t_quantile(0.025, 9) == pytest.approx(-ps.t_quantile(0.975, 9))


def test_paired_p_value_by_hand_and_against_the_interval():
    # 1, 2, 3: t = 2 / (1 / sqrt 3) = 2 sqrt 3 on 2 degrees of freedom, where F(t) = 1/2 + t / (2 sqrt(2 + t^2)):
    # two-sided p = 1 - t / sqrt(2 + t^2) = 1 - sqrt(6 / 7)
    assert ps.paired_p_value([1.0, 2.0, 3.0]) == pytest.approx(1 - math.sqrt(6 / 7), abs=1e-12)
    assert ps.paired_p_value([-1.0, -2.0, -3.0]) == pytest.approx(1 - math.sqrt(6 / 7), abs=1e-12)
    assert ps.paired_p_value([1.0]) is None
    assert ps.paired_p_value([2.0, 2.0]) == 0.0 and ps.paired_p_value([0.0, 0.0]) == 1.0
    rng = __import__("numpy").random.default_rng(0)
    for _ in range(200):  # p < 0.05 exactly when the 95% interval excludes zero
        d = list(rng.normal(rng.uniform(-1, 1), 1.0, size=int(rng.integers(2, 12))))
        assert (ps.paired_p_value(d) < 0.05) == ps.paired_interval(d)["excludes_zero"]


def test_holm_step_down_by_hand():
    # m = 4: 0.01 < 0.05/4; the next, 0.03, is not below 0.05/3, so it and every larger p-value are kept
    assert ps.holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.5}) == {"a"}
    # m = 3: 0.01 < 0.05/3, 0.015 < 0.05/2, 0.02 < 0.05: all rejected (each alone also below 0.05)
    assert ps.holm({"a": 0.01, "b": 0.015, "c": 0.02}) == {"a", "b", "c"}
    # each below 0.05 alone, but the smallest is not below 0.05/2: none is rejected
    assert ps.holm({"a": 0.03, "b": 0.04}) == set() and ps.holm({"a": 0.02, "b": 0.03}) == {"a", "b"}
    assert ps.holm({}) == set() and ps.holm({"a": 0.049}) == {"a"}


def test_paired_interval_by_hand():
    # 1, 2, 3: mean 2, std 1, half-width 4.302653 / sqrt(3) = 2.484138
    ci = ps.paired_interval([1.0, 2.0, 3.0])
    assert ci["mean"] == 2.0 and ci["std"] == pytest.approx(1.0)
    assert (ci["low"], ci["high"]) == (pytest.approx(-0.484138, abs=1e-6), pytest.approx(4.484138, abs=1e-6))
    assert ci["above"] == 3 and ci["excludes_zero"] is False
    # 2, 3, 4, 3: mean 3, std sqrt(2/3) = 0.8164966, half-width 3.1824463 x 0.8164966 / 2 = 1.2992283
    ci = ps.paired_interval([2.0, 3.0, 4.0, 3.0])
    assert ci["low"] == pytest.approx(3 - 1.2992283, abs=1e-6) and ci["excludes_zero"] is True
    ci = ps.paired_interval([-1.0, -1.5, -1.2, -0.9, -1.1])
    assert ci["high"] < 0 and ci["excludes_zero"] is True and ci["above"] == 0
    # 1..10: mean 5.5, std sqrt(82.5 / 9) = 3.0276504, half-width 2.2621572 x 3.0276504 / sqrt(10) = 2.1658506
    ci = ps.paired_interval([float(k) for k in range(1, 11)])
    assert ci["std"] == pytest.approx(3.0276504, abs=1e-6) and ci["above"] == 10
    half = 2.1658506
    assert (ci["low"], ci["high"]) == (pytest.approx(5.5 - half, abs=1e-6), pytest.approx(5.5 + half, abs=1e-6))
    one = ps.paired_interval([0.7])
    assert one["mean"] == 0.7 and one["low"] is None and one["excludes_zero"] is None and one["above"] == 1


def test_pooled_std_and_resolution_by_hand():
    # groups (1, 3): ss 2, df 1; (0, 0, 3): mean 1, ss 6, df 2; (5,): nothing -> s = sqrt(8 / 3)
    std, df = ps.pooled_std([[1.0, 3.0], [0.0, 0.0, 3.0], [5.0]])
    assert df == 3 and std == pytest.approx(math.sqrt(8 / 3))
    half, detect = ps.resolution(2.0, 9, 10)  # t(0.975, 9) 2.262157, t(0.80, 9) 0.883404 (printed tables)
    assert half == pytest.approx(2.262157 * 2 / math.sqrt(10), abs=1e-5)
    assert detect == pytest.approx((2.262157 + 0.883404) * 2 / math.sqrt(10), abs=1e-5)
    assert ps.pooled_std([[1.0], []]) == (None, 0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="0 < p < 1"):
        ps.t_quantile(1.0, 3)


def without_scipy(monkeypatch):
    """``import scipy`` raises ImportError from here on, as in an environment of requirements.txt alone."""
    for name in [m for m in sys.modules if m == "scipy" or m.startswith("scipy.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "scipy", None)


def test_missing_scipy_is_one_line(monkeypatch, paper_runs, capsys):  # noqa: F811
    without_scipy(monkeypatch)
    with pytest.raises(SegKDError, match="need scipy"):
        ps.paired_interval([1.0, 2.0])
    assert ps.paired_interval([0.7])["mean"] == 0.7  # one pair: no interval, no scipy
    code, out, err = run_main([paper_runs], capsys)
    assert code == 2 and out == ""
    assert err == f"error: {ps.MISSING_SCIPY}\n"
