"""A forest plot of a results table's paired differences: one line per row with its paired Δ mIoU vs the baseline,
its 95% interval, one dot per pair (seed), the zero line and the table's resolution band.

Drawn by ``scripts/make_table.py --figure PATH`` (any table) and ``scripts/instrument_blocks.py --figure`` (the
instrument's, docs/img/instrument_forest.png) from the records make_table prints: the plotted numbers are the
table's. matplotlib (Agg) is a development dependency (requirements-dev.txt): imported only when a figure is drawn,
its absence a one-line :class:`SegKDError`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Optional

from util.errors import SegKDError

MISSING_MATPLOTLIB = "the figure needs matplotlib: pip install matplotlib (requirements-dev.txt)"
XLABEL = "Δ mIoU vs baseline (points)"
# Rows whose interval excludes zero: above the baseline blue, below red; the others grey.
ABOVE, BELOW, NEITHER, BAND = "#1f5fa8", "#c0392b", "#6b6b6b", "#e3e3e3"
SECOND, SECOND_OFFSET = "#d35400", 0.28  # the second view (equal cost): its colour, and how far below the row


@dataclass(frozen=True)
class ForestRow:
    """One plotted row: the table's label, the mean paired Δ (points), its 95% interval (None with one pair), the
    pairs in seed order, whether the interval excludes zero, and the resolution half-width at the row's number of
    pairs (None when the table has no pooled std)."""

    label: str
    mean: float
    low: Optional[float]
    high: Optional[float]
    pairs: tuple[float, ...]
    resolved: bool
    band: Optional[float]


def forest_rows(records: Sequence[Mapping[str, Any]], bands: Mapping[int, float]) -> list[ForestRow]:
    """The rows of make_table's ``records`` that have a paired Δ (``d_values``), in table order; ``bands``: the
    resolution half-width at each number of pairs (make_table.resolution_numbers)."""
    rows = []
    for rec in records:
        values = rec.get("d_values")
        if not values:
            continue
        rows.append(ForestRow(rec["label"], rec["d_mIoU"], rec.get("d_ci95_low"), rec.get("d_ci95_high"),
                              tuple(values), bool(rec.get("d_resolved")), bands.get(len(values))))
    return rows


def equal_cost_rows(records: Sequence[Mapping[str, Any]]) -> dict[str, ForestRow]:
    """{label: the row's equal-cost Δ vs the equal-cost baseline} from scripts/equal_cost_table.py's records (the
    second marker of :func:`draw`); rows without a pair left out."""
    return {rec["label"]: ForestRow(rec["label"], rec["e_mIoU"], rec.get("e_ci95_low"), rec.get("e_ci95_high"),
                                    tuple(rec["e_values"]), bool(rec.get("e_resolved")), None)
            for rec in records if rec.get("e_values")}


def colour(row: ForestRow) -> str:
    return NEITHER if not row.resolved else (ABOVE if row.mean > 0 else BELOW)


def interval_text(row: ForestRow) -> str:
    """``+2.10 [+0.71, +3.49]``: as the table's Δ column prints it, without the std."""
    return f"{row.mean:+.2f}" + ("" if row.low is None else f" [{row.low:+.2f}, {row.high:+.2f}]")


def band_label(rows: Sequence[ForestRow]) -> Optional[str]:
    """The legend of the shaded band: its half-width and number of pairs when one band serves every row."""
    sized = {(len(r.pairs), r.band) for r in rows if r.band is not None}
    if not sized:
        return None
    if len(sized) == 1:
        n, band = sized.pop()
        return f"resolution: ± {band:.2f}, the 95% half-width at {n} pairs (pooled std)"
    return "resolution: the 95% half-width at each row's pairs (pooled std)"


def draw(rows: Sequence[ForestRow], path: str, title: str, width: float = 9.0, dpi: int = 100,
         second: Optional[Mapping[str, ForestRow]] = None) -> None:
    """Write the forest plot of ``rows`` (top to bottom in their order) to the PNG ``path``: ``width`` inches at
    ``dpi`` (900 px by default, the README's width). ``second``: a second view of some rows by label (the equal-cost
    Δ, :func:`equal_cost_rows`), drawn just below each as a hollow circle with its interval in orange. The rows are
    stored in the PNG's ``Description`` as JSON (``{"rows", "second"}`` with a second view), the matplotlib
    version in its ``Software`` (matplotlib's default)."""
    if not rows:
        raise SegKDError("--figure: no row has a paired Δ mIoU (no baseline to pair with?)")
    try:
        import matplotlib
    except ImportError:
        raise SegKDError(MISSING_MATPLOTLIB) from None
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    height = 1.5 + 0.36 * len(rows)
    fig, ax = plt.subplots(figsize=(width, height), dpi=dpi, layout="constrained")
    ys = list(range(len(rows)))
    for y, row in zip(ys, rows):
        c = colour(row)
        if row.band is not None:
            ax.barh(y, 2 * row.band, left=-row.band, height=1.0, color=BAND, zorder=0, linewidth=0)
        n = len(row.pairs)
        offsets = [0.0] if n == 1 else [-0.22 + 0.44 * i / (n - 1) for i in range(n)]  # seed order, no jitter
        ax.scatter(row.pairs, [y + o for o in offsets], s=12, color=c, alpha=0.5, linewidths=0, zorder=2)
        if row.low is not None:
            ax.plot([row.low, row.high], [y, y], color=c, linewidth=2.6 if row.resolved else 1.4,
                    solid_capstyle="butt", zorder=3)
        ax.plot([row.mean], [y], marker="D", markersize=6, color=c, markeredgecolor="white", zorder=4)
        other = (second or {}).get(row.label)
        if other is not None:
            if other.low is not None:
                ax.plot([other.low, other.high], [y + SECOND_OFFSET] * 2, color=SECOND,
                        linewidth=2.6 if other.resolved else 1.4, solid_capstyle="butt", zorder=3)
            ax.plot([other.mean], [y + SECOND_OFFSET], marker="o", markersize=6, color="white",
                    markeredgecolor=SECOND, markeredgewidth=1.6, zorder=4)
    ax.axvline(0.0, color="black", linewidth=0.9, zorder=1)
    ax.set_ylim(len(rows) - 0.5, -0.5)  # the table's first row on top
    ax.set_yticks(ys, [r.label for r in rows], fontsize=9)
    right = ax.secondary_yaxis("right")
    right.set_yticks(ys, [interval_text(r) + (f"  · cost {interval_text(second[r.label])}"
                                              if second and r.label in second else "") for r in rows], fontsize=9)
    for ticks in (ax.get_yticklabels(), right.get_yticklabels()):
        for label, row in zip(ticks, rows):
            label.set_color(colour(row))
            label.set_fontweight("bold" if row.resolved else "normal")
    right.tick_params(length=0)
    ax.tick_params(axis="y", length=0)
    ax.set_xlabel(XLABEL)
    ax.grid(axis="x", color="#d0d0d0", linewidth=0.5, zorder=0)
    ax.set_axisbelow(True)
    ax.margins(x=0.04)
    fig.suptitle(title, fontsize=10.5)
    handles = [Line2D([], [], marker="o", linestyle="", color=NEITHER, alpha=0.6, markersize=4,
                      label="one pair (seed): row − baseline"),
               Line2D([], [], marker="D", color=ABOVE, linewidth=2.6, markeredgecolor="white",
                      label="mean, 95% t interval excluding zero (bold)"),
               Line2D([], [], marker="D", color=NEITHER, linewidth=1.4, markeredgecolor="white",
                      label="interval including zero")]
    band = band_label(rows)
    if band:
        handles.append(Patch(color=BAND, label=band))
    if second:
        handles.append(Line2D([], [], marker="o", color=SECOND, markerfacecolor="white", linewidth=1.4,
                              label="at equal cost (logit KD's): Δ vs the equal-cost baseline, 95% interval"))
    fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=8.5, frameon=False)
    stored: Any = [asdict(r) for r in rows]
    if second:
        stored = {"rows": stored, "second": [asdict(second[r.label]) for r in rows if r.label in second]}
    fig.savefig(path, dpi=dpi, metadata={"Description": json.dumps(stored)})
    plt.close(fig)


def rows_in_png(path: str) -> list[ForestRow]:
    """The rows a PNG written by :func:`draw` was drawn from (its ``Description``), read with PIL."""
    from PIL import Image

    with Image.open(path) as image:
        stored = json.loads(image.text["Description"])
    if isinstance(stored, dict):  # drawn with a second view
        stored = stored["rows"]
    return [ForestRow(**{**r, "pairs": tuple(r["pairs"])}) for r in stored]
