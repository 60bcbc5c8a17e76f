"""``python -m ifsq_quant``: help, version, and a table whose cells are the measured figures."""

from __future__ import annotations

import math
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


@pytest.mark.parametrize("option,value,words", [
    ("--sigma", "nan", "finite number > 0"),
    ("--sigma", "inf", "finite number > 0"),
    ("--sigma", "-inf", "finite number > 0"),
    ("--sigma", "0", "finite number > 0"),
    ("--sigma", "1e38", "at most 1e+37"),
    ("--sigma", "one", "expected a number"),
    ("--levels", "9007199254740993", "from 2 to 9,007,199,254,740,992"),
    ("--levels", "1", "from 2 to 9,007,199,254,740,992"),
    ("--levels", "2.5", "expected an integer"),
    ("--seed", "18446744073709551616", "from 0 to 18,446,744,073,709,551,615"),
    ("--seed", "99999999999999999999", "from 0 to 18,446,744,073,709,551,615"),
    ("--seed", "-1", "from 0 to 18,446,744,073,709,551,615"),
    ("--samples", "0", "from 1 to 100,000,000"),
    ("--samples", "1000000000000", "from 1 to 100,000,000"),
])
def test_bad_values_are_usage_errors_naming_the_option(capsys, option, value, words):
    with pytest.raises(SystemExit) as exit_info:
        main([f"{option}={value}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}: " in err and words in err and value in err


def test_extreme_valid_values_give_a_table():
    """The largest level count, the largest seed and a tiny sigma run; entropies are never -0.000."""
    out = subprocess.run([sys.executable, "-m", "ifsq_quant", "--levels", "3", "9007199254740992", "--samples", "2000",
                          "--seed", str(2**64 - 1), "--sigma", "1e-30"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    cells = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")[1:]] for line in out.stdout.splitlines()
             if line.startswith("| ") and not line.startswith("| L ")}
    assert cells["9007199254740992"] == ["53.000"] + ["0.000"] * 4  # 1e-30 * N(0, 1): every sample in the middle level
    assert cells["3"] == ["1.585"] + ["0.000"] * 4
    # 2**53 levels: about every one of 2000 samples in a level of its own (the float32 activations merge a few)
    rows = bits_table([9007199254740992], 2000, 0, 1.0)
    assert all(math.log2(2000) - 0.01 < rows[0][n] <= math.log2(2000) + 1e-9 for n in CONFIGS)
