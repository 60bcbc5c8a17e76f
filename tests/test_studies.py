"""The study scripts under benchmarks/ run in their smallest configuration and write their outputs."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import study_utilization  # noqa: E402


def test_utilization_study_smallest_configuration(tmp_path):
    study_utilization.main(["--samples", "20000", "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "utilization.json").read_text())["rows"]
    assert len(rows) == 3 * 5 * 2 * 3
    assert (tmp_path / "utilization.png").stat().st_size > 1000
    by_key = {(r["sigma"], r["L"], r["bins"], r["activation"]): r for r in rows}
    # erf maps N(0, 1) onto U(-1, 1): equal bins use (nearly) every bit; the round layout cannot.
    assert by_key[(1.0, 17, "equal", "erf")]["bits"] > by_key[(1.0, 17, "round", "erf")]["bits"]
    assert abs(by_key[(1.0, 17, "equal", "erf")]["bits"] - by_key[(1.0, 17, "equal", "erf")]["max_bits"]) < 0.01
    assert all(0 <= r["bits"] <= r["max_bits"] + 1e-9 and 0 <= r["ks"] <= 1 for r in rows)
