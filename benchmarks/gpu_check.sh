#!/usr/bin/env bash
# Every check that needs a CUDA GPU, in one run (sized for a few minutes on one H100/H200):
#   1. tests/kernels/test_cuda.py: the Triton kernels (the triton_op) against the reference on the GPU,
#      eager, torch.compile(fullgraph=True), torch.export with a dynamic batch, autocast;
#   2. the GPU speed benchmark: ours eager and compiled against vector-quantize-pytorch eager and
#      compiled, with each eager forward's effective bandwidth against a device-to-device copy.
# Needs a Python with CUDA torch, triton, einops and pytest: $PYTHON if set, else the environment
# dev.sh builds ($VENV, default .venv, when it exists), else python3 from PATH. The package is
# used from src/ without installing it. vector-quantize-pytorch is optional (its columns read n/a
# without it); where it cannot be installed, carry its wheels and those of its dependencies and
# install them first. (dev.sh's torch is PyPI's, the CUDA build on Linux, unless TORCH_INDEX_URL
# names another index.)
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]     # logs, speed_cuda.{md,json} into OUT_DIR (default benchmarks/results)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-benchmarks/results}
VENV=${VENV:-.venv}
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$VENV/bin/python" ]; then PYTHON=$VENV/bin/python; else PYTHON=python3; fi
fi
mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
unset TRITON_INTERPRET
echo "gpu_check.sh: $PYTHON, results in $OUT_DIR"
"$PYTHON" -c "import torch, triton; assert torch.cuda.is_available(), 'no CUDA device'; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())" \
  2>&1 | tee "$OUT_DIR/gpu_env.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "gpu_check.sh needs $PYTHON with CUDA torch, triton and a GPU (set PYTHON to choose another)"; exit 1; }
"$PYTHON" -m pytest -q -rs -p no:cacheprovider tests/kernels/test_cuda.py 2>&1 | tee "$OUT_DIR/gpu_tests.log"
tests=${PIPESTATUS[0]}
"$PYTHON" benchmarks/bench_speed.py --device cuda --sizes 16777216 268435456 --levels '[8,5,5,5]' '[17]*4' --repeats 20 \
  --compiled --out "$OUT_DIR" --stem speed_cuda 2>&1 | tee "$OUT_DIR/gpu_bench.log"
bench=${PIPESTATUS[0]}
echo "tests exit $tests, benchmark exit $bench"
exit $(( tests || bench ))
