"""What segkd knows about a named dataset (``data.dataset``): its class table, colours, label map and protocol.

A dataset is one small file of facts (``data/datasets/<name>.py``) registered by name, as a distillation method is;
reading list files and images stays shared (data/dataset.py). The class names and colours are text files beside
VOC's (``data/<name>/<name>_names.txt``, ``<name>_colors.txt``), so the class table is written once: the facts file
reads them, its preparation tool (``tools/prepare_<name>.py``) maps raw labels through :meth:`DatasetFacts.convert`,
and ``test.py``, ``predict.py`` and the figures colour predictions with :meth:`DatasetFacts.palette`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from data.palette import load_names
from util.errors import SegKDError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
IGNORE = 255


@dataclass(frozen=True)
class DatasetFacts:
    """One dataset's facts.

    ``label_map`` maps each value of the stored raw labels (0..len-1, the official class table: Cityscapes' 34
    labelIds, ADE20K's 0..150, CamVid's 0..11) to a class index or :data:`IGNORE`; a raw value past its end is not
    in the table. ``None``: the prepared labels are already class indices (VOC). ``protocol`` holds the ``test.*``
    values of the evaluation its papers report; ``counts`` the real number of samples of each prepared list.
    """

    name: str
    title: str
    names_file: str  # relative to the repository
    colors_file: str
    counts: dict[str, int]
    lists: dict[str, str]  # role (train, val, test) -> list file written by the preparation tool
    protocol: dict[str, Any]
    source: str  # where the protocol and counts come from
    label_map: Optional[tuple[int, ...]] = None
    ignore_label: int = IGNORE
    base_palette: Optional[tuple[int, ...]] = field(default=None, repr=False)  # a full 256-colour map (VOC's)

    @property
    def classes(self) -> int:
        return len(self.names())

    def names(self) -> list[str]:
        return load_names(os.path.join(REPO_ROOT, self.names_file))

    def colors(self) -> list[tuple[int, int, int]]:
        """One (r, g, b) per class, from the colours file."""
        path = os.path.join(REPO_ROOT, self.colors_file)
        rows = []
        for lineno, line in enumerate(load_names(path, "class colours"), start=1):
            values = line.split()
            if len(values) != 3 or not all(v.isdigit() and int(v) <= 255 for v in values):
                raise SegKDError(f"{path}:{lineno}: expected 'r g b' in 0..255, got {line!r}")
            rows.append((int(values[0]), int(values[1]), int(values[2])))
        return rows

    def palette(self) -> list[int]:
        """A flat ``[r0, g0, b0, r1, ...]`` list of 768 ints for a "P" image: the class colours, black elsewhere
        (the ignore label included), or the dataset's own 256-colour map (VOC's, whose 255 is drawn light)."""
        if self.base_palette is not None:
            return list(self.base_palette)
        flat = [c for rgb in self.colors() for c in rgb]
        return flat + [0] * (768 - len(flat))

    def lut(self) -> np.ndarray:
        """The label map as a 256-entry uint8 lookup table (raw values past the table at 255: :meth:`convert`
        refuses them before it looks up)."""
        if self.label_map is None:
            raise SegKDError(f"data.dataset={self.name}: its prepared labels are class indices already (no label map)")
        table = np.full(256, IGNORE, np.uint8)
        table[:len(self.label_map)] = self.label_map
        return table

    def convert(self, raw: np.ndarray, path: str) -> np.ndarray:
        """HxW raw label values -> HxW uint8 class indices (ignore = 255). A value outside the class table is an
        error naming ``path`` and the values."""
        if raw.ndim != 2:
            raise SegKDError(f"{path}: expected a single-channel label image, got shape {raw.shape}")
        table = self.lut()  # refuses a dataset without a label map
        n = len(self.label_map)
        bad = np.unique(raw[(raw < 0) | (raw >= n)]) if raw.size else raw
        if bad.size:
            shown = ", ".join(str(int(v)) for v in bad[:8]) + (", ..." if bad.size > 8 else "")
            raise SegKDError(f"{path}: label values [{shown}] are outside the {self.title} class table "
                             f"(raw values 0..{n - 1})")
        return table[raw.astype(np.intp)]


DATASETS: dict[str, DatasetFacts] = {}


def register(facts: DatasetFacts) -> DatasetFacts:
    """Add a dataset under its name (each file of data/datasets calls this once)."""
    if facts.name in DATASETS:
        raise ValueError(f"dataset {facts.name!r} registered twice")
    DATASETS[facts.name] = facts
    return facts


def get_dataset(name: str) -> DatasetFacts:
    if name not in DATASETS:
        raise SegKDError(f"data.dataset: unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    return DATASETS[name]
