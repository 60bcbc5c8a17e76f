#!/usr/bin/env bash
# Developer entry point.  bash dev.sh {setup|demo|test|bench} [extra args]
#   setup  create .venv (CPU torch 2.13.0 pinned: plain "torch" would pull a multi-GB CUDA build)
#          and install the package with its dev, examples and triton extras
#   demo   setup, then the end-to-end demo (quick preset) into runs/quick
#   test   setup, then ruff and the whole test suite
#   bench  setup, then the CPU speed benchmark into benchmarks/results/
set -euo pipefail
cd "$(dirname "$0")"
VENV=${VENV:-.venv}

setup() {
  if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
  fi
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q "torch==2.13.0"
  "$VENV/bin/python" -m pip install -q -e ".[dev,examples,triton,codebases]"
  # a second real codebase for tests/parity/test_codebases.py; --no-deps: see the codebases extra
  "$VENV/bin/python" -m pip install -q --no-deps "magvit2-pytorch==0.5.1"
}

cmd=${1:-test}
shift || true
case "$cmd" in
  setup) setup ;;
  demo) setup; "$VENV/bin/python" -m examples.end_to_end --preset quick --out runs/quick "$@" ;;
  test) setup; "$VENV/bin/ruff" check src tests examples benchmarks; "$VENV/bin/python" -m pytest -q -rs -p no:cacheprovider "$@" ;;
  bench) setup; "$VENV/bin/python" benchmarks/bench_speed.py "$@" ;;
  *) echo "usage: bash dev.sh {setup|demo|test|bench}" >&2; exit 2 ;;
esac
