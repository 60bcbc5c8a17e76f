#!/usr/bin/env bash
# Every check that needs a CUDA GPU, in one run (sized for a few minutes on one H100/H200):
#   1. tests/kernels/test_cuda.py: the Triton kernels (the triton_op) against the reference on the GPU,
#      eager, torch.compile(fullgraph=True), torch.export with a dynamic batch, autocast;
#   2. the GPU speed benchmark: ours eager and compiled against vector-quantize-pytorch eager and
#      compiled, with each eager forward's effective bandwidth against a device-to-device copy.
# Needs python3 with CUDA torch, triton, einops and pytest; the
# package is used from src/ without installing it. vector-quantize-pytorch is optional (its
# columns read n/a without it); where it cannot be installed, carry its wheels and those of its
# dependencies and install them first.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]     # logs, speed_cuda.{md,json} into OUT_DIR (default benchmarks/results)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-benchmarks/results}
mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
unset TRITON_INTERPRET
python3 -c "import torch, triton; assert torch.cuda.is_available(), 'no CUDA device'; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())" \
  2>&1 | tee "$OUT_DIR/gpu_env.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "gpu_check.sh needs python3 with CUDA torch, triton and a GPU"; exit 1; }
python3 -m pytest -q -rs -p no:cacheprovider tests/kernels/test_cuda.py 2>&1 | tee "$OUT_DIR/gpu_tests.log"
tests=${PIPESTATUS[0]}
python3 benchmarks/bench_speed.py --device cuda --sizes 16777216 268435456 --levels '[8,5,5,5]' '[17]*4' --repeats 20 \
  --compiled --out "$OUT_DIR" --stem speed_cuda 2>&1 | tee "$OUT_DIR/gpu_bench.log"
bench=${PIPESTATUS[0]}
echo "tests exit $tests, benchmark exit $bench"
exit $(( tests || bench ))
