"""What every importer test asks of a file tools.import_weights must refuse."""

from __future__ import annotations

import os

import pytest

from tools import import_weights as iw
from util.errors import SegKDError


def assert_refused(src: str, dst: str, fmt: str, message: str) -> None:
    """The command exits 2 and the function raises one line that starts with ``src`` and matches ``message``;
    neither ``dst`` nor its temporary file is written."""
    assert iw.main(["--format", fmt, src, dst]) == 2
    with pytest.raises(SegKDError, match=message) as info:
        iw.import_weights(src, dst, fmt)
    assert str(info.value).startswith(src) and "\n" not in str(info.value)
    assert not os.path.exists(dst) and not os.path.exists(f"{dst}.tmp")
