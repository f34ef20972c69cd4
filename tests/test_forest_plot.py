"""scripts/forest_plot.py: the rows a forest plot draws are the table's (fabricated records, make_table --figure on
fabricated runs, and the instrument's committed results), the PNG they make, and the one-line errors. The committed
docs/img/instrument_forest.png is what `python scripts/instrument_blocks.py --figure` makes of the committed files:
its rows (stored in the PNG) and pixel size always, its bytes too when this matplotlib is the one that drew it
(rendering moves between matplotlib releases, so a byte comparison across them would test matplotlib, not us)."""

import os
import re
import sys

import pytest
from PIL import Image

from tests.conftest import REPO
from tests.test_make_table import paper_runs, read_csv, run_main  # noqa: F401 (paper_runs is a fixture)

sys.path.insert(0, os.path.join(REPO, "scripts"))
import forest_plot as fp  # noqa: E402
import instrument_blocks  # noqa: E402
import make_table  # noqa: E402

from util.errors import SegKDError  # noqa: E402

COMMITTED = os.path.join(REPO, "docs", "img", "instrument_forest.png")


def record(label, values=None, low=None, high=None, resolved=None):
    mean = sum(values) / len(values) if values else None
    return {"row": label, "label": label, "d_values": values, "d_mIoU": mean, "d_ci95_low": low,
            "d_ci95_high": high, "d_resolved": resolved}


RECORDS = [record("teacher"), record("baseline"),
           record("up", [1.0, 2.0, 3.0], 0.5, 3.5, True),
           record("flat", [-1.0, 0.5, 1.5], -2.0, 2.0, False),
           record("down", [-2.0, -1.0, -1.5], -2.5, -0.5, True),
           record("one pair", [0.7], None, None, None)]


def test_rows_are_the_records_with_a_paired_difference():
    rows = fp.forest_rows(RECORDS, {3: 1.25})
    assert [r.label for r in rows] == ["up", "flat", "down", "one pair"]
    up, flat, down, one = rows
    assert (up.mean, up.low, up.high, up.pairs, up.resolved, up.band) == (2.0, 0.5, 3.5, (1.0, 2.0, 3.0), True, 1.25)
    assert one.low is None and one.band is None and one.resolved is False
    assert [fp.colour(r) for r in rows] == [fp.ABOVE, fp.NEITHER, fp.BELOW, fp.NEITHER]
    assert fp.interval_text(up) == "+2.00 [+0.50, +3.50]" and fp.interval_text(one) == "+0.70"
    assert fp.band_label(rows) == "resolution: ± 1.25, the 95% half-width at 3 pairs (pooled std)"
    assert fp.band_label(fp.forest_rows(RECORDS, {})) is None


def test_draw_writes_a_png_that_holds_its_rows(tmp_path):
    rows = fp.forest_rows(RECORDS, {3: 1.25})
    path = str(tmp_path / "forest.png")
    fp.draw(rows, path, "a title")
    with Image.open(path) as image:
        assert image.size == (900, int(100 * (1.5 + 0.36 * len(rows))))
    assert fp.rows_in_png(path) == rows
    with pytest.raises(SegKDError, match="no row has a paired"):
        fp.draw([], path, "a title")


def test_make_table_figure_option(paper_runs, tmp_path, capsys):  # noqa: F811
    png, out_csv = tmp_path / "f.png", tmp_path / "t.csv"
    code, text, err = run_main([paper_runs, "--seeds", "1 2 3", "--figure", png, "--out-csv", out_csv], capsys)
    assert code == 0, err
    rows = fp.rows_in_png(str(png))
    table = read_csv(out_csv)
    # logit KD (2 pairs) and SmoothL1 (3 pairs); aux KL has no runs, teacher and baseline no Δ
    assert [r.label for r in rows] == ["R18 + logit KD", "R18 + logit KD + aux SmoothL1"]
    for row, key in zip(rows, ["pspnet18_kd", "pspnet18_kd_aux_smoothl1"]):
        assert row.mean == pytest.approx(float(table[key]["d_mIoU"]), abs=1e-12)
        assert (row.low, row.high) == (float(table[key]["d_ci95_low"]), float(table[key]["d_ci95_high"]))
        assert row.resolved == (table[key]["d_resolved"] == "True") and len(row.pairs) == int(table[key]["d_pairs"])
    # the pooled std, and the band at 2 and 3 pairs, are the Resolution line's
    halves = [float(h) for h in re.findall(r"a 95% interval is ± ([0-9.]+)", text)]
    assert [round(r.band, 2) for r in rows] == halves


def test_missing_matplotlib_is_one_line(monkeypatch, paper_runs, tmp_path, capsys):  # noqa: F811
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code, out, err = run_main([paper_runs, "--figure", tmp_path / "f.png"], capsys)
    assert (code, out, err) == (2, "", f"error: {fp.MISSING_MATPLOTLIB}\n")
    assert not (tmp_path / "f.png").exists()


def numbers(rows):
    """The rows as flat tuples, for comparing with pytest.approx: scipy releases differ in t.ppf's last digits."""
    return [(r.mean, r.low, r.high, r.band, *r.pairs) for r in rows]


@pytest.fixture(scope="module")
def instrument(tmp_path_factory):
    """(rows drawn by instrument_blocks.figure from the committed results, the PNG, make_table's records, its
    markdown)."""
    png = str(tmp_path_factory.mktemp("forest") / "instrument_forest.png")
    rows = instrument_blocks.figure(png)
    text, records = instrument_blocks.table()
    return rows, png, records, text


def test_instrument_figure_plots_the_tables_numbers(instrument):
    rows, _, records, text = instrument
    compared = [rec for rec in records if rec.get("d_values")]
    left_out = {rec["row"] for rec in records} - {rec["row"] for rec in compared}
    assert left_out == {"pspnet50_teacher", "pspnet18_baseline", "pspnet34_kd"}  # no paired Δ in the table
    assert len(rows) == len(records) - 3 >= 15 and [r.label for r in rows] == [rec["label"] for rec in compared]
    _, _, _, at = make_table.resolution_numbers(records)
    for row, rec in zip(rows, compared):
        assert (row.mean, row.low, row.high) == (rec["d_mIoU"], rec["d_ci95_low"], rec["d_ci95_high"])
        assert row.pairs == tuple(rec["d_values"]) and len(row.pairs) in (6, 10)  # the later rows: 6 AMD seeds
        assert row.resolved is rec["d_resolved"] and row.band == at[len(row.pairs)][0]
    # what make_table prints: the Δ cell's mean and interval, and the Resolution line's half-width at 10 pairs
    for row in rows:
        line = next(line for line in text.splitlines() if line.startswith(f"| {row.label} |"))
        bold = "**" if row.resolved else ""
        assert f"| {bold}{row.mean:+.2f} ± " in line and f"[{row.low:+.2f}, {row.high:+.2f}] |" in line
    assert f"with 10 pairs a 95% interval is ± {rows[0].band:.2f} points" in text
    assert sum(r.resolved for r in rows) == 17


def test_committed_png_is_what_the_command_makes(instrument):
    rows, png, _, _ = instrument
    assert os.path.getsize(COMMITTED) < 150_000
    stored = fp.rows_in_png(COMMITTED)
    assert [(r.label, r.resolved) for r in stored] == [(r.label, r.resolved) for r in rows]
    assert len(stored) == len(rows) and all(a == pytest.approx(b, rel=1e-9) for a, b in
                                            zip(numbers(stored), numbers(rows)))
    with Image.open(COMMITTED) as committed, Image.open(png) as made:
        assert committed.size == made.size and made.size[0] == 900  # README width; the height grows with the rows
        same_matplotlib = committed.text.get("Software") == made.text.get("Software")
    if same_matplotlib:
        with open(COMMITTED, "rb") as a, open(png, "rb") as b:
            assert a.read() == b.read(), "regenerate: python scripts/instrument_blocks.py --figure"
