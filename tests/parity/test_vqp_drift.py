"""Whether the package index serves a vector-quantize-pytorch release the release table does not know.

The slow check asks the configured package index (``pip index versions``, so a mirror configured for
pip is the one asked) for the releases of vector-quantize-pytorch. A release newer than the
table's ``LATEST``, or a difference between the index and the table's ``RELEASES`` inside the
table's range, is reported as a :class:`VqpReleaseDriftWarning` in the warnings summary of the run
(``pytest -m slow tests/parity``); the test passes, so a new upstream release does not block
unrelated work. It is reported also under ``-W error``. An index that cannot be reached skips the
check with the reason (``-rs``).
"""

from __future__ import annotations

import re
import subprocess
import sys
import warnings

import pytest

from ifsq_quant.compat import vqp as table

PACKAGE = "vector-quantize-pytorch"


class VqpReleaseDriftWarning(UserWarning):
    """The package index and the release table disagree: a newer release to read into the table."""


def _key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def index_versions(pip_output: str) -> list[str]:
    """The final releases (``X.Y.Z``) in the output of ``pip index versions``, newest first."""
    match = re.search(r"^Available versions:\s*(.+)$", pip_output, flags=re.MULTILINE)
    if match is None:
        return []
    versions = [v.strip() for v in match.group(1).split(",")]
    return sorted((v for v in versions if re.fullmatch(r"\d+\.\d+\.\d+", v)), key=_key, reverse=True)


def drift_report(versions: list[str], latest: str, oldest: str, releases: tuple[str, ...] | None) -> str | None:
    """What the table misses of the index's ``versions`` (``None``: nothing)."""
    problems = []
    newer = [v for v in versions if _key(v) > _key(latest)]
    if newer:
        problems.append(f"the package index serves {PACKAGE} {newer[0]}, newer than {latest}, the newest release "
                        f"ifsq-quant reproduces (newer: {', '.join(sorted(newer, key=_key))}): read each one's "
                        "finite_scalar_quantization.py and residual_fsq.py into the release table")
    if releases is not None:
        listed = {v for v in versions if _key(oldest) <= _key(v) <= _key(latest)}
        missing, unlisted = sorted(listed - set(releases), key=_key), sorted(set(releases) - listed, key=_key)
        if missing:
            problems.append(f"released but not in the table's RELEASES: {', '.join(missing)}")
        if unlisted:
            problems.append(f"in the table's RELEASES but not on the package index: {', '.join(unlisted)}")
    return "; ".join(problems) if problems else None


def test_drift_report_names_a_newer_release_and_the_differences():
    output = f"{PACKAGE} (1.35.2)\nAvailable versions: 1.35.2, 1.35.0rc1, 1.35.0, 1.34.1, 1.32.0, 1.31.6, 1.14.0, 1.12.17\n"
    versions = index_versions(output)
    assert versions == ["1.35.2", "1.35.0", "1.34.1", "1.32.0", "1.31.6", "1.14.0", "1.12.17"]
    report = drift_report(versions, "1.34.1", "1.14.0", ("1.14.0", "1.31.6", "1.32.0", "1.34.1"))
    assert report is not None and "1.35.2, newer than 1.34.1" in report and "1.35.0, 1.35.2" in report
    assert "RELEASES" not in report
    assert drift_report(versions, "1.35.2", "1.14.0", ("1.14.0", "1.31.6", "1.32.0", "1.34.1", "1.35.0", "1.35.2")) is None
    report = drift_report(versions, "1.35.2", "1.14.0", ("1.14.0", "1.31.4", "1.32.0", "1.34.1", "1.35.2"))
    assert "not in the table's RELEASES: 1.31.6, 1.35.0" in report and "not on the package index: 1.31.4" in report
    assert drift_report(versions, "1.35.2", "1.14.0", None) is None
    assert index_versions("ERROR: No matching distribution found for vector-quantize-pytorch") == []


@pytest.mark.slow
def test_the_package_index_serves_no_release_the_table_does_not_know():
    cmd = [sys.executable, "-m", "pip", "index", "versions", PACKAGE, "--disable-pip-version-check", "--timeout", "20", "--retries", "1"]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    except (OSError, subprocess.TimeoutExpired) as error:
        pytest.skip(f"the package index could not be asked ({error}); releases of {PACKAGE} after {table.LATEST} not checked")
    versions = index_versions(result.stdout)
    if result.returncode != 0 or not versions:
        reason = (result.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"the package index could not be reached (pip index versions {PACKAGE}: {reason}); "
                    f"releases of {PACKAGE} after {table.LATEST} not checked")
    report = drift_report(versions, table.LATEST, table.OLDEST, getattr(table, "RELEASES", None))
    if report is not None:
        # Shown in the warnings summary; "always" keeps a run under -W error from failing on it.
        with warnings.catch_warnings():
            warnings.simplefilter("always", VqpReleaseDriftWarning)
            warnings.warn(report, VqpReleaseDriftWarning, stacklevel=1)
    assert _key(versions[0]) >= _key(table.LATEST), f"the index's newest release {versions[0]} is older than the table's {table.LATEST}"
