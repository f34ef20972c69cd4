"""tools/speed.py: bf16 is measured only with bf16 units, the table has the student / teacher row, and a tiny run
times every runtime (the exports checked against eager first)."""

import pytest

from tools import speed


def test_bf16_needs_bf16_units():
    assert speed.bf16_units({"avx2", "avx512f"}) == ("not measured: no bf16 units (no avx512_bf16 or amx_bf16 in "
                                                     "the CPU flags)")
    assert speed.bf16_units({"avx512f", "avx512_bf16"}) is None and speed.bf16_units({"amx_bf16"}) is None


def test_table_ratio_row():
    rows = {"teacher": {"params": 40e6, "gflops": 200.0, "ms": {"eager": 1000.0, "torchscript": 800.0,
                                                                "onnxruntime": 500.0, "bf16": None}},
            "student": {"params": 10e6, "gflops": 50.0, "ms": {"eager": 300.0, "torchscript": 200.0,
                                                               "onnxruntime": 250.0, "bf16": None}}}
    table = speed.format_table({"rows": rows, "bf16_note": "not measured: no bf16 units"})
    assert "| student / teacher | 0.25 | 0.25 | 0.30 | 0.25 | 0.50 | not measured |" in table
    assert "| teacher (PSPNet-R50) | 40.00 | 200.0 | 1000 | 800 | 500 | not measured |" in table
    assert table.endswith("bf16: not measured: no bf16 units")


def test_tiny_run_times_every_runtime():
    """The student only: exporting the R50 as well takes 15 s, too long for the fast tier."""
    pytest.importorskip("onnxruntime")
    args = ["--size", "32", "--repeats", "1", "--warmup", "0", "--classes", "2", "--models", "student"]
    result = speed.run(speed.parse_args(args))
    assert set(result["rows"]) == {"student"}
    row = result["rows"]["student"]
    assert all(row["ms"][r] > 0 for r in ("eager", "torchscript", "onnxruntime"))
    assert 10e6 < row["params"] < 20e6 and row["gflops"] > 0
