#!/usr/bin/env bash
# Developer entry point:  bash dev.sh {demo|test|setup|bench} [extra args]
#
#   demo   installs torch and the package with its examples extra into .venv (about 1.3 GB with the
#          CPU build of torch), then runs the end-to-end demo (quick preset, about 7 minutes on 2 CPU
#          cores); results in runs/quick/ (report.md, metrics.json, figures, checkpoints)
#   test   installs what the tests need into $VENV (default .venv): torch and the dev, examples,
#          triton and codebases extras plus magvit2-pytorch (about 2.6 GB with the CPU build of
#          torch, 1 GB of it Triton), then ruff, mypy (the package's types) and the whole test
#          suite (what CI runs: .ci/run)
#   setup  the installation of "test" alone
#   bench  the installation of "test", then the CPU speed benchmark into runs/bench/
#
# Environment variables:
#   VENV             the virtual environment (default .venv); an existing one keeps its torch
#   TORCH_SPEC       the torch to install where none is installed (default torch==2.13.0)
#   TORCH_INDEX_URL  the index to install torch from (default: pip's own, PyPI). On Linux x86_64
#                    PyPI's torch is the CUDA build, several GB; the CPU build comes from
#                    TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
#
# Every run checks the installation with pip (a few seconds when nothing is missing); delete $VENV
# to start over.
set -euo pipefail
cd "$(dirname "$0")"
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
TORCH_INDEX_URL=${TORCH_INDEX_URL:-}

say() { printf 'dev.sh: %s\n' "$*"; }

make_venv() {
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating the virtual environment $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
  fi
}

# torch: kept where $VENV has one (2.6 or later), else TORCH_SPEC from TORCH_INDEX_URL or pip's index.
ensure_torch() {
  local have
  if have=$("$VENV/bin/python" -c 'import torch; print(torch.__version__)' 2>/dev/null) \
     && "$VENV/bin/python" -c 'import sys, torch; sys.exit(tuple(map(int, torch.__version__.split("+")[0].split(".")[:2])) < (2, 6))'; then
    say "keeping the installed torch $have"
    return
  fi
  [ -n "${have:-}" ] && say "torch $have is older than 2.6, the package's minimum: replacing it"
  if [ -n "$TORCH_INDEX_URL" ]; then
    say "installing $TORCH_SPEC from $TORCH_INDEX_URL"
    "$VENV/bin/python" -m pip install "$TORCH_SPEC" --index-url "$TORCH_INDEX_URL"
  else
    say "installing $TORCH_SPEC from pip's index"
    if [ "$(uname -s)" = Linux ]; then
      say "  on Linux PyPI's torch is a CUDA build: a 500 MB wheel plus CUDA libraries and Triton, several GB in all;"
      say "  the CPU build (a 190 MB wheel, 750 MB installed) comes with TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu"
    fi
    "$VENV/bin/python" -m pip install "$TORCH_SPEC"
  fi
}

# pip_install SET WHAT PIP-ARGS...: pip's full output (downloads, progress bars) the first time SET is
# installed into $VENV, -q when it was installed before from this pyproject.toml (then it only checks).
pip_install() {
  local stamp="$VENV/.dev-sh-$1" what=$2 digest quiet=()
  shift 2
  digest=$(cksum < pyproject.toml)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$digest" ]; then
    say "checking $what (installed before)"
    quiet=(-q)
  else
    say "installing $what"
  fi
  "$VENV/bin/python" -m pip install ${quiet[@]+"${quiet[@]}"} "$@"
  echo "$digest" > "$stamp"
}

setup_demo() {
  make_venv
  ensure_torch
  pip_install demo "the package with its examples extra (numpy, scipy, scikit-learn, scikit-image, matplotlib, tqdm, safetensors, Pillow: about 430 MB)" \
    -e ".[examples]"
}

setup_test() {
  make_venv
  ensure_torch
  pip_install test "the package with its dev, examples, triton and codebases extras (pytest, ruff, mypy, vector-quantize-pytorch, onnx, onnxruntime, the examples' packages, Triton, codec packages: about 1.85 GB, 1 GB of it Triton)" \
    -e ".[dev,examples,triton,codebases]"
  # a second real codebase for tests/parity/test_codebases.py; --no-deps: see the codebases extra
  pip_install magvit2 "magvit2-pytorch 0.5.1 (without its dependencies)" --no-deps "magvit2-pytorch==0.5.1"
}

cmd=${1:-test}
shift || true
case "$cmd" in
  setup) setup_test ;;
  demo)
    setup_demo
    say "running the demo: python -m examples.end_to_end --preset quick --out runs/quick${*:+ $*}"
    "$VENV/bin/python" -m examples.end_to_end --preset quick --out runs/quick "$@"
    say "results in runs/quick/ (report.md, metrics.json, figures, checkpoints/)"
    ;;
  test)
    setup_test
    say "ruff, mypy, then pytest"
    "$VENV/bin/ruff" check src tests examples benchmarks studies
    "$VENV/bin/mypy"  # [tool.mypy] in pyproject.toml: the package, src/ifsq_quant
    "$VENV/bin/python" -m pytest -q -rs -p no:cacheprovider "$@"
    ;;
  bench) setup_test; "$VENV/bin/python" benchmarks/bench_speed.py "$@" ;;
  *) echo "usage: bash dev.sh {demo|test|setup|bench} [extra args]" >&2; exit 2 ;;
esac
