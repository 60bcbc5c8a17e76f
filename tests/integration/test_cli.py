"""``python -m ifsq_quant``: help, version, and a table whose cells are the measured figures."""

from __future__ import annotations

import subprocess
import sys

import pytest

import ifsq_quant
from ifsq_quant.__main__ import CONFIGS, bits_table, main


def test_help_describes_every_option_and_version_prints():
    out = subprocess.run([sys.executable, "-m", "ifsq_quant", "--help"], capture_output=True, text=True, check=True).stdout
    for option, words in {"--samples": "samples", "--seed": "seed", "--sigma": "standard deviation", "--levels": "level counts",
                          "--version": "version"}.items():
        assert option in out and words in out
    assert "``" not in out  # plain text, no markup
    version = subprocess.run([sys.executable, "-m", "ifsq_quant", "--version"], capture_output=True, text=True, check=True).stdout
    assert version.strip() == f"ifsq-quant {ifsq_quant.__version__}"


def test_two_levels_have_no_round_column(capsys):
    main(["--levels", "2", "5", "--samples", "2000"])
    out = capsys.readouterr().out
    row2 = next(line for line in out.splitlines() if line.startswith("| 2 |"))
    cells = [c.strip() for c in row2.strip("|").split("|")]
    assert cells[2] == cells[3] == "–" and float(cells[4]) == pytest.approx(1.0, abs=1e-3)
    assert "not defined for L = 2" in out
    rows = bits_table([5], 2000, 0, 1.0)
    row5 = next(line for line in out.splitlines() if line.startswith("| 5 |"))
    assert [c.strip() for c in row5.strip("|").split("|")][2:] == [f"{rows[0][n]:.3f}" for n in CONFIGS]
