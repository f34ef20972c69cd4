"""The named datasets (``data.dataset``): each file of this package registers one :class:`DatasetFacts`.

    from data.datasets import get_dataset, check_data_keys
    facts = get_dataset("cityscapes"); facts.names(), facts.palette(), facts.protocol

A new dataset is one file here (its facts) plus its names and colours under ``data/<name>/``, its import below and
its name in ``util/config.py:DATASET_NAMES``; a different archive layout is a tool in ``tools/``.
"""

from __future__ import annotations

import os
from typing import Any, Optional

from data.datasets import ade20k, camvid, cityscapes, voc2012  # noqa: F401  (each registers itself)
from data.datasets.base import DATASETS, IGNORE, REPO_ROOT, DatasetFacts, get_dataset, register
from data.palette import load_names, voc_palette
from util.errors import SegKDError

__all__ = ["DATASETS", "IGNORE", "DatasetFacts", "get_dataset", "register", "check_data_keys", "class_names",
           "palette_of"]


def _names_path(names: str) -> str:
    return names if os.path.isabs(names) else os.path.join(REPO_ROOT, names)


def check_data_keys(data: Any) -> Optional[DatasetFacts]:
    """The facts of ``data.dataset`` (None when it is null), after checking that ``data.classes``,
    ``data.ignore_label`` and ``data.names`` (a file, or null for the dataset's own) agree with them; a
    contradiction is one line naming the key and the dataset."""
    if data.dataset is None:
        return None
    facts = get_dataset(data.dataset)
    if data.classes != facts.classes:
        raise SegKDError(f"data.classes={data.classes} contradicts data.dataset={facts.name} ({facts.classes} "
                         f"classes); set data.classes={facts.classes}")
    if data.ignore_label != facts.ignore_label:
        raise SegKDError(f"data.ignore_label={data.ignore_label} contradicts data.dataset={facts.name} (ignore "
                         f"label {facts.ignore_label})")
    if data.names is not None:
        path = _names_path(data.names)
        names = load_names(path)
        if names != facts.names():
            first = next((i for i, (a, b) in enumerate(zip(names, facts.names())) if a != b), min(len(names),
                                                                                              facts.classes))
            raise SegKDError(f"data.names={data.names} contradicts data.dataset={facts.name}: {len(names)} names, "
                             f"first difference at line {first + 1} (expected {facts.names_file}, or null)")
    return facts


def class_names(data: Any) -> list[str]:
    """The class names of a config's ``data`` section: ``data.names`` (a file of ``data.classes`` lines), else the
    named dataset's, else ``class_<i>``. A missing file or another count is an error naming the file."""
    facts = check_data_keys(data)
    if data.names is None:
        return facts.names() if facts is not None else [f"class_{i}" for i in range(data.classes)]
    path = _names_path(data.names)
    if not os.path.isfile(path):  # a relative data.names is the repository's, not data.root's: say where it is
        beside = os.path.join(data.root, os.path.basename(data.names)) if data.root else ""
        hint = (f"; a relative data.names is under the repository, not data.root: data.names={beside}"
                if beside and os.path.isfile(beside) else "")
        raise SegKDError(f"{path}: class names file not found (data.names){hint}")
    names = load_names(path)
    if len(names) != data.classes:
        raise SegKDError(f"{path}: {len(names)} class names for data.classes={data.classes} "
                         "(set data.names to a matching file, or null for numbered classes)")
    return names


def palette_of(data: Any) -> list[int]:
    """The 768-int palette predictions are drawn with: the named dataset's, VOC's without one (as always)."""
    facts = check_data_keys(data)
    return facts.palette() if facts is not None else voc_palette(256)
