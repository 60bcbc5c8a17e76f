"""The repository's scripts: what ``dev.sh`` installs for each command, which Python
``benchmarks/gpu_check.sh`` runs, and where ``benchmarks/bench_speed.py`` writes by default.

``dev.sh`` runs against a stand-in environment: its ``bin/python`` logs every call and answers
``-c`` snippets with the real interpreter and a stand-in ``torch`` of a chosen version (none: the
import fails), so nothing is installed and no network is needed."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

FAKE_PYTHON = """#!/usr/bin/env bash
printf '%s\\n' "python $*" >> "$FAKE_LOG"
if [ "$1" = "-c" ]; then
  [ -n "$FAKE_TORCH_VERSION" ] || exit 1
  PYTHONPATH="$FAKE_TORCH_DIR" exec "$REAL_PYTHON" "$@"
fi
exit 0
"""
FAKE_RUFF = """#!/usr/bin/env bash
printf '%s\\n' "ruff $*" >> "$FAKE_LOG"
"""
FAKE_MYPY = """#!/usr/bin/env bash
printf '%s\\n' "mypy $*" >> "$FAKE_LOG"
"""

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


@pytest.fixture
def fake_venv(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    for name, text in (("python", FAKE_PYTHON), ("ruff", FAKE_RUFF), ("mypy", FAKE_MYPY)):
        (venv / "bin" / name).write_text(text)
        (venv / "bin" / name).chmod(0o755)
    torch_dir = tmp_path / "fake_torch"
    (torch_dir / "torch").mkdir(parents=True)
    return venv, torch_dir, tmp_path / "calls.log"


def run_script(fake_venv, script, *args, torch_version="", **env):
    venv, torch_dir, log = fake_venv
    (torch_dir / "torch" / "__init__.py").write_text(f"__version__ = {torch_version!r}\n")
    environ = {k: v for k, v in os.environ.items() if k not in ("TORCH_INDEX_URL", "TORCH_SPEC", "PYTHON")}
    environ.update(VENV=str(venv), FAKE_LOG=str(log), FAKE_TORCH_DIR=str(torch_dir), FAKE_TORCH_VERSION=torch_version,
                   REAL_PYTHON=sys.executable, **env)
    proc = subprocess.run(["bash", str(ROOT / script), *args], capture_output=True, text=True, env=environ, timeout=120)
    calls = log.read_text().splitlines() if log.exists() else []
    return proc, calls


def pip_installs(calls):
    return [shlex.split(c)[4:] for c in calls if c.startswith("python -m pip install")]


def test_demo_installs_only_the_examples_extra_and_keeps_the_installed_torch(fake_venv):
    proc, calls = run_script(fake_venv, "dev.sh", "demo", "--threads", "2", torch_version="2.7.1+cu126")
    assert proc.returncode == 0, proc.stderr
    assert pip_installs(calls) == [["-e", ".[examples]"]]
    assert calls[-1] == "python -m examples.end_to_end --preset quick --out runs/quick --threads 2"
    assert "keeping the installed torch 2.7.1+cu126" in proc.stdout
    assert "running the demo: python -m examples.end_to_end --preset quick --out runs/quick --threads 2" in proc.stdout
    assert "runs/quick/" in proc.stdout.splitlines()[-1]
    again, calls = run_script(fake_venv, "dev.sh", "demo", torch_version="2.7.1+cu126")  # installed before: pip only checks
    assert pip_installs(calls)[-1] == ["-q", "-e", ".[examples]"] and "checking" in again.stdout


def test_demo_installs_torch_where_there_is_none_and_says_what_pypi_serves(fake_venv):
    proc, calls = run_script(fake_venv, "dev.sh", "demo")
    assert proc.returncode == 0, proc.stderr
    assert pip_installs(calls) == [["torch==2.13.0"], ["-e", ".[examples]"]]
    if os.uname().sysname == "Linux":
        assert "CUDA build" in proc.stdout and "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in proc.stdout


def test_an_older_torch_is_replaced_from_TORCH_INDEX_URL(fake_venv):
    proc, calls = run_script(fake_venv, "dev.sh", "demo", torch_version="2.5.1", TORCH_INDEX_URL="https://example.invalid/cpu")
    assert proc.returncode == 0, proc.stderr
    assert pip_installs(calls)[0] == ["torch==2.13.0", "--index-url", "https://example.invalid/cpu"]
    assert "older than 2.6" in proc.stdout


def test_test_installs_everything_the_tests_need_then_runs_ruff_mypy_and_pytest(fake_venv):
    proc, calls = run_script(fake_venv, "dev.sh", "test", "-m", "not slow", torch_version="2.13.0")
    assert proc.returncode == 0, proc.stderr
    assert pip_installs(calls) == [["-e", ".[dev,examples,triton,codebases]"], ["--no-deps", "magvit2-pytorch==0.5.1"]]
    tools = [c for c in calls if c.startswith(("ruff", "mypy")) or "-m pytest" in c]
    assert tools == ["ruff check src tests examples benchmarks studies", "mypy ",
                     "python -m pytest -q -rs -p no:cacheprovider -m not slow"]


def test_ci_runs_the_test_command_in_a_fresh_environment():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "export VENV=.venv-ci" in ci and 'rm -rf "$VENV"' in ci and ci.rstrip().endswith("bash dev.sh test")


def test_gpu_check_runs_the_environment_dev_sh_builds(fake_venv):
    venv, _, _ = fake_venv
    out_dir = venv.parent / "gpu"
    proc, calls = run_script(fake_venv, "benchmarks/gpu_check.sh", str(out_dir), torch_version="2.13.0")
    assert proc.returncode == 1  # the stand-in torch has no triton: stopped at the first check
    assert calls and calls[0].startswith("python -c import torch, triton")
    assert f"needs {venv}/bin/python with CUDA torch" in proc.stdout


def test_bench_speed_writes_outside_the_committed_results_by_default():
    from benchmarks import bench_speed

    out = bench_speed.build_parser().parse_args([]).out.resolve()
    assert out == ROOT / "runs" / "bench"
    assert "runs/" in (ROOT / ".gitignore").read_text().splitlines()
    assert bench_speed.build_parser().parse_args(["--out", "benchmarks/results"]).out == Path("benchmarks/results")
